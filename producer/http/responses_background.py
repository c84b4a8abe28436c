"""Background responses (`background: true`): stored and queued before the answer, run at
the tier asked, then polled, cancelled, or streamed from their event log by any bridge.

    create   the response (`queued`) and its request are recorded on the durable async path
             in one transaction, then the request is published, its reply subject its event
             log (`jetserve.revents.<id>`): the response object, or its event stream
    settle   the current object: `queued`; `in_progress` once the log has output; the end
             once an outcome is stored (by the scheduler, or here if the log has it first)
    cancel   a `cancelled` result is written to the log (unless the worker's result is there
             already: then it stands) and stored; the request is deleted from its stream (a
             queued one never runs) and a cancel is sent (a running one stops). The response
             keeps the output its log holds before that result: the output streamed.
    stream   the events replayed from the log (`responses_replay`) after `starting_after`
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import msgspec

from producer.errors import JetserveError
from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.errors import ApiError
from producer.http.handlers import Bridge, Reply
from producer.http.responses_events import LOG_ERRORS, EventLog
from producer.http.responses_replay import LIVE, Replay, frames_after
from producer.http.responses_storage import ResponseStore, StoredResponse
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, StreamChunk
from schemas.payloads import ChatMessage

log = logging.getLogger(__name__)
_response = msgspec.json.Decoder(rt.Response)
_conversation = msgspec.json.Decoder(list[ChatMessage])
_encoder = msgspec.json.Encoder()
#: Refusals after which nothing was stored upstream (anything else, NATS unavailable, leaves a
#: background request queued for the scheduler to publish).
_REFUSED = {400, 404, 413, 429}
#: A stream with nothing new this long looks at the stored outcome (a response cancelled
#: while queued, or failed by the scheduler, has no result in its log).
IDLE_S = 0.5


class Background:
    def __init__(self, bridge: Bridge, store: ResponseStore) -> None:
        self.bridge = bridge
        self.store = store
        self.log = EventLog(bridge.client.js)

    async def create(
        self, tenant: str, converted: rc.Converted, base: rt.Response, *, stream: bool
    ) -> Reply:
        request = msgspec.structs.replace(converted.request, stream=True, deadline_ms=None)
        queued = msgspec.structs.replace(base, status="queued")
        stored = StoredResponse(
            queued.id,
            _encoder.encode(queued),
            _encoder.encode(converted.conversation),
            _encoder.encode(converted.input_items),
        )
        await self.store.enqueue(tenant, stored, request)
        try:
            try:
                reply_to = names.async_reply_subject(request.id, events=True)
                accepted = await self.bridge.client.submit(request, reply_to=reply_to)
            except JetserveError as exc:
                raise self.bridge.calls.refusal(exc, request) from None
        except ApiError as exc:
            if exc.status in _REFUSED:
                await self.store.discard(tenant, queued.id, request.id)
                raise
            log.warning("background response %s left queued: %s", queued.id, exc.message)
        else:
            await self.store.dispatched(queued.id, request.id, accepted.seq)
        if stream:
            return Reply(stream=self.stream(tenant, stored, -1))
        return Reply(body=stored.response)

    async def settle(self, tenant: str, stored: StoredResponse) -> bytes:
        current = _response.decode(stored.response)
        if current.status not in LIVE:
            return stored.response
        request_id = current.id.removeprefix(rc.ID_PREFIX)
        data = await self.store.reply(request_id)
        if data is None:
            try:
                last = await self.log.last(request_id)
            except LOG_ERRORS as exc:
                log.info("event log of %s not read: %s", current.id, exc)
                return stored.response
            if last is None:
                return stored.response
            if isinstance(last, StreamChunk):
                return _encoder.encode(msgspec.structs.replace(current, status="in_progress"))
            await self.store.end(request_id, encode(last))  # the same outcome as the scheduler's
            data = await self.store.reply(request_id)
            if data is None:
                return stored.response
        reply = decode_reply(data)
        if isinstance(reply, FinalResult):
            final = rc.finished_response(current, reply, int(time.time()))
        elif isinstance(reply, ErrorResult) and reply.code == ErrorCode.CANCELLED:
            output = await self._partial(request_id, current)
            final = msgspec.structs.replace(current, status="cancelled", output=output)
        elif isinstance(reply, ErrorResult):
            error = rt.ResponseError(reply.code, reply.message)
            final = msgspec.structs.replace(current, status="failed", error=error)
        else:
            return stored.response
        conversation = [
            *_conversation.decode(stored.conversation),
            rc.assistant_message(final.output),
        ]
        body = _encoder.encode(final)
        settled = StoredResponse(final.id, body, _encoder.encode(conversation), stored.input_items)
        await self.store.put(tenant, settled, final.status)
        return body

    async def _partial(self, request_id: str, current: rt.Response) -> list[rt.OutputItem]:
        """The output the log holds before its result (what a stream showed)."""
        try:
            replies = await self.log.read(request_id)
        except LOG_ERRORS as exc:
            log.warning("partial output of %s not read: %s", current.id, exc)
            return []
        replay = Replay(current)
        for reply in replies:
            replay.add(reply)
        return replay.partial_output()

    async def cancel(self, tenant: str, stored: StoredResponse) -> bytes:
        current = _response.decode(stored.response)
        if current.status not in LIVE:
            return await self.settle(tenant, stored)
        request_id = current.id.removeprefix(rc.ID_PREFIX)
        reply = ErrorResult(id=request_id, code=ErrorCode.CANCELLED, message="cancelled")
        first: bool | None
        try:
            first = await self.log.end(request_id, reply)
        except LOG_ERRORS as exc:
            log.warning("cancel of %s not written to its event log: %s", current.id, exc)
            first = None
        if first is False:
            return await self.settle(tenant, stored)  # the worker's result came first
        # Stored here, or already by the scheduler from the log: either way it is cancelled.
        stored_here = await self.store.end(request_id, encode(reply))
        if first or stored_here:
            with contextlib.suppress(JetserveError, OSError):
                await self.bridge.client.cancel(
                    current.model, request_id, stream_seq=stored.stream_seq
                )
        return await self.settle(tenant, stored)

    async def stream(
        self, tenant: str, stored: StoredResponse, starting_after: int
    ) -> AsyncIterator[bytes]:
        """The response's events after `starting_after` (-1: all), live until its end."""
        current = _response.decode(stored.response)
        replay = Replay(current)
        for frame in frames_after(replay.start(), replay.writer.seq, starting_after):
            yield frame
        final: rt.Response | None = None
        request_id = current.id.removeprefix(rc.ID_PREFIX)
        async with contextlib.aclosing(self.log.follow(request_id, IDLE_S)) as replies:
            async for reply in replies:
                if reply is not None:
                    frames = replay.add(reply)
                    for frame in frames_after(frames, replay.writer.seq, starting_after):
                        yield frame
                    if replay.terminal is None:
                        continue
                final = await self._ended(tenant, current)
                if final is not None:
                    break
        assert final is not None
        for frame in frames_after(replay.finish(final), replay.writer.seq, starting_after):
            yield frame

    async def _ended(self, tenant: str, current: rt.Response) -> rt.Response | None:
        """The stored response once it has ended; None while it runs."""
        fresh = await self.store.get(tenant, current.id)
        if fresh is None:  # deleted meanwhile
            error = rt.ResponseError("not_found", "The response was deleted.")
            return msgspec.structs.replace(current, status="failed", error=error)
        final = _response.decode(await self.settle(tenant, fresh))
        return None if final.status in LIVE else final
