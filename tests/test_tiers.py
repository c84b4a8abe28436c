"""OpenAI's `service_tier` -> jetserve's queue and the tier reported (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from producer.http.config import BridgeConfig
from schemas.names import Priority
from schemas.openai_errors import ApiError
from schemas.tiers import Tier, reported_tier, resolve_tier, tier_queue


@pytest.mark.parametrize(
    ("asked", "queue", "reported"),
    [
        (None, Priority.ONLINE, "default"),
        ("auto", Priority.ONLINE, "default"),
        ("default", Priority.ONLINE, "default"),
        ("flex", Priority.BATCH, "flex"),
        ("priority", Priority.PRIORITY, "priority"),
        ("scale", Priority.ONLINE, "default"),
    ],
)
def test_each_tier_the_sdk_can_send(asked: str | None, queue: Priority, reported: str) -> None:
    assert tier_queue(asked) is queue
    assert reported_tier(queue) == reported
    assert resolve_tier(asked) == Tier(queue, reported)


@pytest.mark.parametrize("value", ["turbo", "", "PRIORITY", 1, True, ["flex"], {"a": 1}])
def test_anything_else_is_a_400_naming_service_tier(value: Any) -> None:
    with pytest.raises(ApiError) as caught:
        tier_queue(value)
    assert caught.value.status == 400
    assert caught.value.param == "service_tier"


def test_every_queue_reports_a_tier() -> None:
    assert {reported_tier(p) for p in Priority} == {"default", "flex", "priority"}


def test_flex_has_a_longer_default_timeout() -> None:
    config = BridgeConfig.from_env({"JETSERVE_AUTH": "off"})
    assert config.flex_timeout_s > config.timeout_s
    assert (
        BridgeConfig.from_env(
            {"JETSERVE_AUTH": "off", "JETSERVE_HTTP_FLEX_TIMEOUT_S": "42"}
        ).flex_timeout_s
        == 42.0
    )
