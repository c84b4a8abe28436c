"""The gate's decision without awaiting (`TenantGate.admit_leased`, producer/limits.py):
the same verdicts and headers as `admit`, and nothing taken when it cannot decide alone.
Pure, with the in-memory shared stores of test_ratelimit.py and a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from producer.inflight import InFlight
from producer.limits import CachedLimits, TenantGate, duration
from producer.ratelimit import Limiter, Verdict
from schemas.limits import TenantLimits
from schemas.openai_errors import ApiError
from tests.producer.test_ratelimit import Clock, MemoryBuckets, MemorySlots


def cached_gate(limits: TenantLimits, clock: Clock) -> tuple[TenantGate, list[object]]:
    decisions: list[object] = []

    async def load(tenant: str, model: str) -> tuple[TenantLimits, str | None]:
        return limits, None

    gate = TenantGate(
        CachedLimits(load, 3600.0, clock),
        Limiter(MemoryBuckets(), clock),
        InFlight(MemorySlots(), clock),
        on_decision=lambda *d: decisions.append(d),
    )
    return gate, decisions


async def outcomes(gate: TenantGate, clock: Clock, leased: bool) -> list[object]:
    """Requests of 30 estimated tokens (using 20) one after the other, 40 ms apart, past
    the limits: what each got."""
    got: list[object] = []
    held = []
    for i in range(60):
        clock.now += 0.04
        try:
            admission = None
            if leased:
                admission = gate.admit_leased("t", "m", 30)
            if admission is None:
                admission = await gate.admit("t", "m", 30)
        except ApiError as exc:
            got.append(("refused", exc.message, exc.headers))
            continue
        got.append(admission.headers)
        held.append(admission)
        if i % 3 == 0:  # a third stay in flight a little longer
            continue
        for admission in held:
            admission.finish(20)
        held.clear()
    return got


def test_admit_leased_decides_as_admit() -> None:
    limits = TenantLimits(rpm=120, tpm=3000, max_in_flight=2)
    slow_clock, fast_clock = Clock(), Clock()
    slow, slow_decisions = cached_gate(limits, slow_clock)
    fast, fast_decisions = cached_gate(limits, fast_clock)
    expected = asyncio.run(outcomes(slow, slow_clock, leased=False))
    assert asyncio.run(outcomes(fast, fast_clock, leased=True)) == expected
    assert fast_decisions == slow_decisions
    assert any(isinstance(o, tuple) for o in expected)  # some refused
    assert sum(isinstance(o, dict) for o in expected) > 20  # most admitted


def test_admit_leased_takes_nothing_when_it_cannot_decide() -> None:
    clock = Clock()
    gate, decisions = cached_gate(TenantLimits(rpm=600, tpm=600, max_in_flight=64), clock)
    assert gate.admit_leased("t", "m", 10) is None  # no lease yet (nor limits cached)
    # Leases taken: 1 + 4 slots, 1 + 5 requests, 10 + 5 tokens.
    first = asyncio.run(gate.admit("t", "m", 10))
    usage = asyncio.run(gate.usage("t", "m"))[1]
    assert gate.admit_leased("t", "m", 100) is None  # the token lease cannot cover it
    assert asyncio.run(gate.usage("t", "m"))[1] == usage  # nothing taken
    assert len(decisions) == 1
    second = gate.admit_leased("t", "m", 5)
    assert second is not None
    assert second.headers["x-ratelimit-remaining-tokens"] == "85"  # 100 - 10 - 5
    assert asyncio.run(gate.usage("t", "m"))[1]["in_flight"] == 2
    first.finish()
    second.finish()


@pytest.mark.parametrize("per_minute", [1, 60, 600, 10**9, 10**12])
def test_a_full_buckets_headers_are_written_as_any_other(per_minute: int) -> None:
    limits = TenantLimits(rpm=per_minute)
    gate, _ = cached_gate(limits, Clock())
    plan = gate._plan("t", (limits, None))
    assert plan is not None
    assert plan.request_headers is not None
    assert plan.requests is not None
    rate = plan.requests
    for left in (rate.capacity, rate.capacity * 0.999, 0.0):
        verdict = Verdict(True, left, (rate.capacity - left) / rate.per_s)
        assert plan.request_headers.of(verdict) == (
            (b"x-ratelimit-limit-requests", str(per_minute).encode()),
            (b"x-ratelimit-remaining-requests", str(int(left)).encode()),
            (b"x-ratelimit-reset-requests", duration(verdict.reset_s).encode()),
        )
        assert plan.request_headers.admitted(left, rate) == plan.request_headers.of(verdict)
    full = plan.request_headers.of(Verdict(True, rate.capacity, 0.0))
    assert full[2] == (b"x-ratelimit-reset-requests", b"0ms")
