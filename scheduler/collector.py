"""The result collector: the results stream -> Postgres, idempotently, then ack.

Workers hold no database credentials. A worker publishes the result of a batch item or async
request to its durable reply subject (`jetserve.results.<kind>.<owner>`, or a background
response's event log `jetserve.revents.<id>`, whose chunks are skipped here) with a JetStream
acknowledgement and only then acks the request; this loop fetches up to `fetch` results at a
time, stores them in one statement per kind (`INSERT ... ON CONFLICT DO NOTHING` keyed by the
item), and acks them after the commit. A result delivered twice (a worker died after
publishing, or this loop died before acking) is stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
from nats.aio.msg import Msg

from scheduler.metrics import SchedulerMetrics
from scheduler.store import batches as bs
from scheduler.store.async_answers import answer
from schemas.codec import decode_reply, encode, encoding_of
from schemas.names import ResultKind, owner_from_results_subject, request_of_events_subject

log = logging.getLogger(__name__)

RESULT = "result.v1"
ERROR = "error.v1"


class _Head(msgspec.Struct):
    type: str
    id: str = ""


_decode_head = msgspec.json.Decoder(_Head).decode


class ResultCollector:
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: SchedulerMetrics,
        *,
        async_keep_s: float,
        on_batch_results: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._keep_s = async_keep_s
        self._on_batch_results = on_batch_results
        self._counts = {
            (kind, outcome): metrics.results.labels(kind, outcome)
            for kind in ResultKind
            for outcome in ("ok", "error", "duplicate")
        }

    async def store(self, msgs: list[Msg]) -> None:
        """Store the results among `msgs` (anything else is skipped). Raises on a database
        error: then nothing is acked and the messages come again."""
        batch: list[tuple[str, int, bool, bytes]] = []
        single: list[tuple[str, bool, bytes]] = []
        for msg in msgs:
            owner = _owner(msg.subject)
            data = _as_json(msg)
            if owner is None or data is None:
                continue
            try:
                head = _decode_head(data)
            except msgspec.DecodeError:
                log.warning("undecodable result on %s skipped", msg.subject)
                continue
            if head.type not in (RESULT, ERROR):
                continue  # durable replies carry no chunks; anything else is not ours
            ok = head.type == RESULT
            kind, owner_id = owner
            if kind == ResultKind.BATCH:
                item = bs.parse_item_request_id(head.id)
                if item is not None and item[0] == owner_id:
                    batch.append((item[0], item[1], ok, data))
            elif kind == ResultKind.ASYNC and head.id == owner_id:
                single.append((owner_id, ok, data))
        if batch:
            stored = await bs.store_results(self._pool, batch)
            good = sum(g for g, _ in stored.values())
            bad = sum(b for _, b in stored.values())
            self._counts[(ResultKind.BATCH, "ok")].inc(good)
            self._counts[(ResultKind.BATCH, "error")].inc(bad)
            self._counts[(ResultKind.BATCH, "duplicate")].inc(len(batch) - good - bad)
            if stored:
                self._on_batch_results()
        if single:
            await self._store_async(single)

    async def _store_async(self, results: list[tuple[str, bool, bytes]]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            answered = await answer(conn, results, self._keep_s)
        good = sum(1 for r in answered if r.ok)
        self._counts[(ResultKind.ASYNC, "ok")].inc(good)
        self._counts[(ResultKind.ASYNC, "error")].inc(len(answered) - good)
        self._counts[(ResultKind.ASYNC, "duplicate")].inc(len(results) - len(answered))


def _owner(subject: str) -> tuple[str, str] | None:
    """(kind, owner id) of a result's subject: a results subject, or a background response's
    event log (an async request's)."""
    request_id = request_of_events_subject(subject)
    if request_id is not None:
        return ResultKind.ASYNC, request_id
    return owner_from_results_subject(subject)


def _as_json(msg: Msg) -> bytes | None:
    """The message body as JSON (results of msgpack requests are re-encoded)."""
    try:
        encoding = encoding_of(msg.headers)
    except msgspec.ValidationError:
        return None
    if encoding.value == "json":
        return bytes(msg.data)
    try:
        reply: Any = decode_reply(msg.data, encoding)
    except msgspec.DecodeError:
        return None
    return encode(reply)
