"""`jetserve bridge`: the HTTP bridge process. Composes the app (producer/http) with the
API-key store (scheduler/store), which `producer` must not import itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from producer.http.auth import Authenticator, CachedAuthenticator, OpenAuth, Principal
from producer.http.config import AuthMode, BridgeConfig

log = logging.getLogger("jetserve.bridge")


class KeyStoreAuth:
    """Keys looked up in Postgres (a pool opened lazily, on the serving loop)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def lookup(self, secret: str) -> Principal | None:
        from scheduler.store.keys import KEY_PREFIX, lookup_key
        from scheduler.store.pool import create_pool

        if not secret.startswith(KEY_PREFIX):
            return None
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await create_pool(self._dsn, min_size=1, max_size=4)
        key = await lookup_key(self._pool, secret)
        return None if key is None else Principal(key.tenant, key.id)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def build_authenticator(config: BridgeConfig) -> tuple[Authenticator, KeyStoreAuth | None]:
    if config.auth is AuthMode.OFF:
        return OpenAuth(), None
    assert config.database_url is not None  # BridgeConfig.from_env checks it
    store = KeyStoreAuth(config.database_url)
    return CachedAuthenticator(store.lookup, config.key_cache_ttl_s), store


async def serve(config: BridgeConfig) -> int:
    import uvicorn

    from producer.http.app import create_app

    if config.database_url is not None and config.auth is AuthMode.REQUIRED:
        from scheduler.store.migrate import migrate_dsn

        applied = await migrate_dsn(config.database_url)
        if applied:
            log.info("applied database migrations %s", applied)
    authenticator, store = build_authenticator(config)
    app = create_app(config, authenticator)
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
            timeout_graceful_shutdown=10,
        )
    )
    try:
        await server.serve()
    finally:
        if store is not None:
            await store.close()
    return 0 if server.started else 1


def main(env: Mapping[str, str]) -> int:
    import uvloop

    config = BridgeConfig.from_env(env)
    log.info("bridge on http://%s:%d (auth %s)", config.host, config.port, config.auth.value)
    return uvloop.run(serve(config))
