"""The Responses API, framework-free: `POST /v1/responses` and the stored responses.

    create(...)        POST   /v1/responses               (JSON, or the event stream)
    retrieve(...)      GET    /v1/responses/{id}
    delete(...)        DELETE /v1/responses/{id}
    cancel(...)        POST   /v1/responses/{id}/cancel
    input_items(...)   GET    /v1/responses/{id}/input_items

A request runs as a chat request through the bridge's calls (`responses_convert`). With
`store` (OpenAI's default) the finished response is written to the `ResponseStore` before it
is answered, so a `previous_response_id` naming it works at once, from any bridge. Stored
responses are per tenant: another tenant's id is 404.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec

from producer.errors import JetserveError
from producer.http import convert
from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.calls import Call, ClientGone
from producer.http.errors import ApiError, from_decode_error, invalid
from producer.http.handlers import Bridge, Reply
from producer.http.responses_stream import EventWriter
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, InferenceRequest, StreamChunk
from schemas.names import ResultKind
from schemas.openai_errors import not_found
from schemas.payloads import ChatMessage

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(rt.ResponsesRequest)
_conversation = msgspec.json.Decoder(list[ChatMessage])
_items = msgspec.json.Decoder(list[dict[str, Any]])
_response = msgspec.json.Decoder(rt.Response)
_encoder = msgspec.json.Encoder()
#: Refusals after which nothing was stored upstream (anything else, NATS unavailable, leaves a
#: background request queued for the scheduler to publish).
_REFUSED = {400, 404, 413, 429}
MAX_LIST_LIMIT = 100


class StoredResponse(msgspec.Struct, frozen=True):
    id: str
    #: The response object, JSON.
    response: bytes
    #: The conversation a continuation starts from (chat messages, JSON).
    conversation: bytes
    #: This request's input items (JSON list).
    input_items: bytes
    #: A background response's request in its model's stream, once stored there.
    stream_seq: int | None = None


class ResponseStore(Protocol):
    async def put(self, tenant: str, stored: StoredResponse, status: str) -> None: ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None: ...

    async def delete(self, tenant: str, response_id: str) -> bool: ...

    async def enqueue(self, tenant: str, stored: StoredResponse, request: InferenceRequest) -> None:
        """Record a background response (`queued`) and its request on the durable async path
        (the scheduler publishes it again if this bridge dies before it is published)."""
        ...

    async def dispatched(self, response_id: str, request_id: str, stream_seq: int) -> None: ...

    async def end(self, request_id: str, reply: bytes) -> bool:
        """Store `reply` as the background request's outcome unless one is stored already;
        False if it was (the request finished first)."""
        ...

    async def discard(self, tenant: str, response_id: str, request_id: str) -> None:
        """Forget a background response whose request was refused (nothing will run)."""
        ...

    async def reply(self, request_id: str) -> bytes | None:
        """The worker's reply to a background request, once stored."""
        ...


def no_database() -> ApiError:
    return ApiError(
        503,
        "Stored responses need a database (JETSERVE_DATABASE_URL).",
        code="no_database",
        param="store",
    )


class Responses:
    def __init__(self, bridge: Bridge, store: ResponseStore | None) -> None:
        self.bridge = bridge
        self.store = store

    def _store(self) -> ResponseStore:
        if self.store is None:
            raise no_database()
        return self.store

    async def _stored(self, tenant: str, response_id: str, param: str) -> StoredResponse:
        stored = await self._store().get(tenant, response_id)
        if stored is None:
            raise not_found("response", response_id, param)
        return stored

    async def create(
        self,
        read_body: Callable[[], Awaitable[bytes]],
        headers: Mapping[str, str],
        on_gone: Callable[[Call], Callable[[], None]],
    ) -> Reply:
        bridge = self.bridge
        tenant = (await bridge.authenticate(headers)).tenant
        try:
            body = _decoder.decode(await read_body())
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise from_decode_error(exc) from None
        if body.background and body.stream:
            raise invalid("Streaming a background response is not served yet.", "stream")
        if body.store and self.store is None:
            raise no_database()
        store = self.store is not None and body.store is not False
        history: list[ChatMessage] = []
        if body.previous_response_id is not None:
            previous = await self._stored(tenant, body.previous_response_id, "previous_response_id")
            if _response.decode(previous.response).status in ("queued", "in_progress"):
                await self._settle(tenant, previous)  # a background one that has finished
                previous = await self._stored(
                    tenant, body.previous_response_id, "previous_response_id"
                )
            history = _conversation.decode(previous.conversation)
        timeout_s = bridge.timeout_s(headers)
        now_ms = int(time.time() * 1000)
        converted = rc.responses_request(
            body,
            history,
            id=bridge.new_id(),
            tenant=tenant,
            created_ms=now_ms,
            deadline_ms=now_ms + int(timeout_s * 1000),
            idempotency_key=None,
        )
        # A served name: the version by the user, the routing header or the conversation.
        sticky = body.user or headers.get(names.HTTP_ROUTE_KEY) or body.previous_response_id
        routed = bridge.client.route(converted.request, sticky)
        converted = msgspec.structs.replace(converted, request=routed)
        request = converted.request
        base = rc.base_response(body, rc.ID_PREFIX + request.id, now_ms // 1000, stored=store)
        if body.background:
            return await self._background(tenant, converted, base)
        call = await bridge.calls.open(request, streaming=request.stream, timeout_s=timeout_s)
        stop_watch = on_gone(call)
        try:
            first = await call.next()
        except ClientGone:
            stop_watch()
            call.abandon()
            return Reply(status=499)
        except BaseException:
            stop_watch()
            await call.close()
            raise
        stop_watch()
        saver = _Saver(self.store if store else None, tenant, converted)
        if request.stream:
            return Reply(stream=self._sse(call, first, EventWriter(base), saver))
        try:
            result = first if isinstance(first, FinalResult) else await call.result()
        finally:
            await call.close()
        final = rc.finished_response(base, result, int(time.time()))
        await saver.save(final)
        return Reply(body=_encoder.encode(final))

    async def _background(self, tenant: str, converted: rc.Converted, base: rt.Response) -> Reply:
        """Stored (`queued`) and recorded on the durable async path before the answer; the
        scheduler stores the worker's reply, and a GET turns it into the response."""
        if self.store is None or not base.store:
            raise invalid("A background response must be stored.", "store")
        request = msgspec.structs.replace(converted.request, stream=False, deadline_ms=None)
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
                reply_to = names.results_subject(ResultKind.ASYNC, request.id)
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
        return Reply(body=stored.response)

    async def _settle(self, tenant: str, stored: StoredResponse) -> bytes:
        """A background response's current object: finished once its reply is stored."""
        current = _response.decode(stored.response)
        if current.status not in ("queued", "in_progress"):
            return stored.response
        assert self.store is not None
        data = await self.store.reply(current.id.removeprefix(rc.ID_PREFIX))
        if data is None:
            return stored.response
        reply = decode_reply(data)
        if isinstance(reply, FinalResult):
            final = rc.finished_response(current, reply, int(time.time()))
        elif isinstance(reply, ErrorResult) and reply.code == ErrorCode.CANCELLED:
            final = msgspec.structs.replace(current, status="cancelled")
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

    async def _sse(
        self,
        call: Call,
        first: StreamChunk | FinalResult,
        writer: EventWriter,
        saver: _Saver,
    ) -> AsyncIterator[bytes]:
        base = writer.base
        try:
            for frame in writer.start():
                yield frame
            item = first
            calls_streamed = False
            while isinstance(item, StreamChunk):
                if item.delta:
                    for frame in writer.text(item.delta):
                        yield frame
                if item.tool_calls:
                    calls_streamed = True
                    for frame in writer.calls(item.tool_calls):
                        yield frame
                item = await call.next()
            text, _, tool_calls = convert.text_of(item)
            if text and not writer.streamed_text:
                for frame in writer.text(text):
                    yield frame
            if tool_calls and not calls_streamed:
                for frame in writer.calls(tool_calls):
                    yield frame
            final = rc.finished_response(base, item, int(time.time()))
            await saver.save(final)
        except ApiError as exc:
            log.info("response stream %s ended with %d %s", base.id, exc.status, exc.code)
            error = rt.ResponseError(exc.code or "server_error", exc.message)
            final = msgspec.structs.replace(base, status="failed", error=error)
        finally:
            if call.finished:
                self.bridge.calls.spawn(call.close())
            else:
                call.abandon()
        for frame in writer.finish(final):
            yield frame

    async def retrieve(self, headers: Mapping[str, str], response_id: str, stream: bool) -> bytes:
        tenant = (await self.bridge.authenticate(headers)).tenant
        if stream:
            raise invalid("Only background responses can be streamed again.", "stream")
        return await self._settle(tenant, await self._stored(tenant, response_id, "response_id"))

    async def delete(self, headers: Mapping[str, str], response_id: str) -> bytes:
        tenant = (await self.bridge.authenticate(headers)).tenant
        if not await self._store().delete(tenant, response_id):
            raise not_found("response", response_id, "response_id")
        return _encoder.encode(rt.Deleted(response_id))

    async def cancel(self, headers: Mapping[str, str], response_id: str) -> bytes:
        """A background response not finished: its outcome is set to cancelled first (a
        result arriving later is dropped), then the request is deleted from its stream (a
        queued one never runs; one not yet published is not published again) and a cancel
        is sent (a worker running it stops; its partial output is not kept)."""
        tenant = (await self.bridge.authenticate(headers)).tenant
        stored = await self._stored(tenant, response_id, "response_id")
        current = _response.decode(stored.response)
        if not current.background:
            raise invalid("Only background responses can be cancelled.", "response_id")
        if current.status not in ("queued", "in_progress"):
            return await self._settle(tenant, stored)
        assert self.store is not None
        request_id = response_id.removeprefix(rc.ID_PREFIX)
        reply = ErrorResult(id=request_id, code=ErrorCode.CANCELLED, message="cancelled")
        if await self.store.end(request_id, encode(reply)):
            with contextlib.suppress(JetserveError, OSError):
                await self.bridge.client.cancel(
                    current.model, request_id, stream_seq=stored.stream_seq
                )
        return await self._settle(tenant, stored)

    async def input_items(
        self, headers: Mapping[str, str], response_id: str, query: Mapping[str, str]
    ) -> bytes:
        tenant = (await self.bridge.authenticate(headers)).tenant
        items = _items.decode((await self._stored(tenant, response_id, "response_id")).input_items)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise invalid("order must be asc or desc.", "order")
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise invalid(f"limit must be 1 to {MAX_LIST_LIMIT}.", "limit")
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after is not None:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise invalid("after is not an item of this response.", "after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return _encoder.encode(
            rt.InputItemList(
                page,
                page[0]["id"] if page else None,
                page[-1]["id"] if page else None,
                len(items) > limit,
            )
        )


class _Saver:
    """Writes a finished response (when it is to be stored)."""

    def __init__(self, store: ResponseStore | None, tenant: str, converted: rc.Converted) -> None:
        self._store = store
        self._tenant = tenant
        self._converted = converted

    async def save(self, final: rt.Response) -> None:
        if self._store is None:
            return
        conversation = [*self._converted.conversation, rc.assistant_message(final.output)]
        stored = StoredResponse(
            final.id,
            _encoder.encode(final),
            _encoder.encode(conversation),
            _encoder.encode(self._converted.input_items),
        )
        await self._store.put(self._tenant, stored, final.status)
