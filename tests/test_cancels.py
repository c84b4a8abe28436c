"""The cancel registry: remembered cancels, and the deadline sweep that replaces a timer per
request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from workers.cancels import CancelRegistry


async def _eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.01)
    return True


async def _parked() -> None:
    await asyncio.sleep(60)


async def test_overdue_requests_are_cancelled_and_marked_expired() -> None:
    reg = CancelRegistry()
    late = asyncio.create_task(_parked())
    on_time = asyncio.create_task(_parked())
    reg.register("late", late, deadline_s=100.0)
    reg.register("on-time", on_time, deadline_s=200.0)
    reg.register("no-deadline", asyncio.create_task(_parked()))
    assert reg.expire_overdue(150.0) == 1
    await asyncio.sleep(0)
    assert late.cancelled()
    assert reg.expired("late")
    assert not reg.expired("on-time")
    assert not on_time.done()
    assert not reg.is_cancelled("late")  # a deadline is not a requester's cancel
    reg.unregister("late")
    assert not reg.expired("late")
    on_time.cancel()


async def test_the_sweep_runs_while_deadlines_are_registered() -> None:
    reg = CancelRegistry(sweep_every_s=0.01)
    task = asyncio.create_task(_parked())
    reg.register("r", task, deadline_s=time.time() + 0.05)
    assert reg.sweeping
    started = time.monotonic()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled()
    assert reg.expired("r")
    assert time.monotonic() - started < 2
    reg.unregister("r")
    assert await _eventually(lambda: not reg.sweeping)  # it ends once no deadline is left


async def test_an_unregistered_request_is_never_cancelled_by_the_sweep() -> None:
    reg = CancelRegistry()
    task = asyncio.create_task(_parked())
    reg.register("r", task, deadline_s=1.0)
    reg.unregister("r")
    assert reg.expire_overdue(time.time()) == 0
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
