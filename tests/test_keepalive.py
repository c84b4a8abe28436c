"""Held messages are signalled in progress from their delivery until released."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from workers.keepalive import KeepAlive


class _Msg:
    def __init__(self) -> None:
        self.signals = 0

    async def in_progress(self) -> None:
        self.signals += 1


async def test_a_message_is_signalled_every_period_from_its_delivery() -> None:
    keepalive = KeepAlive(every_s=1.0)
    msg: Any = _Msg()
    keepalive.hold(msg)
    t0 = time.monotonic()
    assert await keepalive.signal_due(t0 + 0.5) == 0
    assert await keepalive.signal_due(t0 + 1.01) == 1
    assert await keepalive.signal_due(t0 + 1.5) == 0  # signalled at 1.01
    assert await keepalive.signal_due(t0 + 2.02) == 1
    assert msg.signals == 2
    keepalive.release(msg)
    assert await keepalive.signal_due(t0 + 10.0) == 0
    assert len(keepalive) == 0


async def test_holding_it_again_at_a_later_stage_keeps_the_delivery_time() -> None:
    # Held for the quarantine, then started: its clock still counts from the delivery, or
    # it could go past ack_wait unsignalled and be delivered to another worker.
    keepalive = KeepAlive(every_s=1.0)
    msg: Any = _Msg()
    keepalive.hold(msg)
    t0 = time.monotonic()
    keepalive.hold(msg)
    assert await keepalive.signal_due(t0 + 1.01) == 1


async def test_only_the_due_messages_are_signalled_oldest_first() -> None:
    keepalive = KeepAlive(every_s=1.0)
    old: Any = _Msg()
    keepalive.hold(old)
    t0 = time.monotonic()
    await asyncio.sleep(0.05)
    young: Any = _Msg()
    keepalive.hold(young)
    assert await keepalive.signal_due(t0 + 1.01) == 1
    assert (old.signals, young.signals) == (1, 0)
    assert await keepalive.signal_due(t0 + 1.2) == 1
    assert (old.signals, young.signals) == (1, 1)


async def test_the_task_signals_until_stopped() -> None:
    keepalive = KeepAlive(every_s=0.1)
    msg: Any = _Msg()
    keepalive.hold(msg)
    keepalive.start()
    for _ in range(100):
        if msg.signals >= 3:
            break
        await asyncio.sleep(0.05)
    assert msg.signals >= 3
    await keepalive.stop()
    seen = msg.signals
    await asyncio.sleep(0.2)
    assert msg.signals == seen
