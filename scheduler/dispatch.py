"""Moving validated batch items onto the model streams, at batch priority, a bounded window
at a time.

Per model, at most `in_flight` items are published and unanswered (over all its batches), so
the batch consumer never holds a large backlog; the window's free slots are split between
tenants max-min fairly (`fairshare.py`), so a new batch of another tenant gets its share at
once instead of waiting behind a whole batch (within a tenant, oldest batch first). Items are
published in index order and the batch's cursor (`dispatched`) advances over the prefix
JetStream stored; an item published twice (the scheduler died before moving the cursor) has
the same `Nats-Msg-Id` and is dropped by JetStream within the duplicate window, and its
result is stored once in any case.
"""

from __future__ import annotations

import logging

import asyncpg

from natsio.acks import Outcome
from natsio.inbox import AckInbox, Message
from natsio.routes import RouteTable, shadow_request
from scheduler.fairshare import fair_split
from scheduler.metrics import SchedulerMetrics
from scheduler.mirror import Mirror, publish_mirrors
from scheduler.store import batches as bs
from schemas import names
from schemas.codec import decode_request, encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult
from schemas.names import Header, Priority, ResultKind

log = logging.getLogger(__name__)


class BatchDispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: AckInbox,
        metrics: SchedulerMetrics,
        *,
        in_flight: int,
        max_publish: int = 1024,
        routes: RouteTable | None = None,
    ) -> None:
        self._pool = pool
        self._routes = routes
        self._publisher = publisher
        self._metrics = metrics
        self._window = in_flight
        self._max_publish = max_publish
        #: While items are in flight, publish only when this many fit (fewer, larger rounds).
        self._min_publish = max(1, in_flight // 8)

    async def run_once(self) -> int:
        """Publish what the windows allow; returns how many items were stored."""
        held = await bs.in_flight_by_tenant(self._pool)
        by_model: dict[str, list[bs.BatchRow]] = {}
        for batch in await bs.dispatchable(self._pool):
            assert batch.model is not None
            by_model.setdefault(batch.model, []).append(batch)
        total = 0
        for model, batches in by_model.items():
            in_flight = {t: n for (m, t), n in held.items() if m == model}
            busy = sum(in_flight.values())
            free = self._window - busy
            wants: dict[str, int] = {}
            for batch in batches:  # oldest first: a tenant's place is its oldest batch's
                wants[batch.tenant] = wants.get(batch.tenant, 0) + batch.total - batch.dispatched
            if free <= 0 or (busy and free < min(self._min_publish, sum(wants.values()))):
                continue
            shares = fair_split(min(free, self._max_publish), in_flight, wants)
            for batch in batches:
                count = min(shares[batch.tenant], batch.total - batch.dispatched)
                if count <= 0:
                    continue
                sent = await self._publish(batch, count)
                shares[batch.tenant] -= sent
                total += sent
        return total

    async def _publish(self, batch: bs.BatchRow, count: int) -> int:
        assert batch.model is not None
        items = await bs.items_from(self._pool, batch.id, batch.dispatched, count)
        if not items:
            return 0
        reply_to = names.results_subject(ResultKind.BATCH, batch.id)
        routed, mirrors = self._routed(batch.model, items)
        results = await self._publisher.publish_many(
            [
                Message(
                    subject,
                    data,
                    {
                        Header.MSG_ID.value: bs.item_request_id(batch.id, idx),
                        Header.REPLY_TO.value: reply_to,
                    },
                )
                for idx, subject, data in routed
            ]
        )
        outcomes = [outcome for outcome, _ack in results]
        cursor = batch.dispatched
        refused: list[tuple[str, int, bool, bytes]] = []
        for (idx, _data), outcome in zip(items, outcomes, strict=True):
            if outcome.later:  # not stored (the stream is full, or no PubAck came): again later
                break
            if outcome is not Outcome.STORED:  # the item fails; the batch goes on
                refused.append((batch.id, idx, False, _refusal(batch, idx, outcome)))
            cursor = idx + 1
        if refused:
            await bs.store_results(self._pool, refused)
            log.warning("batch %s: %d items refused by JetStream", batch.id, len(refused))
        stored = cursor - batch.dispatched
        if stored:
            await bs.advance_cursor(self._pool, batch.id, cursor)
            self._metrics.items_dispatched.inc(stored)
        if mirrors and self._routes is not None:  # the items stored are mirrored (once each)
            sent = [m for idx, m in mirrors if idx < cursor]
            await publish_mirrors(self._publisher, self._routes, sent)
        return stored

    def _routed(
        self, model: str, items: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[int, str, bytes]], list[tuple[int, Mirror]]]:
        """(index, subject, data) of each item: the batch's model, or, when it is a served name,
        the version chosen by the line's sticky key (its body's `prompt_cache_key`,
        `safety_identifier` or `user`), else by its item id (the same on a republish while the
        weights stay: JetStream's de-duplication holds), its body rewritten for that version;
        and the mirrors of the items the route's shadow takes, by index."""
        if self._routes is None or self._routes.plan(model) is None:
            subject = names.request_subject(model, Priority.BATCH)
            return [(idx, subject, data) for idx, data in items], []
        out = []
        mirrors: list[tuple[int, Mirror]] = []
        for idx, data in items:
            request = decode_request(data)
            sticky = request.metadata.get(names.ROUTE_KEY_METADATA)
            request, shadow = self._routes.resolve(request, sticky)
            subject = names.request_subject(request.model, Priority.BATCH)
            out.append((idx, subject, encode(request)))
            if shadow is not None:
                mirrors.append((idx, (model, shadow_request(request, shadow))))
        return out, mirrors


def _refusal(batch: bs.BatchRow, idx: int, outcome: Outcome) -> bytes:
    if outcome is Outcome.NO_STREAM:
        error = ErrorResult(
            id=bs.item_request_id(batch.id, idx),
            code=ErrorCode.UNKNOWN_MODEL,
            message=f"The model '{batch.model}' no longer exists.",
        )
    elif outcome is Outcome.TOO_LARGE:
        error = ErrorResult(
            id=bs.item_request_id(batch.id, idx),
            code=ErrorCode.INVALID_REQUEST,
            message="The request was refused by the queue (too large).",
        )
    else:
        error = ErrorResult(
            id=bs.item_request_id(batch.id, idx),
            code=ErrorCode.INVALID_REQUEST,
            message="The request was refused by the queue.",
        )
    return encode(error)
