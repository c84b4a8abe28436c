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
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from producer.errors import (
    BacklogFull,
    InvalidRequest,
    ModelNotFound,
    RequestFailed,
    RequestTimeout,
    Unavailable,
)
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.messages import (
    CancelRequest,
    ErrorResult,
    FinalResult,
    InferenceRequest,
    Kind,
    Reply,
    StreamChunk,
)
from schemas.names import Encoding, Header, Priority
from schemas.params import SamplingParams

#: JetStream API error codes the client maps to exceptions.
_STREAM_FULL_CODES = {10077, 10078}  # maximum messages / bytes exceeded
_DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Accepted:
    id: str
    stream: str
    seq: int
    #: True when a request with the same id/idempotency key was already stored.
    duplicate: bool


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


class _Pending:
    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Reply] = asyncio.Queue()


class Client:
    def __init__(
        self, nc: NATS, *, encoding: Encoding = Encoding.JSON, publish_timeout_s: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout_s)
        self._encoding = encoding
        self._publish_timeout_s = publish_timeout_s
        self._prefix = f"_INBOX.jetserve.{uuid.uuid4().hex}"
        self._pending: dict[str, _Pending] = {}
        self._sub: Any = None

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
        until the request's deadline or `publish_timeout_s`, whichever is later."""
        headers = {Header.MSG_ID.value: dedup_id(request)}
        if reply_to:
            headers[Header.REPLY_TO.value] = reply_to
        if self._encoding is not Encoding.JSON:
            headers[Header.ENCODING.value] = self._encoding.value
        subject = names.request_subject(request.model, request.priority)
        data = encode(request, self._encoding)
        give_up = time.monotonic() + self._publish_timeout_s
        while True:
            try:
                ack = await self.js.publish(subject, data, headers=headers)
                return Accepted(request.id, ack.stream, ack.seq, bool(ack.duplicate))
            except (NoRespondersError, NoStreamResponseError):
                if not self.nc.is_connected:
                    pass  # reconnecting: retry below
                else:
                    raise ModelNotFound(f"model {request.model!r} does not exist") from None
            except APIError as exc:
                if exc.err_code in _STREAM_FULL_CODES:
                    raise BacklogFull(f"model {request.model!r} backlog is full") from None
                if exc.code == 503:
                    pass  # JetStream temporarily unavailable: retry
                else:
                    raise
            except (NatsTimeoutError, TimeoutError, ConnectionError):
                pass
            except nats.errors.ConnectionClosedError:
                raise Unavailable("NATS connection closed") from None
            if time.monotonic() >= give_up:
                raise Unavailable(f"request {request.id} not acknowledged by NATS in time")
            await asyncio.sleep(0.1)

    async def _ensure_inbox(self) -> None:
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        request_id = msg.subject.rsplit(".", 1)[-1]
        pending = self._pending.get(request_id)
        if pending is None:
            return  # a late or duplicate reply for a request nobody waits for any more
        try:
            reply = decode_reply(msg.data, self._encoding)
        except msgspec.DecodeError:
            return
        pending.queue.put_nowait(reply)

    async def cancel(self, model: str, request_id: str) -> None:
        await self.nc.publish(
            names.cancel_subject(model, request_id), encode(CancelRequest(id=request_id))
        )

    async def _replies(self, request: InferenceRequest, timeout_s: float) -> AsyncIterator[Reply]:
        await self._ensure_inbox()
        if request.id in self._pending:
            raise InvalidRequest(f"request id {request.id!r} is already in flight")
        pending = _Pending()
        self._pending[request.id] = pending
        finished = False
        try:
            await self.submit(request, reply_to=self.reply_subject(request.id))
            deadline = time.monotonic() + timeout_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeout(f"no result for {request.id} within {timeout_s:.1f}s")
                try:
                    reply = await asyncio.wait_for(pending.queue.get(), remaining)
                except TimeoutError:
                    continue
                if isinstance(reply, StreamChunk):
                    yield reply
                    continue
                finished = True
                yield reply
                return
        finally:
            self._pending.pop(request.id, None)
            if not finished and self.nc.is_connected:
                with contextlib.suppress(Exception):
                    await self.cancel(request.model, request.id)

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
        async for reply in self._replies(request, timeout_s):
            if isinstance(reply, FinalResult):
                return reply
            if isinstance(reply, ErrorResult):
                raise RequestFailed(reply.message, code=reply.code, retryable=reply.retryable)
        raise RequestTimeout(f"no result for {request.id}")  # pragma: no cover - loop returns

    async def stream(
        self,
        model: str,
        kind: Kind,
        payload: Any,
        *,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        **fields: Any,
    ) -> AsyncIterator[StreamChunk | FinalResult]:
        """Chunks as they are produced, then the final result. Closing the iterator early
        cancels the request. If the request restarts on another worker, chunks it already
        yielded are not repeated."""
        request = make_request(model, kind, payload, timeout_s=timeout_s, stream=True, **fields)
        async for item in self.stream_obj(request, timeout_s):
            yield item

    async def stream_obj(
        self, request: InferenceRequest, timeout_s: float
    ) -> AsyncIterator[StreamChunk | FinalResult]:
        attempt, yielded = 0, 0
        async for reply in self._replies(request, timeout_s):
            if isinstance(reply, ErrorResult):
                raise RequestFailed(reply.message, code=reply.code, retryable=reply.retryable)
            if isinstance(reply, StreamChunk):
                if reply.attempt > attempt:
                    attempt = reply.attempt
                if reply.attempt < attempt or reply.seq < yielded:
                    continue
                yielded += 1
            yield reply
