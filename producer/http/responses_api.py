"""The Responses API, framework-free: `POST /v1/responses` and the stored responses.

    create(...)        POST   /v1/responses               (JSON, or the event stream)
    retrieve(...)      GET    /v1/responses/{id}          (?stream=true: a background one's events)
    delete(...)        DELETE /v1/responses/{id}
    cancel(...)        POST   /v1/responses/{id}/cancel
    input_items(...)   GET    /v1/responses/{id}/input_items

A request runs as a chat request through the bridge's calls (`responses_convert`). With
`store` (OpenAI's default) the finished response is written to the `ResponseStore` before it
is answered, so a `previous_response_id` naming it works at once, from any bridge. Stored
responses are per tenant: another tenant's id is 404. Background responses (create, settle,
cancel, their event stream) are `responses_background.Background`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec

from producer.http import convert
from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.calls import Call, ClientGone, Watch
from producer.http.errors import ApiError, from_decode_error, invalid
from producer.http.handlers import Bridge, Reply
from producer.http.images import check_body_size, has_images
from producer.http.responses_background import Background
from producer.http.responses_input import input_param
from producer.http.responses_replay import LIVE
from producer.http.responses_storage import ResponseStore, StoredResponse, no_database
from producer.http.responses_stream import EventWriter
from schemas import names
from schemas.messages import FinalResult, StreamChunk
from schemas.openai_errors import not_found, require_found
from schemas.openai_objects import Deleted, ListPage
from schemas.payloads import ChatMessage

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(rt.ResponsesRequest)
_conversation = msgspec.json.Decoder(list[ChatMessage])
_items = msgspec.json.Decoder(list[dict[str, Any]])
_response = msgspec.json.Decoder(rt.Response)
_encoder = msgspec.json.Encoder()
MAX_LIST_LIMIT = 100


class Responses:
    def __init__(self, bridge: Bridge, store: ResponseStore | None) -> None:
        self.bridge = bridge
        self.store = store
        self.background = None if store is None else Background(bridge, store)

    def _store(self) -> ResponseStore:
        if self.store is None:
            raise no_database()
        return self.store

    async def _stored(self, tenant: str, response_id: str, param: str) -> StoredResponse:
        stored = await self._store().get(tenant, response_id)
        return require_found(stored, "response", response_id, param)

    async def create(
        self,
        read_body: Callable[[], Awaitable[bytes]],
        headers: Mapping[str, str],
        on_gone: Watch,
    ) -> Reply:
        bridge = self.bridge
        tenant = (await bridge.authenticate(headers)).tenant
        raw = await read_body()
        try:
            body = _decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise from_decode_error(exc) from None
        if body.store and self.store is None:
            raise no_database()
        store = self.store is not None and body.store is not False
        history: list[ChatMessage] = []
        if body.previous_response_id is not None:
            previous = await self._stored(tenant, body.previous_response_id, "previous_response_id")
            if _response.decode(previous.response).status in LIVE:
                await self._settle(tenant, previous)  # a background one that has finished
                previous = await self._stored(
                    tenant, body.previous_response_id, "previous_response_id"
                )
            history = _conversation.decode(previous.conversation)
        timeout_s = bridge.timeout_s(headers, rc.serving_tier(body.service_tier)[0])
        now_ms = int(time.time() * 1000)
        converted = rc.responses_request(
            body,
            history,
            stored=store,
            id=bridge.new_id(),
            tenant=tenant,
            created_ms=now_ms,
            deadline_ms=now_ms + int(timeout_s * 1000),
            idempotency_key=None,
        )
        check_body_size(len(raw), converted.request.payload.messages, bridge.config.max_body_bytes)
        asked = converted.request.model  # tenant limits count the name asked for
        routes = bridge.client.routes
        if routes is not None and routes.plan(asked) is not None:
            # A served name: the version by the user, the routing header or the conversation.
            sticky = body.user or headers.get(names.HTTP_ROUTE_KEY) or body.previous_response_id
            routed = bridge.client.route(converted.request, sticky)
            converted = msgspec.structs.replace(converted, request=routed)
        if has_images(converted.request.payload.messages):
            converted = await self._with_images(converted)
        request = converted.request
        base = rc.base_response(body, rc.ID_PREFIX + request.id, now_ms // 1000, stored=store)
        if body.background and (self.background is None or not base.store):
            raise invalid("A background response must be stored.", "store")
        max_tokens = request.parameters.max_tokens
        admission = bridge.admit_leased(tenant, asked, len(raw), max_tokens) or await bridge.admit(
            tenant, asked, len(raw), max_tokens
        )
        if body.background or request.stream:
            # Counted at admission (requests, estimated tokens); not held in flight here.
            admission.finish()
        if body.background:
            assert self.background is not None
            return await self.background.create(tenant, converted, base, stream=bool(body.stream))
        try:
            call = await bridge.calls.open(
                request, streaming=request.stream, timeout_s=timeout_s, watch=on_gone
            )
        except ClientGone:  # while its request waited for a slot: nothing was published
            admission.finish()
            return Reply(status=499)
        except BaseException:
            admission.finish()
            raise
        stop_watch = on_gone(call.client_gone)
        # As in `Bridge.post` (handlers.py), written out on purpose: the per-request path.
        try:
            first = await call.next()
        except ClientGone:
            stop_watch()
            call.abandon()
            admission.finish()
            return Reply(status=499)
        except BaseException as exc:
            stop_watch()
            await call.close()
            admission.finish()
            if isinstance(exc, ApiError):  # a worker's refusal names a chat field
                exc.param = input_param(exc.param, converted.origins)
            raise
        stop_watch()
        saver = _Saver(self.store if store else None, tenant, converted)
        if request.stream:
            stream = self._sse(call, first, EventWriter(base), saver)
            return Reply(stream=stream, headers=admission.headers)
        try:
            result = first if isinstance(first, FinalResult) else await call.result()
        except BaseException as exc:
            admission.finish()
            if isinstance(exc, ApiError):
                exc.param = input_param(exc.param, converted.origins)
            raise
        finally:
            await call.close()
        admission.finish(result.usage.total_tokens)
        final = rc.finished_response(base, result, int(time.time()))
        await saver.save(final)
        return Reply(body=_encoder.encode(final), raw_headers=admission.raw_headers)

    async def _with_images(self, converted: rc.Converted) -> rc.Converted:
        """`Bridge.with_images` for the `input_image` parts; errors name the `input` part."""
        try:
            request = await self.bridge.with_images(converted.request)
        except ApiError as exc:
            exc.param = input_param(exc.param, converted.origins)
            raise
        return msgspec.structs.replace(converted, request=request)

    async def _settle(self, tenant: str, stored: StoredResponse) -> bytes:
        if self.background is None:
            return stored.response
        return await self.background.settle(tenant, stored)

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

    async def retrieve(
        self, headers: Mapping[str, str], response_id: str, query: Mapping[str, str]
    ) -> Reply:
        """The stored response; with `stream=true`, a background response's events after
        `starting_after` (from its first), live until it ends."""
        tenant = (await self.bridge.authenticate(headers)).tenant
        stored = await self._stored(tenant, response_id, "response_id")
        if query.get("stream", "false").lower() != "true":
            return Reply(body=await self._settle(tenant, stored))
        raw = query.get("starting_after", "-1")
        try:
            starting_after = int(raw)
        except ValueError:
            starting_after = -2
        if starting_after < -1:
            raise invalid("starting_after must be a sequence number (0 or more).", "starting_after")
        if self.background is None or not _response.decode(stored.response).background:
            raise invalid("Only background responses can be streamed again.", "stream")
        return Reply(stream=self.background.stream(tenant, stored, starting_after))

    async def delete(self, headers: Mapping[str, str], response_id: str) -> bytes:
        tenant = (await self.bridge.authenticate(headers)).tenant
        if not await self._store().delete(tenant, response_id):
            raise not_found("response", response_id, "response_id")
        return _encoder.encode(Deleted(response_id, "response"))

    async def cancel(self, headers: Mapping[str, str], response_id: str) -> bytes:
        """A background response not finished ends `cancelled` (`responses_background`)."""
        tenant = (await self.bridge.authenticate(headers)).tenant
        stored = await self._stored(tenant, response_id, "response_id")
        if self.background is None or not _response.decode(stored.response).background:
            raise invalid("Only background responses can be cancelled.", "response_id")
        return await self.background.cancel(tenant, stored)

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
            ListPage(
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
