"""Keeping held messages alive until they are acked or handed back.

JetStream redelivers a message `ack_wait` after its delivery or after the last in-progress
signal for it. A worker holds messages longer than that: running, or waiting for a quarantine
group. One task signals every held message `every_s` after its delivery or its last signal,
counted from the delivery (a message held, then started, gets no fresh clock), and goes on
while the worker drains, until the last message is acked or handed back.

    keepalive = KeepAlive(every_s=1.0)
    keepalive.start()
    keepalive.hold(msg)       # at delivery
    keepalive.release(msg)    # acked, or handed back
    await keepalive.stop()    # once nothing is held

Messages are kept oldest signal first, so a round looks only at those that are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.aio.msg import Msg


class KeepAlive:
    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        #: id(msg) -> (msg, when it was delivered or last signalled), oldest first.
        self._held: dict[int, tuple[Msg, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, msg: Msg) -> None:
        """From its delivery (a later call keeps the first time)."""
        key = id(msg)
        if key not in self._held:
            self._held[key] = (msg, time.monotonic())

    def release(self, msg: Msg) -> None:
        self._held.pop(id(msg), None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="keepalive")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # Looked at every half period: a message goes at most 1.5 x `every_s` unsignalled.
        while True:
            await asyncio.sleep(self.every_s / 2)
            await self.signal_due(time.monotonic())

    async def signal_due(self, now: float) -> int:
        """Signal the messages whose last signal (or delivery) is `every_s` old: how many."""
        due: list[Msg] = []
        for msg, last in self._held.values():
            if now - last < self.every_s:
                break  # the rest were delivered or signalled later
            due.append(msg)
        for msg in due:  # to the end, as signalled now (before any await: no race)
            del self._held[id(msg)]
            self._held[id(msg)] = (msg, now)
        for msg in due:
            with contextlib.suppress(Exception):  # acked meanwhile, or disconnected
                await msg.in_progress()
        return len(due)
