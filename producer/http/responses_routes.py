"""The Responses API's routes (Litestar handlers around `responses_api.Responses`), added to
the app by the composition root (`jetserve/bridge.py`), which brings the response store.

POST   /v1/responses                      create (JSON, or the event stream)
GET    /v1/responses/{id}                 retrieve (with ?stream=true&starting_after=N: the
                                          events of a background response, replayed)
DELETE /v1/responses/{id}                 delete
POST   /v1/responses/{id}/cancel          cancel
GET    /v1/responses/{id}/input_items     list this response's input items
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.response import Stream
from litestar.types import ASGIApp, ControllerRouterHandler

from producer.http.body import read_body, wanted_headers
from producer.http.disconnect import DisconnectWatch
from producer.http.errors import ApiError
from producer.http.handlers import Bridge
from producer.http.images import IMAGE_BODY_ALLOWANCE
from producer.http.responses_api import Responses
from producer.http.responses_storage import ResponseStore
from producer.http.routes import JSON, Sent
from producer.http.sse import HEADERS as SSE_HEADERS


class ResponsesRoutes:
    def __init__(self, store: ResponseStore | None, max_body_bytes: int) -> None:
        self._store = store
        self._max_body_bytes = max_body_bytes
        self._api: Responses | None = None

    async def on_startup(self, bridge: Bridge) -> None:
        self._api = Responses(bridge, self._store)

    def api(self) -> Responses:
        if self._api is None:
            raise ApiError(503, "The bridge is starting.", code="starting")
        return self._api

    def routes(self) -> list[ControllerRouterHandler]:
        limit = self._max_body_bytes

        @post("/v1/responses", status_code=200, summary="Create a model response")
        async def create(request: Request[Any, Any, Any]) -> ASGIApp:
            def watch(gone: Callable[[], None]) -> Callable[[], None]:
                return DisconnectWatch(request.receive, gone, self.api().bridge.calls.timers).stop

            async def body() -> bytes:
                # It may carry images beyond the body limit (checked once parsed).
                return await read_body(request.receive, limit, IMAGE_BODY_ALLOWANCE)

            headers = wanted_headers(request.scope["headers"])
            reply = await self.api().create(body, headers, watch)
            if reply.stream is not None:
                headers = {**SSE_HEADERS, **reply.headers}
                stream = Stream(reply.stream, media_type="text/event-stream", headers=headers)
                return stream.to_asgi_response(None, request)
            return Sent(reply.status, reply.body, reply.headers, reply.raw_headers)

        @get("/v1/responses/{response_id:str}", summary="Retrieve a stored response")
        async def retrieve(request: Request[Any, Any, Any], response_id: str) -> Response[Any]:
            query = {k: v for k, v in request.query_params.items()}
            reply = await self.api().retrieve(request.headers, response_id, query)
            if reply.stream is not None:
                return Stream(reply.stream, media_type="text/event-stream", headers=SSE_HEADERS)
            return Response(reply.body, media_type=JSON)

        @delete(
            "/v1/responses/{response_id:str}", status_code=200, summary="Delete a stored response"
        )
        async def remove(request: Request[Any, Any, Any], response_id: str) -> Response[Any]:
            return Response(await self.api().delete(request.headers, response_id), media_type=JSON)

        @post(
            "/v1/responses/{response_id:str}/cancel",
            status_code=200,
            summary="Cancel a background response",
        )
        async def cancel(request: Request[Any, Any, Any], response_id: str) -> Response[Any]:
            return Response(await self.api().cancel(request.headers, response_id), media_type=JSON)

        @get(
            "/v1/responses/{response_id:str}/input_items",
            summary="The input items of a stored response",
        )
        async def input_items(request: Request[Any, Any, Any], response_id: str) -> Response[Any]:
            query = {k: v for k, v in request.query_params.items()}
            body = await self.api().input_items(request.headers, response_id, query)
            return Response(body, media_type=JSON)

        return [create, retrieve, remove, cancel, input_items]
