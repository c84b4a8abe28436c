"""Which webhook event a background response's outcome sends (OpenAI's `response.*`)."""

from __future__ import annotations

import pytest

from scheduler.store.async_answers import response_event
from scheduler.store.webhooks import ALL_EVENTS, EventType
from schemas.codec import encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult


@pytest.mark.parametrize(
    ("reply", "event"),
    [
        (FinalResult("r", "m", {"text": "x"}, "stop"), "response.completed"),
        (FinalResult("r", "m", {"text": "x"}, "tool_calls"), "response.completed"),
        (FinalResult("r", "m", {"text": "x"}, "length"), "response.incomplete"),
        (FinalResult("r", "m", {"text": "x"}, "deadline"), "response.incomplete"),
        (ErrorResult("r", ErrorCode.CANCELLED, "cancelled"), "response.cancelled"),
        (ErrorResult("r", ErrorCode.INTERNAL_ERROR, "boom"), "response.failed"),
    ],
)
def test_response_events(reply: FinalResult | ErrorResult, event: str) -> None:
    assert response_event(encode(reply)) == event
    assert event in ALL_EVENTS  # an endpoint can subscribe to it


def test_an_unreadable_outcome_is_a_failure() -> None:
    assert response_event(b"not json") is EventType.RESPONSE_FAILED
    assert response_event(None) is EventType.RESPONSE_FAILED
