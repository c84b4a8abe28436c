"""Token buckets shared by bridge replicas, read from local leases (producer/ratelimit.py),
and the gate that applies a tenant's limits (producer/limits.py): pure, with a shared
in-memory bucket store and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from producer.inflight import InFlight, resize
from producer.limits import NO_LIMITS, TenantGate, duration, estimate_tokens
from producer.ratelimit import LEASE_TTL_S, Limiter, Rate, Taken, TooLarge, take
from schemas.limits import UNLIMITED, BucketState, SlotsState, TenantLimits, check_limits
from schemas.openai_errors import ApiError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryBuckets:
    """`SharedBuckets` over a dict, with `take`'s own arithmetic: what the KV store does
    without the round trips; counts the takes."""

    def __init__(self) -> None:
        self.states: dict[str, BucketState] = {}
        self.takes = 0

    async def take(self, key: str, cost: float, extra: float, rate: Rate, now_s: float) -> Taken:
        self.takes += 1
        after, taken = take(self.states.get(key), cost, extra, rate, now_s)
        if after is not None:
            self.states[key] = after
        return taken


class MemorySlots:
    """`SharedSlots` over a dict, with `resize`'s own arithmetic."""

    def __init__(self) -> None:
        self.states: dict[str, SlotsState] = {}

    async def resize(self, key: str, holder: str, wanted: int, limit: int, now_s: float) -> int:
        self.states[key], held = resize(self.states.get(key), holder, wanted, limit, now_s, 6.0)
        return held


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_rate_shape() -> None:
    rate = Rate(600)
    assert rate.per_s == 10
    assert rate.capacity == 100  # ten seconds' refill
    assert rate.lease == 5  # half a second of refill, at most a quarter of the bucket
    assert Rate(1).capacity == 1.0


def test_take_refuses_without_writing_and_allows_a_debt_for_a_large_cost() -> None:
    rate = Rate(600)
    after, got = take(None, 30, 5, rate, 0.0)
    assert got == Taken(35, 65)
    assert after == BucketState(65, 0.0)
    after, got = take(BucketState(2, 0.0), 30, 5, rate, 1.0)  # 12 after a second of refill
    assert after is None
    assert got == Taken(0.0, 12.0)
    # A cost above the bucket's size needs a full bucket and leaves a debt.
    after, got = take(BucketState(100, 0.0), 250, 5, rate, 0.0)
    assert got == Taken(250, -150)
    assert after == BucketState(-150, 0.0)


def test_one_replica_admits_the_burst_then_the_rate() -> None:
    clock, shared = Clock(), MemoryBuckets()
    limiter = Limiter(shared, clock)
    rate = Rate(600)  # 10/s, bucket 100
    admitted = sum(run(limiter.acquire("k", 1, rate)).admitted for _ in range(150))
    assert admitted == 100
    assert shared.takes < 40  # leases: not one shared take per request
    refused = run(limiter.acquire("k", 1, rate))
    assert not refused.admitted
    assert 0 < refused.reset_s <= 0.1
    clock.now += 1.0
    assert sum(run(limiter.acquire("k", 1, rate)).admitted for _ in range(50)) == 10


def test_two_replicas_together_admit_what_one_would() -> None:
    clock, shared = Clock(), MemoryBuckets()
    a, b = Limiter(shared, clock), Limiter(shared, clock)
    rate = Rate(1200)  # 20/s, bucket 200
    admitted = 0
    for _ in range(300):  # 30 s, 6 requests a replica each 0.1 s: 3x the limit
        for limiter in (a, b) * 6:
            admitted += run(limiter.acquire("k", 1, rate)).admitted
        clock.now += 0.1
    expected = 200 + 20 * 30
    assert abs(admitted - expected) <= 0.02 * expected


def test_an_unused_lease_expires_and_a_settled_estimate_comes_back() -> None:
    clock, shared = Clock(), MemoryBuckets()
    limiter = Limiter(shared, clock)
    rate = Rate(600)
    assert run(limiter.acquire("t", 40, rate)).admitted  # 40 + a lease of 5 taken
    assert shared.states["t"].tokens == 55
    limiter.settle("t", 30)  # used 10 of the 40 estimated
    before = shared.takes
    assert run(limiter.acquire("t", 35, rate)).admitted  # from the lease: 5 + 30
    assert shared.takes == before
    limiter.settle("t", 5)
    clock.now += LEASE_TTL_S + 0.1
    verdict = run(limiter.acquire("t", 1, rate))
    assert verdict.admitted
    assert shared.takes == before + 1


def test_a_debt_from_settling_is_paid_before_more_is_admitted() -> None:
    clock, shared = Clock(), MemoryBuckets()
    limiter = Limiter(shared, clock)
    rate = Rate(600)
    assert run(limiter.acquire("t", 10, rate)).admitted
    limiter.settle("t", -95)  # used 95 more than estimated: the lease is in debt
    assert not run(limiter.acquire("t", 10, rate)).admitted  # needs 10 + the debt


def test_a_cost_over_a_whole_minute_is_too_large() -> None:
    limiter = Limiter(MemoryBuckets(), Clock())
    with pytest.raises(TooLarge):
        run(limiter.acquire("t", 601, Rate(600)))


def test_duration_and_estimate() -> None:
    assert duration(0.017) == "17ms"
    assert duration(1.2) == "1.2s"
    assert duration(360) == "6m0s"
    assert duration(61.5) == "1m2s"
    assert estimate_tokens(400, 50, 1024) == 150
    assert estimate_tokens(400, None, 1024) == 1124


def test_check_limits_names_the_field() -> None:
    with pytest.raises(ValueError, match="rpm"):
        check_limits(TenantLimits(rpm=0))
    with pytest.raises(ValueError, match="tpm"):
        check_limits(TenantLimits(tpm=10**13))
    assert check_limits(TenantLimits(rpm=5)).rpm == 5


class Source:
    def __init__(self, limits: TenantLimits) -> None:
        self.value = limits

    async def limits(self, tenant: str, model: str) -> tuple[TenantLimits, str | None]:
        return self.value, None


def gate(
    limits: TenantLimits, clock: Clock | None = None
) -> tuple[TenantGate, list[tuple[str, bool, int]]]:
    decisions: list[tuple[str, bool, int]] = []
    g = TenantGate(
        Source(limits),
        Limiter(MemoryBuckets(), clock or Clock()),
        InFlight(MemorySlots(), clock or Clock()),
        on_decision=lambda *d: decisions.append(d),
    )
    return g, decisions


def test_gate_headers_and_refusal() -> None:
    g, decisions = gate(TenantLimits(rpm=60, tpm=6000))
    first = run(g.admit("acme", "m", 100))
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-limit-tokens"] == "6000"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"  # bucket of 10
    assert first.headers["x-ratelimit-remaining-tokens"] == "900"
    assert first.headers["x-ratelimit-reset-requests"] == "1s"
    first.finish(10)
    for _ in range(9):
        run(g.admit("acme", "m", 10)).finish(10)
    with pytest.raises(ApiError) as refused:
        run(g.admit("acme", "m", 10))
    exc = refused.value
    assert exc.status == 429
    assert exc.code == "rate_limit_exceeded"
    assert exc.headers["retry-after"] == "1"
    assert 0 < int(exc.headers["retry-after-ms"]) <= 1000
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert decisions[-1] == ("acme", False, 10)
    assert decisions[0] == ("acme", True, 100)


async def test_gate_in_flight_and_unlimited() -> None:
    g, _ = gate(TenantLimits(max_in_flight=2))
    a, b = await g.admit("t", "m", 1), await g.admit("t", "m", 1)
    with pytest.raises(ApiError, match="the limit is 2"):
        await g.admit("t", "m", 1)
    assert await g.admit("other", "m", 1) is not NO_LIMITS  # per tenant
    a.finish()
    a.finish()  # idempotent: frees one slot only
    c = await g.admit("t", "m", 1)
    with pytest.raises(ApiError):
        await g.admit("t", "m", 1)
    _, usage = await g.usage("t", "m")
    assert usage["in_flight"] == 2
    b.finish()
    c.finish()
    assert await gate(UNLIMITED)[0].admit("t", "m", 10**9) is NO_LIMITS


async def test_gate_refused_by_rate_frees_its_in_flight_slot() -> None:
    g, _ = gate(TenantLimits(max_in_flight=1, rpm=6))  # a bucket of 1 request
    (await g.admit("t", "m", 1)).finish()
    with pytest.raises(ApiError, match="requests per minute"):
        await g.admit("t", "m", 1)
    _, usage = await g.usage("t", "m")
    assert usage["in_flight"] == 0


def test_gate_refused_tokens_give_the_request_back() -> None:
    g, _ = gate(TenantLimits(rpm=600, tpm=600))
    run(g.admit("t", "m", 100)).finish(100)  # the token bucket (100) is now empty
    with pytest.raises(ApiError, match="tokens per minute"):
        run(g.admit("t", "m", 50))
    _, usage = run(g.usage("t", "m"))
    assert usage["remaining_requests"] == 99  # the refused one was given back
    with pytest.raises(ApiError, match="Request too large"):
        run(g.admit("t", "m", 601))


class SlowBuckets(MemoryBuckets):
    """Each take is a round trip (the event loop runs others meanwhile)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail

    async def take(self, key: str, cost: float, extra: float, rate: Rate, now_s: float) -> Taken:
        await asyncio.sleep(0.001)
        if self.fail:
            raise ConnectionError("no NATS")
        return await super().take(key, cost, extra, rate, now_s)


def test_concurrent_requests_share_one_take() -> None:
    shared = SlowBuckets()
    limiter = Limiter(shared, Clock())
    rate = Rate(60_000)  # a lease of 250

    async def burst() -> list[bool]:
        verdicts = await asyncio.gather(*[limiter.acquire("k", 1, rate) for _ in range(64)])
        return [v.admitted for v in verdicts]

    assert all(run(burst()))
    assert shared.takes == 1


def test_unreachable_buckets_admit() -> None:
    limiter = Limiter(SlowBuckets(fail=True), Clock())
    assert run(limiter.acquire("k", 1, Rate(60))).admitted
