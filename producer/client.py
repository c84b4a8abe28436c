"""The Python client for jetserve's NATS subjects.

    async with await Client.connect("nats://127.0.0.1:4222") as client:
        result = await client.request("echo", "predict", {"x": 1})
        async for item in client.stream("smollm2", "chat", {"messages": [...]}):
            ...  # StreamChunk, StreamChunk, ..., FinalResult

`submit()` returns once JetStream has stored the request (the PubAck): from then on it is
not lost. Replies come to one wildcard inbox subscription per client, routed by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from producer.errors import (
    BacklogFull,
    InvalidRequest,
    JetserveError,
    ModelNotFound,
    RequestFailed,
    RequestTimeout,
    RequestTooLarge,
    Unavailable,
)
from producer.pending import Accepted, Pending
from producer.timers import CoarseTimers
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.messages import (
    CancelRequest,
    ErrorResult,
    FinalResult,
    InferenceRequest,
    Kind,
    StreamChunk,
)
from schemas.names import Encoding, Header, Priority
from schemas.params import SamplingParams

#: JetStream API error codes the client maps to exceptions.
_STREAM_FULL_CODES = {10077, 10078}  # maximum messages / bytes exceeded
_MSG_TOO_BIG = 10054


class _ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_pub_ack = msgspec.json.Decoder(_PubAck)


class _RetryPublish(Exception):
    """The publish may not have been stored: publish again (same de-duplication id)."""


#: A publish that failed these ways may be repeated (the same de-duplication id).
_RETRY = (_RetryPublish, TimeoutError, ConnectionError, nats.errors.OutboundBufferLimitError)


_DEFAULT_TIMEOUT_S = 60.0
#: Header names as plain strings: an enum member's `.value` is a property (~0.35 us).
_MSG_ID, _REPLY_TO, _ENCODING = Header.MSG_ID.value, Header.REPLY_TO.value, Header.ENCODING.value


def new_request_id() -> str:
    return uuid.uuid4().hex


def make_request(
    model: str,
    kind: Kind,
    payload: Any,
    *,
    parameters: SamplingParams | dict[str, Any] | None = None,
    request_id: str | None = None,
    tenant: str = "default",
    priority: Priority = Priority.ONLINE,
    stream: bool = False,
    timeout_s: float | None = None,
    idempotency_key: str | None = None,
    metadata: dict[str, str] | None = None,
) -> InferenceRequest:
    """Build and validate a request; raises `InvalidRequest` naming the bad field."""
    now_ms = int(time.time() * 1000)
    raw = {
        "id": request_id or new_request_id(),
        "model": model,
        "kind": kind,
        "payload": payload,
        "parameters": parameters if parameters is not None else {},
        "tenant": tenant,
        "priority": priority,
        "stream": stream,
        "created_ms": now_ms,
        "deadline_ms": None if timeout_s is None else now_ms + int(timeout_s * 1000),
        "idempotency_key": idempotency_key,
        "metadata": metadata or {},
    }
    try:
        return msgspec.convert(raw, InferenceRequest, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc)) from None


def dedup_id(request: InferenceRequest) -> str:
    """The JetStream de-duplication key: the tenant-scoped idempotency key, else the id."""
    if request.idempotency_key:
        return f"{request.tenant}:{request.idempotency_key}"
    return request.id


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


#: One publish to retry: subject, data, headers, when to give up (time.monotonic()).
_Attempt = tuple[str, bytes, dict[str, str], float]
#: A publish of `begin` waiting for its PubAck: the request, the publish, its timer.
_Watched = tuple[Pending, _Attempt, int]


class Client:
    def __init__(
        self, nc: NATS, *, encoding: Encoding = Encoding.JSON, publish_timeout_s: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout_s)
        self._encoding = encoding
        self._publish_timeout_s = publish_timeout_s
        # 64 random bits name this client's inbox; short, as it is in every request's headers.
        self._prefix = f"_INBOX.jetserve.{secrets.token_hex(8)}"
        self._waiters: dict[str, Pending] = {}
        #: publish token -> the future of its PubAck (while `submit` waits for it)
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        #: publish token -> what `begin` published, while its PubAck is awaited
        self._watched: dict[str, _Watched] = {}
        self._ack_ids = itertools.count()
        self._subjects: dict[tuple[str, Priority], str] = {}
        self._sub: Any = None
        self._timers = CoarseTimers()
        self._retries: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, url: str = "nats://127.0.0.1:4222", **options: Any) -> Client:
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.25, **options)
        client = cls(nc)
        client._owns_connection = True
        return client

    _owns_connection = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._owns_connection:
            await self.nc.drain()

    def reply_subject(self, request_id: str) -> str:
        return f"{self._prefix}.{request_id}"

    async def submit(self, request: InferenceRequest, *, reply_to: str | None = None) -> Accepted:
        """Publish and wait for JetStream to store it. Retries the publish (same de-dup id)
        until `publish_timeout_s` has passed.

        The PubAck comes to the client's own inbox (`<inbox>.<n>.ack`), beside the replies:
        one subscription, no per-publish request machinery (the hot path)."""
        subject, data, headers = self._message(request, reply_to)
        await self._ensure_inbox()
        # Keyed per publish, not per request id: retries of one idempotent request may be in
        # flight at once.
        ack_token = f"{next(self._ack_ids):x}"
        ack_to = f"{self._prefix}.{ack_token}.ack"
        give_up = time.monotonic() + self._publish_timeout_s
        while True:
            future, timer = self._expect_ack(ack_token, give_up)
            try:
                await self._publish(request, subject, data, ack_to, headers)
                msg = await future
                return self._accepted(request, msg)
            except _RETRY:
                pass
            finally:
                self._timers.cancel(timer)
                if self._acks.get(ack_token) is future:
                    del self._acks[ack_token]
            if time.monotonic() >= give_up:
                raise Unavailable(f"request {request.id} not acknowledged by NATS in time")
            await asyncio.sleep(0.1)

    def _message(
        self, request: InferenceRequest, reply_to: str | None
    ) -> tuple[str, bytes, dict[str, str]]:
        """Subject, payload and headers of the request's publish."""
        headers = {_MSG_ID: dedup_id(request)}
        if reply_to:
            headers[_REPLY_TO] = reply_to
        if self._encoding is not Encoding.JSON:
            headers[_ENCODING] = self._encoding.value
        subject = self._subjects.get((request.model, request.priority))
        if subject is None:
            subject = names.request_subject(request.model, request.priority)
            self._subjects[(request.model, request.priority)] = subject
        return subject, encode(request, self._encoding), headers

    async def _publish(
        self,
        request: InferenceRequest,
        subject: str,
        data: bytes,
        ack_to: str,
        headers: dict[str, str],
    ) -> None:
        """One publish. Raises one of `_RETRY` when it may be retried."""
        try:
            await self.nc.publish(subject, data, reply=ack_to, headers=headers)
        except nats.errors.ConnectionClosedError:
            raise Unavailable("NATS connection closed") from None
        except nats.errors.MaxPayloadError:
            raise RequestTooLarge(
                f"request {request.id} ({len(data)} bytes) is larger than the NATS "
                f"server accepts ({self.nc.max_payload} bytes)"
            ) from None

    async def begin(self, request: InferenceRequest, *, streaming: bool) -> Pending:
        """Like `start` (replies to the client's inbox), but returns once published, not once
        stored: the PubAck is handled when it arrives, setting `pending.accepted`, or
        `pending.refused` (unknown model, full backlog, too large, not stored in time) and
        calling `pending.notify`. A publish that is not acknowledged is retried (the same
        de-duplication id) until `publish_timeout_s`. For callers that wait on the pending
        reply anyway (the HTTP bridge): their task is woken once per request, not twice."""
        if self._sub is None:
            await self._ensure_inbox()
        if request.id in self._waiters:
            raise InvalidRequest(f"request id {request.id!r} is already in flight")
        pending = Pending(request, streaming)
        self._waiters[request.id] = pending
        subject, data, headers = self._message(request, self.reply_subject(request.id))
        attempt = (subject, data, headers, time.monotonic() + self._publish_timeout_s)
        try:
            await self._publish_watched(pending, attempt)
        except BaseException:
            await self._release(pending)
            raise
        return pending

    def _expect_ack(self, token: str, give_up: float) -> tuple[asyncio.Future[Msg], int]:
        """The future the PubAck on `<inbox>.<token>.ack` resolves (TimeoutError at
        `give_up`), and its timer. A coarse timer, not asyncio.timeout(): this runs for every
        request (the hot path)."""
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[token] = future
        timer = self._timers.call_later(
            max(0.05, give_up - time.monotonic()), functools.partial(_expire, future)
        )
        return future, timer

    async def _publish_watched(self, pending: Pending, attempt: _Attempt) -> None:
        """Publish; the PubAck is handled by `_acked` the moment it arrives (no future or
        callback per publish), its absence by `give_up` by `_ack_timed_out`."""
        subject, data, headers, give_up = attempt
        token = f"{next(self._ack_ids):x}"
        timer = self._timers.call_later(
            max(0.05, give_up - time.monotonic()), functools.partial(self._ack_timed_out, token)
        )
        self._watched[token] = (pending, attempt, timer)
        ack_to = f"{self._prefix}.{token}.ack"
        try:
            await self._publish(pending.request, subject, data, ack_to, headers)
        except _RETRY:
            if self._unwatch(token) is not None:
                self._retry_or_refuse(pending, attempt)
        except BaseException:
            self._unwatch(token)
            raise

    def _unwatch(self, token: str) -> _Watched | None:
        watched = self._watched.pop(token, None)
        if watched is not None:
            self._timers.cancel(watched[2])
        return watched

    def _ack_timed_out(self, token: str) -> None:
        watched = self._watched.pop(token, None)
        if watched is not None:
            self._retry_or_refuse(watched[0], watched[1])

    def _acked(self, watched: _Watched, msg: Msg) -> None:
        pending, attempt, _ = watched
        request = pending.request
        if self._waiters.get(request.id) is not pending:
            return  # released meanwhile: nobody waits for the outcome
        try:
            pending.accepted = self._accepted(request, msg)
        except _RETRY:
            self._retry_or_refuse(pending, attempt)
            return
        except JetserveError as exc:
            pending.refuse(exc)
            return
        pending.accepted_at = asyncio.get_running_loop().time()

    def _retry_or_refuse(self, pending: Pending, attempt: _Attempt) -> None:
        """The publish may not have been stored: publish again until `give_up`."""
        request = pending.request
        if self._waiters.get(request.id) is not pending:
            return
        if time.monotonic() < attempt[3]:
            task = asyncio.get_running_loop().create_task(self._republish(pending, attempt))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        pending.refuse(Unavailable(f"request {request.id} not acknowledged by NATS in time"))

    async def _republish(self, pending: Pending, attempt: _Attempt) -> None:
        await asyncio.sleep(0.1)
        if self._waiters.get(pending.request.id) is not pending:
            return
        try:
            await self._publish_watched(pending, attempt)
        except JetserveError as exc:
            pending.refuse(exc)

    def _accepted(self, request: InferenceRequest, msg: Msg) -> Accepted:
        if not msg.data:
            status = (msg.headers or {}).get("Status")
            if status == "503":  # no stream listens on the subject
                if not self.nc.is_connected:
                    raise _RetryPublish()
                raise ModelNotFound(f"model {request.model!r} does not exist")
            raise _RetryPublish()
        try:
            ack = _pub_ack.decode(msg.data)
        except msgspec.DecodeError:
            raise _RetryPublish() from None
        if ack.error is not None:
            if ack.error.err_code in _STREAM_FULL_CODES:
                raise BacklogFull(f"model {request.model!r} backlog is full")
            if ack.error.err_code == _MSG_TOO_BIG:
                raise RequestTooLarge(f"request {request.id} is larger than the stream allows")
            if ack.error.code == 503:
                raise _RetryPublish()  # JetStream temporarily unavailable
            raise Unavailable(f"JetStream refused request {request.id}: {ack.error.description}")
        return Accepted(request.id, ack.stream, ack.seq, ack.duplicate)

    async def _ensure_inbox(self) -> None:
        if self._sub is None:
            # Replies on <prefix>.<id>, PubAcks on <prefix>.<id>.ack.
            self._sub = await self.nc.subscribe(
                f"{self._prefix}.>",
                cb=self._on_reply,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )

    async def _on_reply(self, msg: Msg) -> None:
        rest = msg.subject[len(self._prefix) + 1 :]
        if rest.endswith(".ack"):
            token = rest[:-4]
            watched = self._unwatch(token)
            if watched is not None:
                self._acked(watched, msg)
                return
            ack = self._acks.get(token)
            if ack is not None and not ack.done():
                ack.set_result(msg)
            return
        pending = self._waiters.get(rest)
        if pending is None:
            return  # a late or duplicate reply for a request nobody waits for any more
        try:
            reply = decode_reply(msg.data, self._encoding)
        except msgspec.DecodeError:
            return
        pending.deliver(reply)

    async def cancel(self, model: str, request_id: str, *, stream_seq: int | None = None) -> None:
        """Stop the request: a worker running it frees its slot, a worker that pulls it later
        skips it. With `stream_seq` (from `Accepted.seq`) a request still queued is also
        deleted from the stream, so it cannot run later even if no worker is alive now to
        hear the cancel."""
        await self.nc.publish(
            names.cancel_subject(model, request_id), encode(CancelRequest(id=request_id))
        )
        if stream_seq is not None:
            with contextlib.suppress(Exception):  # already taken, acked or deleted
                await self.js.delete_msg(names.stream_name(model), stream_seq)

    async def start(
        self, request: InferenceRequest, *, streaming: bool, reply_to: str | None = None
    ) -> Pending:
        """Listen for replies, then publish. `reply_to` replaces the client's inbox with a
        subject of the caller's choosing (several requesters may listen on it)."""
        if reply_to is None:
            await self._ensure_inbox()
            if request.id in self._waiters:
                raise InvalidRequest(f"request id {request.id!r} is already in flight")
        pending = Pending(request, streaming)
        if reply_to is None:
            self._waiters[request.id] = pending
            reply_to = self.reply_subject(request.id)
        else:
            pending._sub = await self.nc.subscribe(reply_to, cb=self._dedicated(pending))
        try:
            pending.accepted = await self.submit(request, reply_to=reply_to)
            pending.accepted_at = asyncio.get_running_loop().time()
        except BaseException:
            await self._release(pending)
            raise
        return pending

    def _dedicated(self, pending: Pending) -> Callable[[Msg], Awaitable[None]]:
        async def on_reply(msg: Msg) -> None:
            try:
                reply = decode_reply(msg.data, self._encoding)
            except msgspec.DecodeError:
                return
            if reply.id == pending.request.id:  # the subject may be shared across retries
                pending.deliver(reply)

        return on_reply

    async def _release(self, pending: Pending) -> None:
        # A waiter's `notify` usually refers back to it (a cycle): left in place, every
        # request would be garbage only the cyclic collector frees.
        pending.notify = None
        if self._waiters.get(pending.request.id) is pending:
            del self._waiters[pending.request.id]
        if pending._sub is not None:
            with contextlib.suppress(Exception):
                await pending._sub.unsubscribe()
            pending._sub = None

    async def finish(self, pending: Pending, *, cancel: bool = True) -> None:
        """Stop listening. If no terminal reply came and `cancel` is set, cancel the request
        (the requester gave up: free the worker's slot, drop it from the queue)."""
        await self._release(pending)
        if pending.done.done():
            return
        pending.done.cancel()
        if cancel and pending.refused is None and self.nc.is_connected:
            seq = pending.accepted.seq if pending.accepted else None
            with contextlib.suppress(Exception):
                await self.cancel(pending.request.model, pending.request.id, stream_seq=seq)

    async def request(
        self,
        model: str,
        kind: Kind,
        payload: Any,
        *,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        **fields: Any,
    ) -> FinalResult:
        """Send a request and wait for its result. Raises `RequestFailed` on an error result."""
        request = make_request(model, kind, payload, timeout_s=timeout_s, **fields)
        return await self.request_obj(request, timeout_s)

    async def request_obj(self, request: InferenceRequest, timeout_s: float) -> FinalResult:
        pending = await self.start(request, streaming=False)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await pending.done
        except TimeoutError:
            raise RequestTimeout(f"no result for {request.id} within {timeout_s:.1f}s") from None
        finally:
            await self.finish(pending)
        if isinstance(reply, ErrorResult):
            raise RequestFailed(reply.message, code=reply.code, retryable=reply.retryable)
        return reply

    async def stream(
        self,
        model: str,
        kind: Kind,
        payload: Any,
        *,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        **fields: Any,
    ) -> AsyncGenerator[StreamChunk | FinalResult, None]:
        """Chunks as they are produced, then the final result. Closing the iterator early
        cancels the request. If the request restarts on another worker, chunks it already
        yielded are not repeated."""
        request = make_request(model, kind, payload, timeout_s=timeout_s, stream=True, **fields)
        async for item in self.stream_obj(request, timeout_s):
            yield item

    async def stream_obj(
        self, request: InferenceRequest, timeout_s: float
    ) -> AsyncGenerator[StreamChunk | FinalResult, None]:
        waiter = await self.start(request, streaming=True)
        assert waiter.chunks is not None
        attempt, yielded = 0, 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    # Chunks first: the final result is published after the last chunk.
                    if waiter.chunks.empty() and waiter.done.done():
                        reply = waiter.done.result()
                        if isinstance(reply, ErrorResult):
                            raise RequestFailed(
                                reply.message, code=reply.code, retryable=reply.retryable
                            )
                        yield reply
                        return
                    chunk = await _next_chunk(waiter)
                    if chunk is None:
                        continue
                    attempt = max(attempt, chunk.attempt)
                    if chunk.attempt < attempt or chunk.seq < yielded:
                        continue  # a restarted attempt repeating what was already yielded
                    yielded += 1
                    yield chunk
        except TimeoutError:
            raise RequestTimeout(f"no result for {request.id} within {timeout_s:.1f}s") from None
        finally:
            await self.finish(waiter)


async def _next_chunk(waiter: Pending) -> StreamChunk | None:
    """The next chunk, or None once the terminal reply has arrived (chunks may remain)."""
    assert waiter.chunks is not None
    if not waiter.chunks.empty():
        return waiter.chunks.get_nowait()
    getter = asyncio.ensure_future(waiter.chunks.get())
    either: set[asyncio.Future[Any]] = {getter, waiter.done}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    return None
