"""The bridge's routes: Litestar handlers around `handlers.Bridge`.

POST /v1/chat/completions, /v1/completions, /v1/embeddings   `serve` -> Bridge.post
GET  /v1/models                                              Bridge.model_list
GET  /healthz, /readyz, /metrics, /openapi.json
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request, Response, get, post
from litestar.response import Stream
from litestar.types import ASGIApp, ControllerRouterHandler, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from producer.http.body import read_body, wanted_headers
from producer.http.disconnect import DisconnectWatch
from producer.http.endpoints import CHAT, COMPLETION, EMBEDDING, Endpoint
from producer.http.errors import ApiError
from producer.http.handlers import Bridge
from producer.http.images import IMAGE_BODY_ALLOWANCE
from producer.http.metrics import BridgeMetrics
from producer.http.openapi import openapi_document
from producer.http.sse import HEADERS as SSE_HEADERS

JSON = "application/json"
_JSON_BYTES = JSON.encode()


class BridgeHolder:
    """The bridge, from lifespan startup (when NATS is connected) to shutdown."""

    bridge: Bridge | None = None

    def get(self) -> Bridge:
        bridge = self.bridge
        if bridge is None:
            raise ApiError(503, "The bridge is starting.", code="starting")
        return bridge


async def serve(
    request: Request[Any, Any, Any], endpoint: Endpoint, bridge: Bridge, max_body_bytes: int
) -> ASGIApp:
    """One POST to `endpoint`, served by `bridge`."""

    def watch(gone: Callable[[], None]) -> Callable[[], None]:
        return DisconnectWatch(request.receive, gone, bridge.calls.timers).stop

    async def body() -> bytes:
        # A chat body may carry images beyond the body limit (checked once parsed).
        return await read_body(request.receive, max_body_bytes, allowance)

    allowance = IMAGE_BODY_ALLOWANCE if endpoint is CHAT else 0

    headers = wanted_headers(request.scope["headers"])
    reply = await bridge.post(endpoint, body, headers, watch)
    if reply.stream is not None:
        headers = {**SSE_HEADERS, **reply.headers} if reply.headers else SSE_HEADERS
        stream = Stream(reply.stream, media_type="text/event-stream", headers=headers)
        return stream.to_asgi_response(None, request)
    return Sent(reply.status, reply.body, reply.headers, reply.raw_headers)


class Sent:
    """A complete JSON answer as its two ASGI events. Litestar's `Response` re-encodes and
    re-scans every header (with the six `x-ratelimit-*` headers of a limited tenant, more
    than the limits' own check costs): the answer's headers are encoded once, here, or come
    encoded (`encoded`: ASGI's (name, value) bytes pairs)."""

    __slots__ = ("_body", "_start")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str],
        encoded: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        raw = [(b"content-type", _JSON_BYTES), (b"content-length", b"%d" % len(body)), *encoded]
        for name, value in headers.items():
            raw.append((name.encode("latin-1"), value.encode("latin-1")))
        self._start = {"type": "http.response.start", "status": status, "headers": raw}
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._start)  # type: ignore[arg-type]
        await send(self._body)  # type: ignore[arg-type]


def openai_routes(holder: BridgeHolder, max_body_bytes: int) -> list[ControllerRouterHandler]:
    @post("/v1/chat/completions", status_code=200, summary="Create a chat completion")
    async def chat(request: Request[Any, Any, Any]) -> ASGIApp:
        return await serve(request, CHAT, holder.get(), max_body_bytes)

    @post("/v1/completions", status_code=200, summary="Create a (text) completion")
    async def completions(request: Request[Any, Any, Any]) -> ASGIApp:
        return await serve(request, COMPLETION, holder.get(), max_body_bytes)

    @post("/v1/embeddings", status_code=200, summary="Create embeddings")
    async def embeddings(request: Request[Any, Any, Any]) -> ASGIApp:
        return await serve(request, EMBEDDING, holder.get(), max_body_bytes)

    @get("/v1/models", summary="List the models that have a request stream")
    async def models(request: Request[Any, Any, Any]) -> Response[Any]:
        bridge = holder.get()
        await bridge.authenticate(request.headers)
        return Response(await bridge.model_list(), media_type=JSON)

    @get("/v1/limits", summary="The calling key's tenant: its limits and what is left")
    async def limits(request: Request[Any, Any, Any]) -> Response[Any]:
        bridge = holder.get()
        principal = await bridge.authenticate(request.headers)
        model = request.query_params.get("model") or "*"
        return Response(await bridge.limits_of(principal.tenant, model), media_type=JSON)

    return [chat, completions, embeddings, models, limits]


def service_routes(holder: BridgeHolder, metrics: BridgeMetrics) -> list[ControllerRouterHandler]:
    @get("/healthz", summary="The process is alive")
    async def healthz() -> Response[Any]:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @get("/readyz", summary="Connected to NATS (workers per model reported, not required)")
    async def readyz() -> Response[Any]:
        ready, body = await holder.get().readiness()
        return Response(body, status_code=200 if ready else 503, media_type=JSON)

    @get("/metrics", summary="Prometheus metrics")
    async def metrics_route() -> Response[Any]:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request[Any, Any, Any]) -> Response[Any]:
        return Response(openapi_document(request.app), media_type=JSON)

    return [healthz, readyz, metrics_route, openapi]
