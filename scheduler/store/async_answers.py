"""Answering async requests: each outcome stored once, with its webhook event in the same
transaction: `request.completed` / `request.failed`, or, for a background response, OpenAI's
`response.completed` / `response.incomplete` / `response.failed` / `response.cancelled`.

Used by the scheduler's result collector and by a bridge that cancels a background response
(or finds its result in the event log first): whichever stores the outcome sends the event.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from scheduler.store import async_requests as ar
from scheduler.store.webhooks import EventType, enqueue
from schemas import names
from schemas.codec import decode_reply
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult


async def answer(
    conn: asyncpg.Connection, results: Sequence[tuple[str, bool, bytes]], keep_s: float
) -> list[ar.AsyncRow]:
    """Store (request id, ok, reply) for requests still waiting and queue their webhook
    events; returns the rows answered now (a second outcome is dropped, without event)."""
    answered = await ar.store_results(conn, results, keep_s)
    for row in answered:
        if row.endpoint == names.RESPONSES_ENDPOINT:
            event = response_event(row.reply)
            data = {"id": names.RESPONSE_ID_PREFIX + row.id}
        else:
            event = EventType.REQUEST_COMPLETED if row.ok else EventType.REQUEST_FAILED
            data = {"id": row.id, "status": row.status, "model": row.model}
        await enqueue(conn, row.tenant, event, data, only_url=row.callback_url)
    return answered


def response_event(reply: bytes | None) -> EventType:
    """The webhook event of a background response that ended with `reply`."""
    try:
        outcome = decode_reply(reply or b"")
    except msgspec.DecodeError:
        return EventType.RESPONSE_FAILED
    if isinstance(outcome, FinalResult):
        if outcome.finish_reason in ("length", "deadline"):
            return EventType.RESPONSE_INCOMPLETE
        if outcome.finish_reason == "cancelled":
            return EventType.RESPONSE_CANCELLED
        return EventType.RESPONSE_COMPLETED
    if isinstance(outcome, ErrorResult) and outcome.code == ErrorCode.CANCELLED:
        return EventType.RESPONSE_CANCELLED
    return EventType.RESPONSE_FAILED
