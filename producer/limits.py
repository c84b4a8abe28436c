"""Admitting a tenant's request under its limits (`schemas/limits.py`), as OpenAI does.

    admission = await gate.admit(tenant, model, estimated_tokens)   # or 429 (ApiError)
    ... run it ...
    admission.finish(used_tokens)                                    # settle and release

Requests and tokens per minute are token buckets shared by every bridge replica
(`ratelimit.py`); a request's tokens are estimated at admission (prompt bytes / 4 plus
`max_tokens`, or `default_max_tokens` when it names none) and settled with its real usage.
Requests in flight are slots shared by every bridge replica too (`inflight.py`: each replica
admits from a lease of slots), so a tenant's `max_in_flight` holds across replicas. Every
answer carries OpenAI's `x-ratelimit-*` headers (`Admission.headers`); a refusal is a 429
`rate_limit_exceeded` with `Retry-After` and `retry-after-ms`, which the `openai` SDK's
retries honour.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from producer.inflight import InFlight
from producer.ratelimit import Limiter, Rate, TooLarge, Verdict
from schemas.limits import UNLIMITED, TenantLimits
from schemas.names import ratelimit_key
from schemas.openai_errors import ApiError

REQUESTS, TOKENS, IN_FLIGHT = "requests", "tokens", "in_flight"


class LimitsSource(Protocol):
    async def limits(self, tenant: str, model: str) -> tuple[TenantLimits, str | None]:
        """The tenant's limits for `model` and their scope: `model` for a row of that
        model, None for a row (or the defaults) that covers all its models."""
        ...


class CachedLimits:
    """A `LimitsSource` read through a cache of `ttl_s`: a change reaches every bridge within
    it."""

    def __init__(
        self,
        load: Callable[[str, str], Awaitable[tuple[TenantLimits, str | None]]],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, tuple[TenantLimits, str | None]]] = {}

    async def limits(self, tenant: str, model: str) -> tuple[TenantLimits, str | None]:
        now = self._clock()
        hit = self._cache.get((tenant, model))
        if hit is not None and hit[0] > now:
            return hit[1]
        found = await self._load(tenant, model)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(tenant, model)] = (now + self._ttl_s, found)
        return found


def estimate_tokens(prompt_bytes: int, max_tokens: int | None, default_max_tokens: int) -> int:
    return prompt_bytes // 4 + (max_tokens if max_tokens is not None else default_max_tokens)


def duration(seconds: float) -> str:
    """OpenAI's reset format: `17ms`, `1.2s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass
class Admission:
    """One admitted request: its headers, and `finish` to settle and release it."""

    headers: dict[str, str] = field(default_factory=dict)
    _gate: TenantGate | None = None
    _slot_key: str | None = None
    _token_key: str | None = None
    _estimate: int = 0
    _finished: bool = False

    def finish(self, used_tokens: int | None = None) -> None:
        """Settle the estimate with `used_tokens` (None: keep the estimate) and release the
        in-flight slot. Idempotent."""
        if self._finished or self._gate is None:
            return
        self._finished = True
        self._gate._finish(self, used_tokens)


NO_LIMITS = Admission()


class TenantGate:
    def __init__(
        self,
        source: LimitsSource,
        limiter: Limiter,
        in_flight: InFlight,
        *,
        default_max_tokens: int = 1024,
        on_decision: Callable[[str, bool, int], None] | None = None,
    ) -> None:
        self._source = source
        self._limiter = limiter
        self._slots = in_flight
        self.default_max_tokens = default_max_tokens
        self._rates: dict[int, Rate] = {}
        #: (tenant, admitted, estimated tokens): for metrics.
        self._on_decision = on_decision

    async def admit(self, tenant: str, model: str, estimated_tokens: int) -> Admission:
        limits, scope = await self._source.limits(tenant, model)
        if limits.unlimited:
            return NO_LIMITS
        headers: dict[str, str] = {}
        slot_key = None
        if limits.max_in_flight is not None:
            slot_key = ratelimit_key(tenant, scope, IN_FLIGHT)
            slots = self._slots
            if not slots.take_leased(slot_key) and not await slots.acquire(
                slot_key, limits.max_in_flight
            ):
                self._refuse(
                    tenant,
                    estimated_tokens,
                    f"requests in flight: the limit is {limits.max_in_flight}",
                    1.0,
                    headers,
                )
        try:
            token_key = await self._per_minute(tenant, scope, limits, estimated_tokens, headers)
        except BaseException:
            if slot_key is not None:
                self._slots.release(slot_key)
            raise
        if self._on_decision is not None:
            self._on_decision(tenant, True, estimated_tokens)
        return Admission(headers, self, slot_key, token_key, estimated_tokens)

    async def _per_minute(
        self,
        tenant: str,
        scope: str | None,
        limits: TenantLimits,
        estimated_tokens: int,
        headers: dict[str, str],
    ) -> str | None:
        """The per-minute limits checked (ApiError when over one); the token key to settle."""
        token_key = request_key = None
        if limits.rpm is not None:
            rate = self._rate(limits.rpm)
            request_key = ratelimit_key(tenant, scope, REQUESTS)
            verdict = await self._limiter.acquire(request_key, 1, rate)
            _headers(headers, REQUESTS, limits.rpm, verdict)
            if not verdict.admitted:
                self._refuse(
                    tenant,
                    estimated_tokens,
                    f"requests per minute: {limits.rpm}",
                    verdict.reset_s,
                    headers,
                )
        if limits.tpm is not None:
            rate = self._rate(limits.tpm)
            token_key = ratelimit_key(tenant, scope, TOKENS)
            try:
                verdict = await self._limiter.acquire(token_key, estimated_tokens, rate)
            except TooLarge as exc:
                raise ApiError(
                    429,
                    f"Request too large: it {exc} (tokens per minute). Lower max_tokens or "
                    "the prompt.",
                    code="rate_limit_exceeded",
                ) from None
            _headers(headers, TOKENS, limits.tpm, verdict)
            if not verdict.admitted:
                if request_key is not None:  # not admitted: its request is given back
                    self._limiter.settle(request_key, 1)
                self._refuse(
                    tenant,
                    estimated_tokens,
                    f"tokens per minute: {limits.tpm}",
                    verdict.reset_s,
                    headers,
                )
        return token_key

    def _rate(self, per_minute: int) -> Rate:
        rate = self._rates.get(per_minute)
        if rate is None:
            if len(self._rates) > 1000:
                self._rates.clear()
            rate = self._rates[per_minute] = Rate(per_minute)
        return rate

    async def usage(self, tenant: str, model: str) -> tuple[TenantLimits, dict[str, float]]:
        """The limits that apply and what is left of each, as this replica last saw it."""
        limits, scope = await self._source.limits(tenant, model)
        key = ratelimit_key(tenant, scope, IN_FLIGHT)
        left: dict[str, float] = {"in_flight": float(self._slots.used(key))}
        for dimension, per_minute in ((REQUESTS, limits.rpm), (TOKENS, limits.tpm)):
            if per_minute is not None:
                rate = Rate(per_minute)
                key = ratelimit_key(tenant, scope, dimension)
                left[f"remaining_{dimension}"] = self._limiter.remaining(key, rate).remaining
        return limits, left

    def _refuse(
        self, tenant: str, tokens: int, what: str, wait_s: float, headers: dict[str, str]
    ) -> None:
        if self._on_decision is not None:
            self._on_decision(tenant, False, tokens)
        headers["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
        headers["retry-after"] = str(max(1, math.ceil(wait_s)))
        raise ApiError(
            429,
            f"Rate limit reached for tenant {tenant!r} ({what}). Try again in {duration(wait_s)}.",
            code="rate_limit_exceeded",
            headers=headers,
        )

    def _finish(self, admission: Admission, used: int | None) -> None:
        if admission._slot_key is not None:
            self._slots.release(admission._slot_key)
        if admission._token_key is not None and used is not None:
            self._limiter.settle(admission._token_key, admission._estimate - used)


def _headers(headers: dict[str, str], dimension: str, limit: int, verdict: Verdict) -> None:
    headers[f"x-ratelimit-limit-{dimension}"] = str(limit)
    headers[f"x-ratelimit-remaining-{dimension}"] = str(int(verdict.remaining))
    headers[f"x-ratelimit-reset-{dimension}"] = duration(verdict.reset_s)


def unlimited_source() -> LimitsSource:
    class _Unlimited:
        async def limits(self, tenant: str, model: str) -> tuple[TenantLimits, str | None]:
            return UNLIMITED, None

    return _Unlimited()
