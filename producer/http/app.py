"""The ASGI app: the bridge's routes, its lifespan (NATS connected at startup), errors in
OpenAI's shape, metrics, OpenAPI.

    app = create_app(config, authenticator)      # nothing connects until lifespan startup
    uvicorn.run(app, loop="uvloop", http="httptools")

Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models (these
four need a key unless auth is off); GET /healthz, /readyz, /metrics, /openapi.json; and the
`routes` the composition root adds (the batch API; the benchmark's), which raise the same
`ApiError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, ControllerRouterHandler

from natsio.routes import RouteMetrics
from producer.capacity import ModelCapacity
from producer.client import Client
from producer.http.auth import Authenticator
from producer.http.calls import Calls
from producer.http.config import BridgeConfig
from producer.http.error_responses import exception_handlers
from producer.http.handlers import Bridge
from producer.http.idempotency import Idempotency, open_bucket
from producer.http.kserve_routes import kserve_routes
from producer.http.metrics import BridgeMetrics
from producer.http.middleware import MetricsMiddleware
from producer.http.presence import Presence
from producer.http.routes import BridgeHolder, openai_routes, service_routes
from producer.inflight import InFlight
from producer.limits import LimitsSource, TenantGate
from producer.online_share import OnlineShare
from producer.ratelimit import Limiter
from producer.ratelimit_kv import KvBuckets, KvSlots, open_ratelimit_bucket

log = logging.getLogger(__name__)


def create_app(
    config: BridgeConfig,
    authenticator: Authenticator,
    *,
    metrics: BridgeMetrics | None = None,
    on_startup: Callable[[Bridge], Awaitable[None]] | None = None,
    routes: Sequence[ControllerRouterHandler] = (),
    unavailable: Sequence[type[Exception]] = (),
    limits: LimitsSource | None = None,
) -> ASGIApp:
    """`on_startup(bridge)` runs once connected (its `client` is the NATS client the routes
    publish with); `routes` are served beside the OpenAI routes, with the same errors and
    metrics; `unavailable`: see `error_responses.exception_handlers`; `limits`: the tenants'
    limits to enforce (None: none)."""
    metrics = metrics or BridgeMetrics()
    holder = BridgeHolder()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with connected(config, authenticator, metrics, limits) as bridge:
            holder.bridge = bridge
            if on_startup is not None:
                await on_startup(bridge)
            log.info("bridge connected to NATS, auth %s", config.auth.value)
            try:
                yield
            finally:
                holder.bridge = None

    app = Litestar(
        route_handlers=[
            *openai_routes(holder, config.max_body_bytes),
            *service_routes(holder, metrics),
            *kserve_routes(holder, config.max_body_bytes),
            *routes,
        ],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(config.retry_after_s, unavailable),  # type: ignore[arg-type]
        request_max_body_size=config.max_body_bytes,
        openapi_config=OpenAPIConfig(title="jetserve", version="1", path="/docs"),
        logging_config=None,
    )
    return MetricsMiddleware(app, metrics)


@contextlib.asynccontextmanager
async def connected(
    config: BridgeConfig,
    authenticator: Authenticator,
    metrics: BridgeMetrics,
    limits: LimitsSource | None = None,
) -> AsyncIterator[Bridge]:
    """The bridge and its parts, connected to NATS; closed on exit."""
    client = await Client.connect(
        config.nats_url, name="jetserve-bridge", route_metrics=RouteMetrics(metrics.registry)
    )
    presence = Presence(client.nc, ttl_s=min(1.0, config.no_worker_timeout_s))
    capacity = ModelCapacity(client.nc)
    share = OnlineShare(capacity.window) if config.online_fair_share else None
    if share is not None:
        metrics.watch_windows(share.models)
    calls = Calls(
        client,
        presence,
        metrics,
        no_worker_timeout_s=config.no_worker_timeout_s,
        retry_after_s=config.retry_after_s,
        share=share,
    )
    in_flight: InFlight | None = None
    renewals: asyncio.Task[None] | None = None
    kv = await open_bucket(client.js, config.duplicate_window_s)
    try:
        idempotency = Idempotency(calls, kv, client.js)
        gate = None
        if limits is not None:
            bucket = await open_ratelimit_bucket(client.js)
            in_flight = InFlight(KvSlots(bucket))
            renewals = asyncio.get_running_loop().create_task(in_flight.run_renewals())
            gate = TenantGate(
                limits,
                Limiter(KvBuckets(bucket)),
                in_flight,
                default_max_tokens=config.limits_default_max_tokens,
                on_decision=metrics.tenant_decision,
            )
        yield Bridge(config, authenticator, client, calls, idempotency, gate)
    finally:
        if renewals is not None:
            renewals.cancel()
        if in_flight is not None:
            await in_flight.close()
        await calls.close()
        await capacity.close()
        await client.close()
