"""`producer.timers.CoarseTimers`: timeouts that fire at their time or up to one resolution
later, never before, not at all once cancelled."""

from __future__ import annotations

import asyncio
import functools

import pytest

from producer.timers import CoarseTimers


async def test_fires_not_before_and_not_much_after() -> None:
    loop = asyncio.get_running_loop()
    timers = CoarseTimers(resolution_s=0.02)
    fired: dict[str, float] = {}
    start = loop.time()

    def stamp(name: str) -> None:
        fired.setdefault(name, loop.time())

    for name, delay in (("a", 0.05), ("b", 0.1), ("c", 0.0)):
        timers.call_later(delay, functools.partial(stamp, name))
    await asyncio.sleep(0.3)
    assert set(fired) == {"a", "b", "c"}
    for name, delay in (("a", 0.05), ("b", 0.1), ("c", 0.0)):
        late = fired[name] - (start + delay)
        assert -0.002 <= late < 0.02 + 0.2, (name, late)  # never early; late by a tick or so
    assert fired["c"] <= fired["a"] <= fired["b"]
    assert len(timers) == 0


async def test_cancelled_timers_never_run_and_ticking_stops() -> None:
    timers = CoarseTimers(resolution_s=0.01)
    fired: list[str] = []
    keep = timers.call_later(0.02, lambda: fired.append("keep"))
    drop = timers.call_later(0.02, lambda: fired.append("drop"))
    timers.cancel(drop)
    timers.cancel(drop)  # twice: harmless
    await asyncio.sleep(0.1)
    assert fired == ["keep"]
    timers.cancel(keep)  # after it ran: harmless
    assert timers._tick_handle is None  # nothing pending: no loop timer left


async def test_a_failing_callback_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = CoarseTimers(resolution_s=0.01)
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    timers.call_later(0.0, boom)
    timers.call_later(0.0, lambda: fired.append("after"))
    await asyncio.sleep(0.05)
    assert fired == ["after"]
    assert "timer callback failed" in caplog.text


async def test_a_callback_may_cancel_another_due_in_the_same_tick() -> None:
    timers = CoarseTimers(resolution_s=0.01)
    fired: list[str] = []
    second: list[int] = []

    def first() -> None:
        fired.append("first")
        timers.cancel(second[0])

    timers.call_later(0.0, first)
    second.append(timers.call_later(0.0, lambda: fired.append("second")))
    await asyncio.sleep(0.05)
    assert fired == ["first"]
