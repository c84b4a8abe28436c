"""Which models exist (natsio/directory.py), on a real nats-server: the cached list, and a
model provisioned a moment ago found by asking again on a miss."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NATS

from natsio.directory import ModelDirectory
from workers.config import QueueSettings
from workers.provision import provision_model

pytestmark = pytest.mark.integration


async def test_a_model_provisioned_a_moment_ago_is_found(nc: NATS) -> None:
    first, second = f"dir-{uuid.uuid4().hex[:8]}", f"dir-{uuid.uuid4().hex[:8]}"
    await provision_model(nc.jetstream(), first, QueueSettings())
    directory = ModelDirectory(nc, ttl_s=60.0, min_age_s=0.0)
    assert first in await directory.models()
    await provision_model(nc.jetstream(), second, QueueSettings())
    assert second not in await directory.models()  # cached for a minute
    assert await directory.has(second)  # a miss asks again
    assert second in await directory.models()
    assert not await directory.has(f"dir-{uuid.uuid4().hex[:8]}")


async def test_misses_ask_again_at_most_once_per_min_age(nc: NATS) -> None:
    directory = ModelDirectory(nc, ttl_s=60.0, min_age_s=60.0)
    await directory.models()
    model = f"dir-{uuid.uuid4().hex[:8]}"
    await provision_model(nc.jetstream(), model, QueueSettings())
    assert not await directory.has(model)  # the answer is younger than min_age_s
