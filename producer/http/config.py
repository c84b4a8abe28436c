"""Bridge settings: one `BridgeConfig` per process, built from an injected environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from schemas import settings
from schemas.limits import UNLIMITED, TenantLimits, default_limits
from schemas.settings import (
    DEFAULT_DUPLICATE_WINDOW_S,
    DEFAULT_NATS_URL,
    ConfigError,
    get_bool,
    get_float,
    get_int,
    get_str,
)


class AuthMode(StrEnum):
    #: Every /v1 request needs `Authorization: Bearer <key>` (keys in Postgres).
    REQUIRED = "required"
    #: No keys: every request runs as tenant `default` (local use only).
    OFF = "off"


@dataclass(frozen=True)
class BridgeConfig:
    nats_url: str = DEFAULT_NATS_URL
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    auth: AuthMode = AuthMode.REQUIRED
    #: A request's deadline when the client names none, and the most it may ask for with
    #: the `X-Jetserve-Timeout-S` header.
    timeout_s: float = 600.0
    #: The same for `service_tier: flex` (it waits for capacity online work leaves free).
    flex_timeout_s: float = 1800.0
    #: A request no worker has answered within this time, for a model no worker answers a
    #: ping for, is cancelled with 503.
    no_worker_timeout_s: float = 10.0
    #: Larger bodies are refused with 413 while they are being read.
    max_body_bytes: int = 1024 * 1024
    #: Verified keys (and unknown ones) are remembered this long: a revoked key stops
    #: working within it.
    key_cache_ttl_s: float = 10.0
    #: `Retry-After` sent with 429.
    retry_after_s: int = 1
    #: How long idempotent results are kept; the streams' JetStream duplicate window.
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    #: On SIGTERM: how long open requests (SSE streams included) may take to finish.
    graceful_shutdown_s: int = 10
    #: Serve the benchmark's `POST /bench/echo` (returns its body: the trivial endpoint) and
    #: `POST /bench/chat` (the chat endpoint answered in-process, without NATS).
    echo_route: bool = False
    #: Enforce tenant limits (rows set with `jetserve tenants set-limits`, else the defaults).
    limits: bool = True
    #: Every tenant's limits where it has no row of its own (all None: no limit).
    default_limits: TenantLimits = UNLIMITED
    #: A request's output tokens counted at admission when it names no `max_tokens`.
    limits_default_max_tokens: int = 1024
    #: Limit rows are read through a cache this long: a change applies within it.
    limits_cache_ttl_s: float = 5.0
    #: Share a saturated model's online slots fairly between tenants (`OnlineShare`).
    online_fair_share: bool = True
    #: Fetch http(s) image URLs of chat requests (`jetserve/image_fetch.py`): private
    #: addresses refused unless allowed; one deadline bounds each fetch.
    images_allow_private: bool = False
    image_fetch_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BridgeConfig:
        raw_auth = get_str(env, "JETSERVE_AUTH", AuthMode.REQUIRED.value).lower()
        try:
            auth = AuthMode(raw_auth)
        except ValueError:
            raise ConfigError(f"JETSERVE_AUTH={raw_auth!r} is not 'required' or 'off'") from None
        database_url: str | None
        if auth is AuthMode.REQUIRED:
            database_url = settings.required_database_url(
                env,
                "JETSERVE_AUTH=required keeps API keys there; "
                "set JETSERVE_AUTH=off for local use without keys",
            )
        else:
            database_url = settings.database_url(env)
        return cls(
            nats_url=settings.nats_url(env),
            database_url=database_url,
            host=get_str(env, "JETSERVE_HTTP_HOST", "127.0.0.1"),
            port=get_int(env, "JETSERVE_HTTP_PORT", 8000, minimum=0),
            auth=auth,
            timeout_s=get_float(env, "JETSERVE_HTTP_TIMEOUT_S", 600.0, minimum=0.1),
            flex_timeout_s=get_float(env, "JETSERVE_HTTP_FLEX_TIMEOUT_S", 1800.0, minimum=0.1),
            no_worker_timeout_s=get_float(env, "JETSERVE_NO_WORKER_TIMEOUT_S", 10.0, minimum=0.1),
            max_body_bytes=get_int(env, "JETSERVE_HTTP_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            key_cache_ttl_s=get_float(env, "JETSERVE_KEY_CACHE_TTL_S", 10.0, minimum=0.0),
            retry_after_s=get_int(env, "JETSERVE_RETRY_AFTER_S", 1, minimum=0),
            duplicate_window_s=settings.duplicate_window_s(env),
            graceful_shutdown_s=get_int(env, "JETSERVE_HTTP_GRACEFUL_SHUTDOWN_S", 10, minimum=0),
            echo_route=get_bool(env, "JETSERVE_HTTP_ECHO_ROUTE", False),
            limits=get_bool(env, "JETSERVE_LIMITS", True),
            default_limits=default_limits(env),
            limits_default_max_tokens=get_int(
                env, "JETSERVE_LIMITS_DEFAULT_MAX_TOKENS", 1024, minimum=1
            ),
            limits_cache_ttl_s=get_float(env, "JETSERVE_LIMITS_CACHE_TTL_S", 5.0, minimum=0.0),
            online_fair_share=get_bool(env, "JETSERVE_ONLINE_FAIR_SHARE", True),
            images_allow_private=get_bool(env, "JETSERVE_IMAGES_ALLOW_PRIVATE", False),
            image_fetch_timeout_s=get_float(
                env, "JETSERVE_IMAGE_FETCH_TIMEOUT_S", 10.0, minimum=0.1
            ),
        )
