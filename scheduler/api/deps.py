"""What the scheduler's HTTP routes need from the process that serves them, injected by the
composition root (`jetserve/bridge.py`): who the caller is, the database, the OpenAI
conversion, and a way to publish a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from scheduler.codec import Codec
from scheduler.store.files import MAX_FILE_BYTES, MAX_FILE_LINES, MAX_LINE_BYTES
from scheduler.store.limits import limits_for
from scheduler.store.pool import NOTIFY_CHANNEL
from schemas.limits import ALL_MODELS, UNLIMITED, TenantLimits
from schemas.messages import InferenceRequest
from schemas.openai_errors import invalid

JSON = "application/json"


@dataclass(frozen=True)
class Deps:
    #: The caller's tenant, from the request headers; raises ApiError(401).
    authenticate: Callable[[Mapping[str, str]], Awaitable[str]]
    #: The database pool; raises ApiError(503) when the process has no database.
    pool: Callable[[], Awaitable[asyncpg.Pool]]
    codec: Codec
    #: Publish a request (with its encoded body) to its model's stream, replies to the durable
    #: subject given; raises ApiError (404 unknown model, 429 backlog full, 503 unavailable).
    submit: Callable[[InferenceRequest, bytes, str], Awaitable[None]]
    #: The request body from an ASGI `receive`, 413 past the limit (the bridge's own reader).
    read_body: Callable[[Callable[[], Awaitable[Any]], int], Awaitable[bytes]]
    #: A request for its version when its model is a served name (the sticky key given, or
    #: None); the request itself otherwise.
    route: Callable[[InferenceRequest, str | None], InferenceRequest] = lambda r, _key: r
    allow_private_webhooks: bool = False
    max_body_bytes: int = 1024 * 1024
    max_file_bytes: int = MAX_FILE_BYTES
    max_file_lines: int = MAX_FILE_LINES
    max_line_bytes: int = MAX_LINE_BYTES
    #: Every tenant's limits where it has no row of its own; `enforce_limits` False: none.
    default_limits: TenantLimits = UNLIMITED
    enforce_limits: bool = True

    async def tenant_limits(self, pool: asyncpg.Pool, tenant: str) -> TenantLimits:
        """The tenant's limits for all its models (its batch queue limit), or none."""
        if not self.enforce_limits:
            return UNLIMITED
        return (await limits_for(pool, tenant, ALL_MODELS, self.default_limits))[0]


def query_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise invalid(f"limit must be an integer from 1 to {maximum}.", "limit")
    return value


async def notify_scheduler(pool: asyncpg.Pool) -> None:
    await pool.execute(f"NOTIFY {NOTIFY_CHANNEL}")
