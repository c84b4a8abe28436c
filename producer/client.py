"""The Python client for jetserve's NATS subjects.

    async with await Client.connect("nats://127.0.0.1:4222") as client:
        result = await client.request("echo", "predict", {"x": 1})
        async for item in client.stream("smollm2", "chat", {"messages": [...]}):
            ...  # StreamChunk, StreamChunk, ..., FinalResult

`submit()` returns once JetStream has stored the request (the PubAck): from then on it is
not lost. Replies come to one wildcard inbox subscription per client, routed by request id
(`producer.routing`); PubAcks to the same subscription (`producer.acks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from natsio.connection import connect
from natsio.routes import RouteMetrics, RouteTable, shadow_request
from producer.acks import AckTracker, AwaitedAck
from producer.errors import InvalidRequest, JetserveError, RequestFailed, RequestTimeout
from producer.pending import Accepted, Pending
from producer.routing import ReplyRouter
from producer.timers import CoarseTimers
from schemas import names
from schemas.codec import encode
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


class Client:
    """The public API. Its parts: `AckTracker` (publishing until stored: the one publish
    path, `begin`; `submit` and `start` are built on it) and `ReplyRouter` (replies to the
    `Pending` of their request)."""

    def __init__(
        self, nc: NATS, *, encoding: Encoding = Encoding.JSON, publish_timeout_s: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=publish_timeout_s)
        self._encoding = encoding
        self._router = ReplyRouter(nc, encoding)
        self._acks = AckTracker(
            nc, CoarseTimers(), publish_timeout_s=publish_timeout_s, on_reply=self._router.on_reply
        )
        self._inbox = self._acks.inbox
        self._prefix = self._inbox.prefix
        self._subjects: dict[tuple[str, Priority], str] = {}
        self._mirrors: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls,
        url: str = "nats://127.0.0.1:4222",
        *,
        routes: bool = True,
        route_metrics: RouteMetrics | None = None,
        **options: Any,
    ) -> Client:
        """`routes`: follow the route table, so a served name is sent to one of its versions
        (natsio/routes.py); without it every `model` is taken as a concrete model."""
        client = cls(await connect(url, **options))
        client._owns_connection = True
        if routes:
            try:
                client.routes = await RouteTable.watch(client.js, route_metrics)
            except BaseException:
                await client.nc.close()
                raise
        return client

    _owns_connection = False
    #: The route table this client resolves served names with; None: no routing.
    routes: RouteTable | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._mirrors):  # each a publish (its PubAck is not waited for)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 1.0)
        if self.routes is not None:
            await self.routes.close()
        await self._inbox.close()
        if self._owns_connection:
            await self.nc.drain()

    @property
    def is_connected(self) -> bool:
        return bool(self.nc.is_connected)

    def reply_subject(self, request_id: str) -> str:
        return f"{self._prefix}.{request_id}"

    def route(self, request: InferenceRequest, sticky: str | None = None) -> InferenceRequest:
        """`request` for the version its served name chooses (schemas/routes.py; unchanged
        for a concrete model), mirroring it to the route's shadow model when chosen. `sticky`:
        the caller's sticky key (requests with the same key see the same version)."""
        routes = self.routes
        if routes is None:
            return request
        routed, shadow = routes.resolve(request, sticky)
        if shadow is not None:
            task = asyncio.get_running_loop().create_task(
                self._mirror(request.model, shadow_request(routed, shadow))
            )
            self._mirrors.add(task)
            task.add_done_callback(self._mirrors.discard)
        return routed

    async def _mirror(self, served_name: str, shadow: InferenceRequest) -> None:
        """Publish the mirror with no reply subject (its result is discarded by the worker);
        the outcome of the publish is counted, never raised."""
        assert self.routes is not None
        counter = self.routes.metrics.shadowed
        if not self._inbox.started:
            await self._inbox.start()
        subject, data, headers = self._message(shadow, None)
        try:
            await self._acks.publish(_Mirror(shadow, served_name, counter), subject, data, headers)
        except Exception:
            counter.labels(served_name, shadow.model, "refused").inc()

    async def begin(
        self, request: InferenceRequest, *, streaming: bool, sticky: str | None = None
    ) -> Pending:
        """Listen for replies on the client's inbox and publish; returns once published, not
        once stored: the PubAck is handled when it arrives, setting `pending.accepted`, or
        `pending.refused` (unknown model, full backlog, too large, not stored in time) and
        calling `pending.notify`. A publish that is not acknowledged is retried (the same
        de-duplication id) until `publish_timeout_s`. For callers that wait on the pending
        reply anyway (the HTTP bridge): their task is woken once per request, not twice."""
        if not self._inbox.started:
            await self._inbox.start()
        if self.routes is not None:
            request = self.route(request, sticky)
        pending = Pending(request, streaming)
        self._router.add(pending)
        subject, data, headers = self._message(request, self.reply_subject(request.id))
        try:
            await self._acks.publish(pending, subject, data, headers)
        except BaseException:
            await self._router.release(pending)
            raise
        return pending

    async def submit(
        self, request: InferenceRequest, *, reply_to: str | None = None, sticky: str | None = None
    ) -> Accepted:
        """Publish and wait for JetStream to store it (the publish of `begin`, its outcome
        awaited). Retries the publish (same de-dup id) until `publish_timeout_s` has passed.
        A served name is resolved first: `Accepted.stream` names the version's stream."""
        if not self._inbox.started:
            await self._inbox.start()
        request = self.route(request, sticky)
        awaited = AwaitedAck(request)
        subject, data, headers = self._message(request, reply_to)
        try:
            await self._acks.publish(awaited, subject, data, headers)
            return await awaited.future
        finally:
            awaited.live = False

    async def start(
        self,
        request: InferenceRequest,
        *,
        streaming: bool,
        reply_to: str | None = None,
        sticky: str | None = None,
    ) -> Pending:
        """Listen for replies, publish, and wait until stored. `reply_to` replaces the
        client's inbox with a subject of the caller's choosing (several requesters may listen
        on it)."""
        request = self.route(request, sticky)
        pending = Pending(request, streaming)
        if reply_to is None:
            if not self._inbox.started:
                await self._inbox.start()
            self._router.add(pending)
            reply_to = self.reply_subject(request.id)
        else:
            await self._router.subscribe(pending, reply_to)
        try:
            pending.stored(await self.submit(request, reply_to=reply_to))
        except BaseException:
            await self._router.release(pending)
            raise
        return pending

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

    async def finish(self, pending: Pending, *, cancel: bool = True) -> None:
        """Stop listening. If no terminal reply came and `cancel` is set, cancel the request
        (the requester gave up: free the worker's slot, drop it from the queue)."""
        await self._router.release(pending)
        if pending.done.done():
            return
        pending.done.cancel()
        if cancel and pending.refused is None and self.nc.is_connected:
            seq = pending.accepted.seq if pending.accepted else None
            with contextlib.suppress(Exception):
                await self.cancel(pending.request.model, pending.request.id, stream_seq=seq)

    # `stream` takes the same arguments as `request` on purpose: the two entry points differ
    # only in what they give back (one result, or chunks then the result).
    async def request(
        self,
        model: str,
        kind: Kind,
        payload: Any,
        *,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        sticky: str | None = None,
        **fields: Any,
    ) -> FinalResult:
        """Send a request and wait for its result. Raises `RequestFailed` on an error result.
        `model` may be a served name; the result's `model` is the version that served it."""
        request = make_request(model, kind, payload, timeout_s=timeout_s, **fields)
        return await self.request_obj(request, timeout_s, sticky=sticky)

    async def request_obj(
        self, request: InferenceRequest, timeout_s: float, *, sticky: str | None = None
    ) -> FinalResult:
        pending = await self.start(request, streaming=False, sticky=sticky)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await pending.done
        except TimeoutError:
            raise RequestTimeout(f"no result for {request.id} within {timeout_s:.1f}s") from None
        finally:
            await self.finish(pending)
        if isinstance(reply, ErrorResult):
            raise RequestFailed(
                reply.message, code=reply.code, retryable=reply.retryable, param=reply.param
            )
        return reply

    async def stream(
        self,
        model: str,
        kind: Kind,
        payload: Any,
        *,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        sticky: str | None = None,
        **fields: Any,
    ) -> AsyncGenerator[StreamChunk | FinalResult, None]:
        """Chunks as they are produced, then the final result. Closing the iterator early
        cancels the request. If the request restarts on another worker, chunks it already
        yielded are not repeated."""
        request = make_request(model, kind, payload, timeout_s=timeout_s, stream=True, **fields)
        async for item in self.stream_obj(request, timeout_s, sticky=sticky):
            yield item

    async def stream_obj(
        self, request: InferenceRequest, timeout_s: float, *, sticky: str | None = None
    ) -> AsyncGenerator[StreamChunk | FinalResult, None]:
        waiter = await self.start(request, streaming=True, sticky=sticky)
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
                                reply.message,
                                code=reply.code,
                                retryable=reply.retryable,
                                param=reply.param,
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


class _Mirror:
    """A shadow request's publish, which nobody waits for: its outcome is counted."""

    __slots__ = ("_counter", "_served", "live", "request")

    def __init__(self, request: InferenceRequest, served_name: str, counter: Counter) -> None:
        self.request = request
        self.live = True
        self._served = served_name
        self._counter = counter

    def stored(self, accepted: Accepted) -> None:
        self._counter.labels(self._served, self.request.model, "stored").inc()

    def refuse(self, error: JetserveError) -> None:
        self._counter.labels(self._served, self.request.model, "refused").inc()


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
