"""The ASGI app: Litestar routes around `handlers.Bridge`, metrics, OpenAPI.

    app = create_app(config, authenticator)      # nothing connects until lifespan startup
    uvicorn.run(app, loop="uvloop", http="httptools")

Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models (these
four need a key unless auth is off); GET /healthz, /readyz, /metrics, /openapi.json; and the
`routes` the composition root adds (the batch API), which raise the same `ApiError`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.response import Stream
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from producer.client import Client
from producer.http import openai_types as oa
from producer.http.auth import Authenticator
from producer.http.bench import EchoDispatcher
from producer.http.body import read_body, wanted_headers
from producer.http.config import BridgeConfig
from producer.http.disconnect import DisconnectWatch
from producer.http.dispatch import Call, Dispatcher
from producer.http.endpoints import CHAT, COMPLETION, EMBEDDING, Endpoint
from producer.http.errors import ApiError, ErrorEnvelope
from producer.http.handlers import Bridge
from producer.http.idempotency import Idempotency, open_bucket
from producer.http.metrics import ROUTES, BridgeMetrics
from producer.http.presence import Presence
from producer.http.sse import HEADERS as SSE_HEADERS

log = logging.getLogger(__name__)
JSON = "application/json"

#: (path, request struct, response struct) documented in /openapi.json.
_DOCUMENTED = (
    ("/v1/chat/completions", oa.ChatCompletionRequest, oa.ChatCompletion),
    ("/v1/completions", oa.CompletionRequest, oa.Completion),
    ("/v1/embeddings", oa.EmbeddingRequest, oa.EmbeddingList),
    ("/v1/models", None, oa.ModelList),
)


class _Holder:
    bridge: Bridge | None = None
    #: The same, answering in-process (`/bench/chat`), when the bench routes are on.
    bench: Bridge | None = None

    def get(self, bench: bool = False) -> Bridge:
        bridge = self.bench if bench else self.bridge
        if bridge is None:
            raise ApiError(503, "The bridge is starting.", code="starting")
        return bridge


def create_app(
    config: BridgeConfig,
    authenticator: Authenticator,
    *,
    metrics: BridgeMetrics | None = None,
    on_startup: Callable[[Client], Awaitable[None]] | None = None,
    routes: Sequence[ControllerRouterHandler] = (),
    unavailable: Sequence[type[Exception]] = (),
) -> ASGIApp:
    """`on_startup(client)` runs once connected (the NATS client the routes publish with);
    `routes` are served beside the OpenAI routes, with the same errors and metrics.
    `unavailable`: exceptions that mean a backing service is down (e.g. the database's
    connection errors), answered 503 `service_unavailable` with `Retry-After`, not 500."""
    metrics = metrics or BridgeMetrics()
    holder = _Holder()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = await Client.connect(config.nats_url, name="jetserve-bridge")
        presence = Presence(client.nc, ttl_s=min(1.0, config.no_worker_timeout_s))
        dispatcher = Dispatcher(
            client,
            presence,
            metrics,
            no_worker_timeout_s=config.no_worker_timeout_s,
            retry_after_s=config.retry_after_s,
        )
        kv = await open_bucket(client.js, config.duplicate_window_s)
        idempotency = Idempotency(dispatcher, kv)
        holder.bridge = Bridge(config, authenticator, dispatcher, idempotency)
        if config.echo_route:
            local = EchoDispatcher(
                client,
                presence,
                metrics,
                no_worker_timeout_s=config.no_worker_timeout_s,
                retry_after_s=config.retry_after_s,
            )
            holder.bench = Bridge(config, authenticator, local, idempotency)
        if on_startup is not None:
            await on_startup(client)
        log.info("bridge connected to NATS, auth %s", config.auth.value)
        try:
            yield
        finally:
            holder.bridge = holder.bench = None
            await dispatcher.close()
            await client.close()

    async def serve(
        request: Request[Any, Any, Any], endpoint: Endpoint, bench: bool = False
    ) -> Response[Any]:
        def watch(call: Call) -> Callable[[], None]:
            return DisconnectWatch(request.receive, call.client_gone, call.timers).stop

        async def body() -> bytes:
            return await read_body(request.receive, config.max_body_bytes)

        headers = wanted_headers(request.scope["headers"])
        reply = await holder.get(bench).post(endpoint, body, headers, watch)
        if reply.stream is not None:
            return Stream(reply.stream, media_type="text/event-stream", headers=SSE_HEADERS)
        return Response(
            reply.body, status_code=reply.status, media_type=JSON, headers=reply.headers
        )

    @post("/v1/chat/completions", status_code=200, summary="Create a chat completion")
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        return await serve(request, CHAT)

    @post("/v1/completions", status_code=200, summary="Create a (text) completion")
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await serve(request, COMPLETION)

    @post("/v1/embeddings", status_code=200, summary="Create embeddings")
    async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
        return await serve(request, EMBEDDING)

    @get("/v1/models", summary="List the models that have a request stream")
    async def models(request: Request[Any, Any, Any]) -> Response[Any]:
        bridge = holder.get()
        await bridge.authenticate(request.headers)
        return Response(await bridge.model_list(), media_type=JSON)

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
        return Response(_openapi_document(request.app), media_type=JSON)

    @post("/bench/echo", status_code=200, include_in_schema=False)
    async def echo(request: Request[Any, Any, Any]) -> Response[Any]:
        """The benchmark's trivial endpoint: the same route shape, body reading and response
        as the POST routes above, without NATS."""
        wanted_headers(request.scope["headers"])
        body = await read_body(request.receive, config.max_body_bytes)
        return Response(body, media_type=JSON)

    @post("/bench/chat", status_code=200, include_in_schema=False)
    async def bench_chat(request: Request[Any, Any, Any]) -> Response[Any]:
        """The benchmark's middle endpoint: `/v1/chat/completions` answered in-process as the
        echo model would, without NATS (`producer.http.bench`)."""
        return await serve(request, CHAT, bench=True)

    handlers: list[ControllerRouterHandler] = [
        chat,
        completions,
        embeddings,
        models,
        healthz,
        readyz,
        metrics_route,
        openapi,
        *routes,
    ]
    if config.echo_route:
        handlers += [echo, bench_chat]
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            **{cls: _unavailable(config.retry_after_s) for cls in unavailable},
            Exception: _internal_error,
        },
        request_max_body_size=config.max_body_bytes,
        openapi_config=OpenAPIConfig(title="jetserve", version="1", path="/docs"),
        logging_config=None,
    )
    return MetricsMiddleware(app, metrics)


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return Response(exc.body(), status_code=exc.status, media_type=JSON, headers=exc.headers)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Framework-level refusals (413 while reading the body, unknown route, wrong method)."""
    status = exc.status_code
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        error = ApiError(
            413, f"The request body is larger than {limit} bytes.", code="request_too_large"
        )
    elif status == 404:
        error = ApiError(
            404, f"Unknown URL: {request.method} {request.url.path}", code="unknown_url"
        )
    elif status == 405:
        error = ApiError(
            405, f"Method {request.method} not allowed here.", code="method_not_allowed"
        )
    else:
        error = ApiError(status, str(exc.detail), code=None)
    return _api_error(request, error)


def _unavailable(
    retry_after_s: int,
) -> Callable[[Request[Any, Any, Any], Exception], Response[Any]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.warning(
            "%s %s: a backing service is unavailable: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        error = ApiError(
            503,
            "A backing service is unavailable; retry later.",
            code="service_unavailable",
            headers={"Retry-After": str(retry_after_s)},
        )
        return _api_error(request, error)

    return handle


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    error = ApiError(500, "Internal server error.", code="internal_error")
    return _api_error(request, error)


def _openapi_document(app: Litestar) -> bytes:
    """Litestar's document, with request/response schemas of the raw-body routes filled in
    from the msgspec structs they are decoded with."""
    doc = app.openapi_schema.to_schema()
    structs = [t for _, req, resp in _DOCUMENTED for t in (req, resp) if t is not None]
    (_, components) = msgspec.json.schema_components(
        [*structs, ErrorEnvelope], ref_template="#/components/schemas/{name}"
    )
    doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
    error = {
        "description": "An error in OpenAI's shape",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }
    for path, req, resp in _DOCUMENTED:
        method = "get" if req is None else "post"
        op = doc["paths"][path][method]
        if req is not None:
            ref = {"$ref": f"#/components/schemas/{req.__name__}"}
            op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref}}}
        ok = {"$ref": f"#/components/schemas/{resp.__name__}"}
        content: dict[str, Any] = {JSON: {"schema": ok}}
        if req is not None and path != "/v1/embeddings":
            content["text/event-stream"] = {"schema": {"type": "string"}}
        op["responses"] = {"200": {"description": "OK", "content": content}, "default": error}
        op["security"] = [{"bearer": []}]
    doc["components"].setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
    }
    return msgspec.json.encode(doc)


class MetricsMiddleware:
    """Counts and times every HTTP request; label children bound once (hot path)."""

    def __init__(self, app: ASGIApp, metrics: BridgeMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._latency = {r: metrics.latency.labels(r) for r in (*ROUTES, "other")}
        self._in_flight = {r: metrics.in_flight.labels(r) for r in (*ROUTES, "other")}
        self._count: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self._latency else "other"
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        gauge = self._in_flight[route]
        gauge.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            gauge.dec()
            self._latency[route].observe(time.perf_counter() - start)
            counter = self._count.get((route, status))
            if counter is None:
                counter = self._count[(route, status)] = self.metrics.requests.labels(
                    route, str(status)
                )
            counter.inc()
