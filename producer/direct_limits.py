"""Tenant limits on requests a tenant's own NATS user publishes straight to NATS.

    limits = await open_direct_limits(js, settings, database_url=url)  # None: nothing to do
    verdict = await limits.admit(tenant, model, prompt_bytes, max_tokens)
    if isinstance(verdict, Refused): reply ErrorResult(code=rate_limit_exceeded, ...)
    ... run it ...; verdict.finish(used_tokens)

Who counts what. The HTTP bridge counts what it admits (`limits.py`) and publishes it on the
service's own subjects (`jetserve.req.<model>.<priority>`, `jetserve.async.submit`). A
tenant's NATS user may publish only on its own tenant's subjects
(`jetserve.req.<model>.<priority>.<tenant>`, `jetserve.async.submit.<tenant>`: the account's
permissions, `k8s/nats/accounts.conf`), never on the service's. So a request on a tenant's
subject came straight from that tenant and was counted nowhere, and one on a service subject
came through a bridge (or the scheduler) and was counted there. The worker (online requests)
and the scheduler (async submissions) count exactly the former, against the same shared
buckets and slots as every bridge (`ratelimit_kv.py`, the same keys): HTTP and NATS together
stay within one limit, and nothing is counted twice. The subject tells them apart, not a
header: a tenant's client can set any header, but cannot publish on the service's subjects.

Cost: a request on a service subject costs nothing here (the caller looks at the subject
first); a tenant's with no limits costs a cache lookup (`CachedLimits`); a limited one admits
from this process's leases (`ratelimit.Limiter`, `inflight.InFlight`), a KV round trip only
when a lease runs out. Limits are read from PostgreSQL through a cache of `cache_ttl_s`; with
no database, every tenant has the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import JetStreamContext

from producer.inflight import InFlight
from producer.leases import Unreachable
from producer.limits import NO_LIMITS, Admission, CachedLimits, TenantGate, estimate_tokens
from producer.ratelimit import Limiter
from producer.ratelimit_kv import KvBuckets, KvSlots, open_ratelimit_bucket
from schemas.limits import LimitSettings, TenantLimits
from schemas.openai_errors import ApiError

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

#: How long a refusal asks the sender to wait when the limit gives no figure.
_DEFAULT_RETRY_MS = 1000


# A small frozen record after the module's logger and constant: alike in outline to
# scheduler/webhooks.py's RetryPolicy, nothing in common but the form.
@dataclass(frozen=True)
class Refused:
    """Over one of the tenant's limits: the reason, and when to send it again."""

    message: str
    retry_after_ms: int


class DirectLimits:
    """One process's gate for requests published straight to NATS."""

    def __init__(
        self,
        gate: TenantGate,
        in_flight: InFlight,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._gate = gate
        self._in_flight = in_flight
        self._on_close = on_close
        self._renewals = asyncio.create_task(in_flight.run_renewals())
        self._unreachable = Unreachable(log, "tenant limits")

    async def admit(
        self,
        tenant: str,
        model: str,
        prompt_bytes: int,
        max_tokens: int | None,
        *,
        hold: bool = True,
    ) -> Admission | Refused:
        """The request counted against `tenant`'s limits for `model`: its `Admission`
        (`finish` it when it ends; with `hold` False it is finished already: counted, not
        held in flight), or why it is refused."""
        tokens = estimate_tokens(prompt_bytes, max_tokens, self._gate.default_max_tokens)
        try:
            admission = await self._gate.admit(tenant, model, tokens)
        except ApiError as exc:
            retry_ms = exc.headers.get("retry-after-ms")
            return Refused(exc.message, int(retry_ms) if retry_ms else _DEFAULT_RETRY_MS)
        except Exception as exc:  # the limits cannot be read: admit (fail open), as bridges do
            self._unreachable.warn(tenant, exc)
            return NO_LIMITS
        if not hold:
            admission.finish()
        return admission

    async def close(self) -> None:
        self._renewals.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewals
        await self._in_flight.close()
        if self._on_close is not None:
            await self._on_close()


async def open_direct_limits(
    js: JetStreamContext,
    settings: LimitSettings,
    *,
    database_url: str | None = None,
    pool: asyncpg.Pool | None = None,
) -> DirectLimits | None:
    """The gate for tenants' direct requests, reading limits from `pool` (the caller's) or a
    small pool of its own on `database_url`; None when there is nothing to enforce (limits
    off, or no database and no defaults)."""
    if not settings.enabled or (
        database_url is None and pool is None and settings.defaults.unlimited
    ):
        return None
    on_close = None
    if database_url is None and pool is None:
        defaults = settings.defaults

        async def fixed(tenant: str, model: str) -> tuple[TenantLimits, str | None]:
            return defaults, None

        source = CachedLimits(fixed, 3600.0)
    else:
        from scheduler.store.limits import limits_for
        from scheduler.store.pool import create_pool

        if pool is None:
            assert database_url is not None
            # Small: one query per tenant and model per cache period at most.
            pool = await create_pool(database_url, min_size=0, max_size=2)
            on_close = pool.close
        rows = pool

        async def load(tenant: str, model: str) -> tuple[TenantLimits, str | None]:
            return await limits_for(rows, tenant, model, settings.defaults)

        source = CachedLimits(load, settings.cache_ttl_s)
    bucket = await open_ratelimit_bucket(js)
    in_flight = InFlight(KvSlots(bucket))
    gate = TenantGate(
        source,
        Limiter(KvBuckets(bucket)),
        in_flight,
        default_max_tokens=settings.default_max_tokens,
    )
    log.info("tenant limits enforced on tenants' own subjects")
    return DirectLimits(gate, in_flight, on_close)
