"""Reading (and ending) background responses' event logs: `jetserve.revents.<request id>` in
the stream `jetserve-response-events`, which the scheduler creates and keeps for
`JETSERVE_RESPONSE_EVENTS_KEEP_S`. Any bridge reads any log: nothing lives in a bridge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import names
from schemas.codec import decode_reply, encode, encoding_of
from schemas.messages import ErrorResult, Reply, StreamChunk
from schemas.names import Header

#: What reading or writing a log may raise (NATS unreachable, no stream yet, ...).
LOG_ERRORS = (nats.errors.Error, OSError, TimeoutError)


def _decode(data: bytes, headers: dict[str, str] | None) -> Reply | None:
    try:
        return decode_reply(data, encoding_of(headers))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class EventLog:
    def __init__(self, js: JetStreamContext, *, timeout_s: float = 5.0) -> None:
        self._js = js
        self._timeout_s = timeout_s

    async def last(self, request_id: str) -> Reply | None:
        """The log's last message (None: nothing was sent yet)."""
        try:
            msg = await self._js.get_last_msg(
                names.EVENTS_STREAM, names.response_events_subject(request_id)
            )
        except NotFoundError:
            return None
        return _decode(msg.data or b"", msg.headers)

    async def read(self, request_id: str) -> list[Reply]:
        """Every message of the log now, up to its first result."""
        subject = names.response_events_subject(request_id)
        try:
            last = await self._js.get_last_msg(names.EVENTS_STREAM, subject)
        except NotFoundError:
            return []
        out: list[Reply] = []
        async with contextlib.aclosing(self._messages(subject, self._timeout_s)) as messages:
            async for reply, seq in messages:
                if reply is None:
                    break  # the log's messages stopped coming (they expired meanwhile)
                out.append(reply)
                if not isinstance(reply, StreamChunk) or seq >= (last.seq or 0):
                    break
        return out

    async def follow(self, request_id: str, idle_s: float) -> AsyncGenerator[Reply | None]:
        """The log's messages as they come, from its first; None after each `idle_s`
        without one."""
        subject = names.response_events_subject(request_id)
        async with contextlib.aclosing(self._messages(subject, idle_s)) as messages:
            async for reply, _ in messages:
                yield reply

    async def _messages(
        self, subject: str, idle_s: float
    ) -> AsyncGenerator[tuple[Reply | None, int]]:
        sub = await self._js.subscribe(subject, stream=names.EVENTS_STREAM, ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_s)
                except nats.errors.TimeoutError:
                    yield None, 0
                    continue
                reply = _decode(msg.data, msg.headers)
                if reply is not None:
                    yield reply, msg.metadata.sequence.stream
        finally:
            with contextlib.suppress(*LOG_ERRORS):
                await sub.unsubscribe()

    async def end(self, request_id: str, reply: ErrorResult) -> bool:
        """Write `reply` as the log's result; False if it has one already (the worker's
        came first: the duplicate window keeps one result per request)."""
        ack = await self._js.publish(
            names.response_events_subject(request_id),
            encode(reply),
            timeout=self._timeout_s,
            stream=names.EVENTS_STREAM,
            headers={
                Header.MSG_ID.value: names.result_msg_id(request_id),
                Header.ENCODING.value: names.Encoding.JSON.value,
            },
        )
        return not ack.duplicate
