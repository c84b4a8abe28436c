"""`jetserve bridge`: the HTTP bridge process. Composes the app (producer/http) with the
Postgres store and the batch API (scheduler/), which `producer` must not import itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from jetserve.heap import settle
from producer.client import Client
from producer.http.auth import (
    Authenticator,
    CachedAuthenticator,
    OpenAuth,
    Principal,
    require_principal,
)
from producer.http.config import AuthMode, BridgeConfig
from producer.http.handlers import Bridge
from producer.limits import LimitsSource
from schemas import names
from schemas.messages import InferenceRequest
from schemas.openai_errors import ApiError

log = logging.getLogger("jetserve.bridge")


class LazyPool:
    """One asyncpg pool, opened on first use, on the serving loop."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        from scheduler.store.pool import create_pool

        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(self._dsn, min_size=1, max_size=8)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


class KeyStoreAuth:
    """Keys looked up in Postgres."""

    def __init__(self, pools: LazyPool) -> None:
        self._pools = pools

    async def lookup(self, secret: str) -> Principal | None:
        from scheduler.store.keys import KEY_PREFIX, lookup_key

        if not secret.startswith(KEY_PREFIX):
            return None
        key = await lookup_key(await self._pools.get(), secret)
        return None if key is None else Principal(key.tenant, key.id)


def build_limits(config: BridgeConfig, pools: LazyPool | None) -> LimitsSource | None:
    """Where tenant limits come from: the `tenant_limits` table (read through a cache), else
    the defaults alone; None when none are enforced."""
    from producer.limits import CachedLimits
    from schemas.limits import TenantLimits

    if not config.limits:
        return None
    defaults = config.default_limits
    if pools is None:
        if defaults.unlimited:
            return None

        async def fixed(tenant: str, model: str) -> tuple[TenantLimits, str | None]:
            return defaults, None

        return CachedLimits(fixed, 3600.0)
    lazy = pools

    async def load(tenant: str, model: str) -> tuple[TenantLimits, str | None]:
        from scheduler.store.limits import limits_for

        return await limits_for(await lazy.get(), tenant, model, defaults)

    return CachedLimits(load, config.limits_cache_ttl_s)


def database_unavailable_errors() -> tuple[type[Exception], ...]:
    """What asyncpg raises while PostgreSQL is down, restarting or unreachable: the bridge
    answers these 503 (retry later), not 500."""
    import asyncpg

    return (
        OSError,  # refused, reset, unreachable (ConnectionError, TimeoutError are OSErrors)
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.InterfaceError,
    )


def build_authenticator(config: BridgeConfig, pools: LazyPool | None) -> Authenticator:
    if config.auth is AuthMode.OFF:
        return OpenAuth()
    assert pools is not None  # BridgeConfig.from_env checks that a database is configured
    return CachedAuthenticator(KeyStoreAuth(pools).lookup, config.key_cache_ttl_s)


class BatchApi:
    """What the batch routes (scheduler/api) need, made of the bridge's parts."""

    def __init__(
        self,
        config: BridgeConfig,
        authenticator: Authenticator,
        pools: LazyPool | None,
        allow_private_webhooks: bool,
        file_limits: tuple[int, int] | None = None,
    ) -> None:
        self.config = config
        #: (bytes, lines) an uploaded file may have; None: OpenAI's (200 MB, 50,000).
        self.file_limits = file_limits
        self.authenticator = authenticator
        self.pools = pools
        self.allow_private_webhooks = allow_private_webhooks
        self.client: Client | None = None
        self.bridge: Bridge | None = None

    async def on_startup(self, bridge: Bridge) -> None:
        self.client = bridge.client
        self.bridge = bridge

    async def authenticate(self, headers: Mapping[str, str]) -> str:
        return (
            await require_principal(self.authenticator, headers.get(names.HTTP_AUTHORIZATION))
        ).tenant

    async def pool(self) -> Any:
        if self.pools is None:
            raise ApiError(
                503,
                "Files, batches and async requests need a database (JETSERVE_DATABASE_URL).",
                code="no_database",
            )
        return await self.pools.get()

    def route(self, request: InferenceRequest, sticky: str | None) -> InferenceRequest:
        return request if self.client is None else self.client.route(request, sticky)

    async def submit(self, request: InferenceRequest, data: bytes, reply_to: str) -> None:
        from producer.errors import JetserveError
        from producer.http.errors import from_producer_error

        if self.client is None or self.bridge is None:
            raise ApiError(503, "The bridge is starting.", code="starting")
        # Tenant limits (429 when over): requests and estimated tokens are counted at
        # submission; an async request is not in flight on this bridge once it is queued.
        admission = await self.bridge.admit(
            request.tenant, request.model, len(data), request.parameters.max_tokens
        )
        admission.finish()
        try:
            await self.client.submit(request, reply_to=reply_to)
        except JetserveError as exc:
            raise from_producer_error(exc, request.model, self.config.retry_after_s) from None

    def routes(self) -> list[Any]:
        from jetserve.openai_codec import OpenAICodec
        from producer.http.body import read_body
        from scheduler.api import routes
        from scheduler.api.deps import Deps

        deps = Deps(
            authenticate=self.authenticate,
            pool=self.pool,
            codec=OpenAICodec(),
            submit=self.submit,
            read_body=read_body,
            route=self.route,
            allow_private_webhooks=self.allow_private_webhooks,
            max_body_bytes=self.config.max_body_bytes,
            default_limits=self.config.default_limits,
            enforce_limits=self.config.limits,
        )
        if self.file_limits is not None:
            deps = dataclasses.replace(
                deps, max_file_bytes=self.file_limits[0], max_file_lines=self.file_limits[1]
            )
        return routes(deps)


async def serve(
    config: BridgeConfig,
    *,
    allow_private_webhooks: bool = False,
    file_limits: tuple[int, int] | None = None,
    responses_keep_s: float = 30 * 86400.0,
) -> int:
    import uvicorn

    from jetserve.image_fetch import image_fetcher
    from jetserve.image_files import image_file_reader
    from jetserve.responses_store import PgResponseStore
    from producer.http.app import create_app
    from producer.http.responses_routes import ResponsesRoutes

    pools = None
    if config.database_url is not None:
        from scheduler.store.migrate import migrate_dsn

        applied = await migrate_dsn(config.database_url)
        if applied:
            log.info("applied database migrations %s", applied)
        pools = LazyPool(config.database_url)
    authenticator = build_authenticator(config, pools)
    batch = BatchApi(config, authenticator, pools, allow_private_webhooks, file_limits)
    store = None if pools is None else PgResponseStore(pools, responses_keep_s)
    responses = ResponsesRoutes(store, config.max_body_bytes)
    routes = batch.routes() + responses.routes()
    bench = None
    if config.echo_route:  # the HTTP benchmark's routes (loadtest/http_bridge.py)
        from producer.http.bench import BenchRoutes

        bench = BenchRoutes(config.max_body_bytes)
        routes += bench.routes()

    async def on_startup(bridge: Bridge) -> None:
        bridge.image_fetch = image_fetcher(
            allow_private=config.images_allow_private, timeout_s=config.image_fetch_timeout_s
        )
        if pools is not None:
            bridge.image_files = image_file_reader(pools.get)
        await batch.on_startup(bridge)
        await responses.on_startup(bridge)
        if bench is not None:
            await bench.on_startup(bridge)
        settle()  # the app and its clients are built: what follows is per request

    app = create_app(
        config,
        authenticator,
        on_startup=on_startup,
        routes=routes,
        unavailable=database_unavailable_errors() if pools is not None else (),
        limits=build_limits(config, pools),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="none",  # already on uvloop (main)
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=config.graceful_shutdown_s,
        )
    )
    try:
        await server.serve()
    finally:
        if pools is not None:
            await pools.close()
    return 0 if server.started else 1


def main(env: Mapping[str, str]) -> int:
    import uvloop

    from jetserve.responses_store import DEFAULT_KEEP_S, KEEP_S_SETTING
    from scheduler.config import WEBHOOKS_ALLOW_PRIVATE
    from scheduler.store.files import MAX_FILE_BYTES, MAX_FILE_LINES
    from schemas.settings import get_bool, get_float, get_int

    config = BridgeConfig.from_env(env)
    allow_private = get_bool(env, WEBHOOKS_ALLOW_PRIVATE, False)
    limits = (
        get_int(env, "JETSERVE_FILES_MAX_BYTES", MAX_FILE_BYTES, minimum=1),
        get_int(env, "JETSERVE_FILES_MAX_LINES", MAX_FILE_LINES, minimum=1),
    )
    log.info("bridge on http://%s:%d (auth %s)", config.host, config.port, config.auth.value)
    keep_s = get_float(env, KEEP_S_SETTING, DEFAULT_KEEP_S, minimum=1.0)
    return uvloop.run(
        serve(
            config,
            allow_private_webhooks=allow_private,
            file_limits=limits,
            responses_keep_s=keep_s,
        )
    )
