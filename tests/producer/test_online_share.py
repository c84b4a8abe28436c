"""Online fair share (producer/online_share.py): a model's window of online requests, its
free slots given to the waiting tenant with the fewest in flight. Pure: no NATS."""

from __future__ import annotations

import asyncio

import pytest

from producer.capacity import window_size
from producer.online_share import NO_SLOT, OnlineShare, Slot

M = "m"


def share_of(size: int | None) -> OnlineShare:
    return OnlineShare(lambda _model: size)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_under_the_window_nothing_waits() -> None:
    share = share_of(2)
    a, b = await share.enter(M, "a"), await share.enter(M, "b")
    assert share.in_flight(M) == {"a": 1, "b": 1}
    a.leave()
    a.leave()  # idempotent
    b.leave()
    assert share.in_flight(M) == {}


async def test_a_freed_slot_goes_to_the_tenant_with_fewest_in_flight() -> None:
    share = share_of(4)
    held = [await share.enter(M, "flood") for _ in range(4)]
    order: list[str] = []

    async def one(tenant: str) -> Slot:
        slot = await share.enter(M, tenant)
        order.append(tenant)
        return slot

    # The flood queues 20 more first; then the quiet tenant sends one.
    flood = [asyncio.create_task(one("flood")) for _ in range(20)]
    await settle()
    quiet = asyncio.create_task(one("quiet"))
    await settle()
    assert share.waiting(M) == 21
    assert not order
    held[0].leave()
    await settle()
    assert order == ["quiet"], "the quiet tenant's request is not behind the flood's backlog"
    held[1].leave()
    await settle()
    assert order == ["quiet", "flood"]
    assert share.in_flight(M) == {"flood": 3, "quiet": 1}
    (await quiet).leave()
    for slot in held[2:]:
        slot.leave()
    await settle()
    for task in flood:
        task.cancel()
    await settle()


async def test_tenants_with_equal_counts_take_turns() -> None:
    share = share_of(1)
    first = await share.enter(M, "x")
    order: list[str] = []

    async def one(tenant: str) -> None:
        slot = await share.enter(M, tenant)
        order.append(tenant)
        await asyncio.sleep(0)
        slot.leave()

    tasks = [asyncio.create_task(one(t)) for t in ("a", "a", "a", "b", "b", "b", "c")]
    await settle()
    first.leave()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "a", "b", "a", "b"]


async def test_a_request_given_up_while_waiting_loses_its_place_only() -> None:
    share = share_of(1)
    first = await share.enter(M, "a")
    gone = asyncio.create_task(share.enter(M, "b"))
    kept = asyncio.create_task(share.enter(M, "b"))
    await settle()
    gone.cancel()
    await settle()
    first.leave()
    slot = await asyncio.wait_for(kept, 1)
    assert share.in_flight(M) == {"b": 1}
    slot.leave()
    assert share.in_flight(M) == {}
    assert share.waiting(M) == 0


async def test_a_slot_given_as_its_waiter_is_cancelled_is_handed_on() -> None:
    share = share_of(1)
    first = await share.enter(M, "a")
    unlucky = asyncio.create_task(share.enter(M, "b"))
    nxt = asyncio.create_task(share.enter(M, "c"))
    await settle()
    first.leave()  # gives b the slot; b's task has not run yet
    unlucky.cancel()
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    slot = await asyncio.wait_for(nxt, 1)
    assert share.in_flight(M) == {"c": 1}
    slot.leave()


async def test_unknown_capacity_means_no_window() -> None:
    share = share_of(None)
    slots = [await share.enter(M, "a") for _ in range(100)]
    assert share.in_flight(M) == {"a": 100}
    for slot in slots:
        slot.leave()


async def test_a_window_that_grows_admits_waiters() -> None:
    size = [1]
    share = OnlineShare(lambda _m: size[0])
    first = await share.enter(M, "a")
    waiter = asyncio.create_task(share.enter(M, "b"))
    await settle()
    assert not waiter.done()
    size[0] = 3  # a worker joined
    second = await asyncio.wait_for(share.enter(M, "c"), 1)  # admits b, then c
    assert waiter.done()
    for slot in (first, second, waiter.result()):
        slot.leave()


def test_the_window_is_the_capacity_plus_a_little_headroom() -> None:
    assert window_size(0) is None
    assert window_size(8) == 9
    assert window_size(256) == 272
    NO_SLOT.leave()  # nothing to free
