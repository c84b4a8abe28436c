"""Ending batches: finished, cancelled or expired -> sealed -> output/error files -> end status.

    finished   every item has a result          -> finalizing (sealed)      -> completed
    cancel     stop dispatching; cancel the in-flight items; once they answered (or after the
               grace period)                     -> sealed (cancelling)      -> cancelled
    expire     past `expires_at`: stop dispatching, cancel in-flight items
                                                 -> sealed (in_progress)     -> expired

Writing out is streamed: items are read 2,000 at a time in index order and appended to the
output file (results) or the error file (error results, and items that never ran, with
`batch_cancelled` / `batch_expired`); completed work is always kept. The files become visible,
the batch takes its end status and its webhook event is queued in one transaction, so a
scheduler that dies while writing simply writes them again.
"""

from __future__ import annotations

import logging
import time

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from natsio.routes import RouteTable
from scheduler.codec import Codec, Reply
from scheduler.store import batches as bs
from scheduler.store.batches import BatchRow, BatchStatus
from scheduler.store.files import FileWriter
from scheduler.store.webhooks import EventType, enqueue
from schemas import names
from schemas.codec import decode_reply, decode_request, encode
from schemas.messages import CancelRequest, StreamChunk

log = logging.getLogger(__name__)

PAGE = 2000
_EVENTS = {
    BatchStatus.COMPLETED: EventType.BATCH_COMPLETED,
    BatchStatus.EXPIRED: EventType.BATCH_EXPIRED,
    BatchStatus.CANCELLED: EventType.BATCH_CANCELLED,
}


#: Endpoints whose response bodies read the request's metadata (the others skip reading
#: and decoding it).
_READS_REQUEST = ("embeddings", "responses")


class _Response(msgspec.Struct):
    status_code: int
    request_id: str
    body: msgspec.Raw


class _LineError(msgspec.Struct):
    code: str
    message: str


class _OutputLine(msgspec.Struct):
    id: str
    custom_id: str
    response: _Response | None
    error: _LineError | None


_encode_line = msgspec.json.Encoder().encode


def end_status(batch: BatchRow) -> BatchStatus:
    """Where a sealed batch ends, from the status it was sealed in."""
    if batch.status is BatchStatus.FINALIZING:
        return BatchStatus.COMPLETED
    if batch.status is BatchStatus.CANCELLING:
        return BatchStatus.CANCELLED
    return BatchStatus.EXPIRED


class Finalizer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        nc: NATS,
        codec: Codec,
        *,
        cancel_grace_s: float,
        routes: RouteTable | None = None,
    ) -> None:
        self._pool = pool
        self._routes = routes
        self._nc = nc
        self._codec = codec
        self._grace_s = cancel_grace_s
        #: Batches whose in-flight items were sent a cancel by this process.
        self._cancels_sent: set[str] = set()

    async def run_once(self) -> int:
        """Seal what should be sealed, write out what is sealed; returns batches ended."""
        for batch_id in await bs.finished_batches(self._pool):
            await bs.seal(
                self._pool, batch_id, from_status=BatchStatus.IN_PROGRESS, finalizing=True
            )
        now = time.time()
        for batch in await bs.batches_in(self._pool, [BatchStatus.CANCELLING]):
            if batch.sealed or batch.in_progress_at is None:
                continue  # still to be validated: the validator moves it on first
            await self._cancel_in_flight(batch)
            waited = now - (batch.cancelling_at.timestamp() if batch.cancelling_at else now)
            if batch.in_flight == 0 or waited >= self._grace_s:
                await bs.seal(self._pool, batch.id, from_status=batch.status, finalizing=False)
        for batch in await bs.expired(self._pool):
            await self._cancel_in_flight(batch)
            await bs.seal(self._pool, batch.id, from_status=batch.status, finalizing=False)
        ended = 0
        for batch in await bs.sealed_unfinished(self._pool):
            if await self.write_out(batch):
                ended += 1
        return ended

    async def _cancel_in_flight(self, batch: BatchRow) -> None:
        """Tell the workers to drop the batch's unanswered items (once per process)."""
        if batch.id in self._cancels_sent or batch.model is None or batch.in_flight == 0:
            return
        self._cancels_sent.add(batch.id)
        # A served name's items went to its versions: each hears the cancel.
        models = [batch.model] if self._routes is None else self._routes.versions(batch.model)
        for idx in await bs.unanswered(self._pool, batch):
            request_id = bs.item_request_id(batch.id, idx)
            for model in models:
                await self._nc.publish(
                    names.cancel_subject(model, request_id),
                    encode(CancelRequest(id=request_id, reason="batch")),
                )
        await self._nc.flush()

    async def write_out(self, batch: BatchRow) -> bool:
        status = end_status(batch)
        output: FileWriter | None = None
        errors: FileWriter | None = None
        # Only these endpoints' responses read the request's metadata.
        needs_request = batch.endpoint.endswith(_READS_REQUEST)
        for start in range(0, batch.total, PAGE):
            rows = await bs.outcomes_in(
                self._pool, batch.id, start, PAGE, with_request=needs_request
            )
            good, bad = bytearray(), bytearray()
            for idx, custom_id, request, _ok, reply, finished in rows:
                line, is_ok = self._line(batch, status, idx, custom_id, request, reply, finished)
                (good if is_ok else bad).extend(line)
            if good:
                if output is None:
                    output = await FileWriter.create(
                        self._pool, batch.tenant, "batch_output", f"{batch.id}_output.jsonl"
                    )
                await output.write(good)
            if bad:
                if errors is None:
                    errors = await FileWriter.create(
                        self._pool, batch.tenant, "batch_output", f"{batch.id}_error.jsonl"
                    )
                await errors.write(bad)
        async with self._pool.acquire() as conn, conn.transaction():
            for writer in (output, errors):
                if writer is not None:
                    await writer.close(conn)
            done = await bs.finish(
                conn,
                batch.id,
                status,
                output.file_id if output else None,
                errors.file_id if errors else None,
            )
            if not done:
                raise RuntimeError(f"batch {batch.id} changed while it was written out")
            await enqueue(conn, batch.tenant, _EVENTS[status], {"id": batch.id})
        self._cancels_sent.discard(batch.id)
        await bs.delete_ended_rows(self._pool, batch.id)
        log.info("batch %s %s (%d ok, %d failed)", batch.id, status, batch.completed, batch.failed)
        return True

    def _line(
        self,
        batch: BatchRow,
        status: BatchStatus,
        idx: int,
        custom_id: str,
        request: bytes,
        reply: bytes | None,
        finished: int,
    ) -> tuple[bytes, bool]:
        request_id = bs.item_request_id(batch.id, idx)
        if reply is None:
            if status is BatchStatus.CANCELLED:
                error = _LineError(
                    "batch_cancelled", "The batch was cancelled before this request ran."
                )
            else:
                error = _LineError(
                    "batch_expired",
                    "This request could not be executed before the completion window expired.",
                )
            return _encode_line(_OutputLine(request_id, custom_id, None, error)) + b"\n", False
        result = decode_reply(reply)
        if isinstance(result, StreamChunk):  # never stored: only final replies are
            return b"", False
        needs_metadata = batch.endpoint.endswith(_READS_REQUEST)
        metadata = decode_request(request).metadata if needs_metadata else {}
        answer = Reply(request_id, result, finished or int(time.time()), metadata)
        code, body = self._codec.response(batch.endpoint, answer)
        line = _OutputLine(
            request_id, custom_id, _Response(code, request_id, msgspec.Raw(body)), None
        )
        return _encode_line(line) + b"\n", code == 200
