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

    def cached(self, tenant: str, model: str) -> tuple[TenantLimits, str | None] | None:
        """The limits if cached and fresh, without awaiting; None: `limits`."""
        hit = self._cache.get((tenant, model))
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        return None

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
        return f"{math.ceil(seconds * 1000)}ms" if seconds > 0 else "0ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


#: OpenAI's headers, as the ASGI answer carries them: (name, value) bytes pairs.
Header = tuple[bytes, bytes]
REQUEST_HEADERS = (
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
)
TOKEN_HEADERS = (
    b"x-ratelimit-limit-tokens",
    b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-tokens",
)


@dataclass(slots=True)
class Admission:
    """One admitted request: its headers, and `finish` to settle and release it (one is made
    for every request)."""

    #: The `x-ratelimit-*` headers, encoded (sent as they are with a JSON answer).
    raw_headers: tuple[Header, ...] = ()
    gate: TenantGate | None = None
    #: The in-flight slot and the token bucket `finish` settles (None: not limited).
    slot_key: str | None = None
    token_key: str | None = None
    estimate: int = 0
    finished: bool = field(default=False, init=False)

    @property
    def headers(self) -> dict[str, str]:
        """The `x-ratelimit-*` headers as text."""
        return _text(self.raw_headers)

    def finish(self, used_tokens: int | None = None) -> None:
        """Settle the estimate with `used_tokens` (None: keep the estimate) and release the
        in-flight slot. Idempotent."""
        if self.finished or self.gate is None:
            return
        self.finished = True
        self.gate._finish(self, used_tokens)


def _text(raw: tuple[Header, ...]) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


class _RateHeaders:
    """One limit's three headers (limit, remaining, reset). A full bucket's are made once: a
    tenant far below its limit, the case on every request of most tenants, gets the same
    ones each time (encoding six headers a request cost more than the limits' check)."""

    __slots__ = ("capacity", "full", "limit", "remaining", "reset")

    def __init__(self, names: tuple[bytes, bytes, bytes], rate: Rate) -> None:
        limit, self.remaining, self.reset = names
        self.limit = (limit, str(rate.per_minute).encode())
        self.capacity = rate.capacity
        # As `of` writes a full bucket: `int(capacity)` left, `duration(0.0)` to reset.
        self.full = (self.limit, (self.remaining, b"%d" % int(rate.capacity)), (self.reset, b"0ms"))

    def of(self, verdict: Verdict) -> tuple[Header, Header, Header]:
        if verdict.admitted and verdict.remaining >= self.capacity:
            return self.full  # (an admitted verdict's remaining is at most the capacity)
        return (
            self.limit,
            (self.remaining, b"%d" % int(verdict.remaining)),
            (self.reset, duration(verdict.reset_s).encode()),
        )

    def admitted(self, left: float, rate: Rate) -> tuple[Header, Header, Header]:
        """`of` an admitted verdict with `left` remaining."""
        if left >= self.capacity:
            return self.full
        return (
            self.limit,
            (self.remaining, b"%d" % int(left)),
            (self.reset, duration((rate.capacity - left) / rate.per_s).encode()),
        )


class _Plan:
    """What one tenant's limits in one scope need on every request, computed once: the
    bucket and slot keys, the rates, the limits' headers."""

    __slots__ = (
        "max_in_flight",
        "request_headers",
        "request_key",
        "requests",
        "slot_key",
        "token_headers",
        "token_key",
        "tokens",
    )

    def __init__(self, tenant: str, scope: str | None, limits: TenantLimits) -> None:
        self.max_in_flight = limits.max_in_flight or 0
        self.slot_key = (
            None if limits.max_in_flight is None else ratelimit_key(tenant, scope, IN_FLIGHT)
        )
        self.requests = None if limits.rpm is None else Rate(limits.rpm)
        self.request_key = ratelimit_key(tenant, scope, REQUESTS)
        self.request_headers = (
            None if self.requests is None else _RateHeaders(REQUEST_HEADERS, self.requests)
        )
        self.tokens = None if limits.tpm is None else Rate(limits.tpm)
        self.token_key = ratelimit_key(tenant, scope, TOKENS)
        self.token_headers = (
            None if self.tokens is None else _RateHeaders(TOKEN_HEADERS, self.tokens)
        )


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
        self._cached = source.cached if isinstance(source, CachedLimits) else None
        #: (tenant, (limits, scope)) -> its plan (None: unlimited).
        self._plans: dict[tuple[str, tuple[TenantLimits, str | None]], _Plan | None] = {}
        #: The last plan looked up: its tenant, its source's answer (the same object while
        #: cached: compared by identity, not hashed) and the plan.
        self._last: tuple[str, object, _Plan | None] = ("", None, None)
        self._limiter = limiter
        self._slots = in_flight
        self.default_max_tokens = default_max_tokens
        #: (tenant, admitted, estimated tokens): for metrics.
        self._on_decision = on_decision

    def _plan(self, tenant: str, found: tuple[TenantLimits, str | None]) -> _Plan | None:
        last_tenant, last_found, plan = self._last
        if found is last_found and tenant == last_tenant:
            return plan
        key = (tenant, found)
        if key in self._plans:
            plan = self._plans[key]
        else:
            if len(self._plans) > 10_000:
                self._plans.clear()
            limits, scope = found
            plan = self._plans[key] = None if limits.unlimited else _Plan(tenant, scope, limits)
        self._last = (tenant, found, plan)
        return plan

    def admit_leased(self, tenant: str, model: str, estimated_tokens: int) -> Admission | None:
        """`admit` decided without awaiting, in the common case on the request path: the
        limits cached, and this replica's leases covering the request. None: `admit` (then
        nothing was taken here)."""
        found = self._cached(tenant, model) if self._cached is not None else None
        if found is None:
            return None
        plan = self._plan(tenant, found)
        if plan is None:
            return NO_LIMITS
        slots = self._slots
        slot_key = plan.slot_key
        if slot_key is not None and not slots.take_leased(slot_key):
            return None
        limiter = self._limiter
        now = limiter.clock()
        headers: tuple[Header, ...] = ()
        rate = plan.requests
        if rate is not None:
            left = limiter.take_leased(plan.request_key, 1, rate, now)
            if left is None:
                if slot_key is not None:
                    slots.put_back(slot_key)
                return None
            headers = plan.request_headers.admitted(left, rate)  # type: ignore[union-attr]
        token_key = None
        rate = plan.tokens
        if rate is not None:
            left = limiter.take_leased(plan.token_key, estimated_tokens, rate, now)
            if left is None:
                if slot_key is not None:
                    slots.put_back(slot_key)
                if plan.requests is not None:
                    limiter.settle(plan.request_key, 1)
                return None
            headers += plan.token_headers.admitted(left, rate)  # type: ignore[union-attr]
            token_key = plan.token_key
        if self._on_decision is not None:
            self._on_decision(tenant, True, estimated_tokens)
        return Admission(headers, self, slot_key, token_key, estimated_tokens)

    async def admit(self, tenant: str, model: str, estimated_tokens: int) -> Admission:
        found = self._cached(tenant, model) if self._cached is not None else None
        if found is None:
            found = await self._source.limits(tenant, model)
        plan = self._plan(tenant, found)
        if plan is None:
            return NO_LIMITS
        slot_key = plan.slot_key
        if slot_key is not None:
            slots = self._slots
            if not slots.take_leased(slot_key) and not await slots.acquire(
                slot_key, plan.max_in_flight
            ):
                self._refuse(
                    tenant,
                    estimated_tokens,
                    f"requests in flight: the limit is {plan.max_in_flight}",
                    1.0,
                    (),
                )
        try:
            token_key, headers = await self._per_minute(tenant, plan, estimated_tokens)
        except BaseException:
            if slot_key is not None:
                self._slots.release(slot_key)
            raise
        if self._on_decision is not None:
            self._on_decision(tenant, True, estimated_tokens)
        return Admission(headers, self, slot_key, token_key, estimated_tokens)

    async def _per_minute(
        self, tenant: str, plan: _Plan, estimated_tokens: int
    ) -> tuple[str | None, tuple[Header, ...]]:
        """The per-minute limits checked (ApiError when over one): the token key to settle,
        and the headers. A request its replica's leases cover is decided without awaiting
        (`try_leased`)."""
        limiter = self._limiter
        headers: tuple[Header, ...] = ()
        rate = plan.requests
        if rate is not None:
            key = plan.request_key
            verdict = limiter.try_leased(key, 1, rate) or await limiter.acquire(key, 1, rate)
            headers = plan.request_headers.of(verdict)  # type: ignore[union-attr]
            if not verdict.admitted:
                self._refuse(
                    tenant,
                    estimated_tokens,
                    f"requests per minute: {rate.per_minute}",
                    verdict.reset_s,
                    headers,
                )
        rate = plan.tokens
        if rate is None:
            return None, headers
        key = plan.token_key
        try:
            verdict = limiter.try_leased(key, estimated_tokens, rate) or await limiter.acquire(
                key, estimated_tokens, rate
            )
        except TooLarge as exc:
            raise ApiError(
                429,
                f"Request too large: it {exc} (tokens per minute). Lower max_tokens or the prompt.",
                code="rate_limit_exceeded",
            ) from None
        headers += plan.token_headers.of(verdict)  # type: ignore[union-attr]
        if not verdict.admitted:
            if plan.requests is not None:  # not admitted: its request is given back
                limiter.settle(plan.request_key, 1)
            self._refuse(
                tenant,
                estimated_tokens,
                f"tokens per minute: {rate.per_minute}",
                verdict.reset_s,
                headers,
            )
        return key, headers

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
        self, tenant: str, tokens: int, what: str, wait_s: float, raw: tuple[Header, ...]
    ) -> None:
        if self._on_decision is not None:
            self._on_decision(tenant, False, tokens)
        headers = _text(raw)
        headers["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
        headers["retry-after"] = str(max(1, math.ceil(wait_s)))
        raise ApiError(
            429,
            f"Rate limit reached for tenant {tenant!r} ({what}). Try again in {duration(wait_s)}.",
            code="rate_limit_exceeded",
            headers=headers,
        )

    def _finish(self, admission: Admission, used: int | None) -> None:
        if admission.slot_key is not None:
            self._slots.release(admission.slot_key)
        if admission.token_key is not None and used is not None:
            self._limiter.settle(admission.token_key, admission.estimate - used)


def unlimited_source() -> LimitsSource:
    class _Unlimited:
        async def limits(self, tenant: str, model: str) -> tuple[TenantLimits, str | None]:
            return UNLIMITED, None

    return _Unlimited()
