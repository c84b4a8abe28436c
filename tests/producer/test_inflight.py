"""Requests in flight limited across bridge replicas (producer/inflight.py): leases of slots
from one shared record. Pure: the record is a dict with `resize`'s own arithmetic."""

from __future__ import annotations

import asyncio

from producer.inflight import HOLD_TTL_S, IDLE_RETURN_S, InFlight, chunk_of, resize
from schemas.limits import SlotHolding, SlotsState


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class MemorySlots:
    def __init__(self, fail: bool = False) -> None:
        self.states: dict[str, SlotsState] = {}
        self.calls = 0
        self.fail = fail

    async def resize(self, key: str, holder: str, wanted: int, limit: int, now_s: float) -> int:
        self.calls += 1
        await asyncio.sleep(0)  # a round trip: others run meanwhile
        if self.fail:
            raise ConnectionError("no NATS")
        state, held = resize(self.states.get(key), holder, wanted, limit, now_s, HOLD_TTL_S)
        self.states[key] = state
        return held

    def held(self, key: str) -> int:
        state = self.states.get(key)
        return sum(h.slots for h in state.holders.values()) if state else 0


def test_resize_grants_what_the_others_leave_and_drops_lapsed_holdings() -> None:
    state, held = resize(None, "a", 3, 4, 0.0, 6.0)
    assert (held, state.holders["a"]) == (3, SlotHolding(3, 6.0))
    state, held = resize(state, "b", 3, 4, 1.0, 6.0)
    assert held == 1
    state, held = resize(state, "a", 0, 4, 2.0, 6.0)  # a gives everything back
    assert held == 0
    assert "a" not in state.holders
    state, held = resize(state, "c", 9, 4, 100.0, 6.0)  # b's holding lapsed meanwhile
    assert held == 4
    assert list(state.holders) == ["c"]
    assert chunk_of(1) == 1
    assert chunk_of(10**6) == 62_500


async def test_two_replicas_together_admit_at_most_the_limit() -> None:
    shared, clock = MemorySlots(), Clock()
    one, two = InFlight(shared, clock, "one"), InFlight(shared, clock, "two")
    limit = 8
    verdicts = await asyncio.gather(
        *[(one if i % 2 else two).acquire("k", limit) for i in range(20)]
    )
    assert verdicts.count(True) == limit
    assert one.used("k") + two.used("k") == limit
    assert shared.held("k") == limit
    # A slot freed on one replica is taken again there; the other still cannot exceed.
    one.release("k")
    assert await one.acquire("k", limit)
    assert not await two.acquire("k", limit)


async def test_a_refused_replica_does_not_ask_again_at_once() -> None:
    shared, clock = MemorySlots(), Clock()
    one, two = InFlight(shared, clock, "one"), InFlight(shared, clock, "two")
    assert await one.acquire("k", 1)
    assert not await two.acquire("k", 1)
    asked = shared.calls
    for _ in range(50):
        assert not await two.acquire("k", 1)
    assert shared.calls == asked  # refused locally
    clock.now += 1
    assert not await two.acquire("k", 1)
    assert shared.calls == asked + 1


async def test_an_idle_replica_gives_its_slots_back() -> None:
    shared, clock = MemorySlots(), Clock()
    one, two = InFlight(shared, clock, "one"), InFlight(shared, clock, "two")
    assert await one.acquire("k", 1)
    one.release("k")
    await asyncio.sleep(IDLE_RETURN_S + 0.05)
    assert shared.held("k") == 0
    assert await two.acquire("k", 1)


async def test_a_gone_replicas_slots_lapse_and_renewals_keep_the_live_ones() -> None:
    shared, clock = MemorySlots(), Clock()
    gone, live, other = (InFlight(shared, clock, n) for n in ("gone", "live", "other"))
    assert await gone.acquire("k", 2)
    assert await live.acquire("k", 2)
    assert not await other.acquire("k", 2)
    clock.now += HOLD_TTL_S / 2
    await live.renew()
    clock.now += HOLD_TTL_S / 2 + 0.1  # gone's holding lapsed, live's was renewed
    assert await other.acquire("k", 2)
    assert not await other.acquire("k", 2)
    assert live.used("k") == 1


async def test_a_large_limit_costs_one_round_trip_per_lease() -> None:
    shared = MemorySlots()
    slots = InFlight(shared, Clock(), "one")
    for _ in range(1000):
        assert await slots.acquire("k", 10**6)
    assert shared.calls <= 1
    for _ in range(1000):
        slots.release("k")


async def test_unreachable_shared_record_admits() -> None:
    slots = InFlight(MemorySlots(fail=True), Clock(), "one")
    assert all([await slots.acquire("k", 1) for _ in range(3)])
    assert slots.used("k") == 3
