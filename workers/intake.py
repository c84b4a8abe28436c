"""Intake: how much the worker pulls, from which consumer, and what it holds.

Invariant: messages in flight + pull credit outstanding <= the backend's capacity. The backlog
therefore stays in the stream (visible to KEDA as `num_pending`), and a replica never hoards.

Priority: online first. While the online consumer has a backlog, all free capacity is offered
to it. While it is idle, a small reserve of credit stays waiting on it (so an online request is
delivered the moment it is published) and the rest of the free capacity goes to the batch
consumer. `plan_pulls` is that policy as a pure function.

Quarantine: a redelivered message (its worker died or timed out holding it) runs alone. The
intake stops pulling, lets what is running finish, runs the suspect by itself, then goes on.
If the suspect is what kills workers, it never takes innocent requests down with it again:
those lose at most one delivery (the first crash), never reaching `max_attempts`. A message
redelivered only because draining workers handed it back (workers/handbacks.py: one KV read,
for redeliveries only) is no suspect and runs like a first delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from schemas.names import Priority
from workers.handbacks import HandBacks
from workers.jsmeta import ack_info
from workers.puller import PullConsumer

log = logging.getLogger(__name__)

#: Pull requests stay open this long; credit of a request that found nothing returns after it.
ONLINE_EXPIRES_S = 5.0
BATCH_EXPIRES_S = 1.0


@dataclass(frozen=True)
class PullState:
    capacity: int
    in_flight: int
    online_outstanding: int
    batch_outstanding: int
    #: The online consumer is known to have messages waiting.
    online_backlog: bool
    #: Credit kept on the online consumer while it is idle.
    online_reserve: int
    #: Smallest pull worth a request while credit is already outstanding.
    min_pull: int


@dataclass(frozen=True)
class PullPlan:
    online: int
    batch: int
    #: Take back the batch consumer's outstanding credit first (it stands in online's way).
    withdraw_batch: bool = False


def plan_pulls(s: PullState) -> PullPlan:
    """What to request now. Online is offered all free capacity while it has a backlog, and
    at least `online_reserve` credit while idle; batch gets what is left."""
    free = s.capacity - s.in_flight - s.online_outstanding - s.batch_outstanding
    batch_out = s.batch_outstanding
    if s.online_backlog:
        want_online = max(0, free) + batch_out
    else:
        want_online = max(0, s.online_reserve - s.online_outstanding)
    withdraw = batch_out > 0 and want_online > max(0, free)
    if withdraw:
        free += batch_out
        batch_out = 0
    if free <= 0:
        return PullPlan(0, 0, withdraw)
    if s.online_backlog:
        take = free if free >= s.min_pull or s.online_outstanding == 0 else 0
        return PullPlan(take, 0, withdraw)
    online = min(free, want_online)
    rest = free - online
    batch = rest if rest > 0 and (rest >= s.min_pull or batch_out == 0) else 0
    return PullPlan(online, batch, withdraw)


def online_reserve(capacity: int, setting: int | None = None) -> int:
    """Credit kept on the idle online consumer: the setting, else a quarter of the capacity
    (at least 1). Batch work fills `capacity - online_reserve` (KEDA's target, jetserve/k8s)."""
    reserve = max(1, capacity // 4) if setting is None else setting
    return min(reserve, capacity)


MessageHandler = Callable[[Msg], Coroutine[Any, Any, None]]


class Intake:
    """Owns the two pull consumers of one model and the set of in-flight messages."""

    def __init__(
        self,
        *,
        online: Callable[[Callable[[Msg], None], Callable[[str], None]], PullConsumer],
        batch: Callable[[Callable[[Msg], None], Callable[[str], None]], PullConsumer],
        capacity: Callable[[], int],
        handle: MessageHandler,
        in_progress_every_s: float,
        online_reserve: int | None = None,
        handbacks: HandBacks | None = None,
    ) -> None:
        self._online = online(lambda m: self._accept(m, Priority.ONLINE), self._online_ended)
        self._batch = batch(lambda m: self._accept(m, Priority.BATCH), lambda _s: self._kick())
        self._capacity = capacity
        self._handle = handle
        self._in_progress_every_s = in_progress_every_s
        self._reserve_setting = online_reserve
        self._handbacks = handbacks
        #: Redeliveries whose hand-backs are being looked up (held in `_waiting` meanwhile).
        self._checks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        #: Redelivered messages waiting to run alone, and first deliveries held meanwhile.
        self._suspects: deque[Msg] = deque()
        self._held: deque[Msg] = deque()
        #: Messages held (not running), by id(msg): (msg, since) - for in-progress signals.
        self._waiting: dict[int, tuple[Msg, float]] = {}
        #: The suspect running alone.
        self._alone: asyncio.Task[None] | None = None
        self._online_backlog = False
        self._open = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Messages this worker holds: running, or waiting for a suspect to run alone."""
        return len(self._in_flight) + len(self._waiting)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._in_flight)

    async def start(self) -> None:
        await self._online.start()
        await self._batch.start()
        self._open = True
        self._tasks = [
            asyncio.create_task(self._pull_loop(), name="intake-pull"),
            asyncio.create_task(self._in_progress_loop(), name="intake-in-progress"),
        ]

    def on_reconnect(self) -> None:
        self._online.reset()
        self._batch.reset()
        self._kick()

    async def close(self) -> None:
        """Stop pulling. A message still delivered for outstanding credit, or held back by
        the quarantine, is handed back."""
        self._open = False
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in (self._suspects, self._held):
            while queue:
                msg = queue.popleft()
                self._waiting.pop(id(msg), None)
                with contextlib.suppress(Exception):
                    await self._hand_back(msg)
        if not self._in_flight and not self._waiting:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False if the timeout passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def unsubscribe(self) -> None:
        await self._online.stop()
        await self._batch.stop()

    def _kick(self) -> None:
        self._wake.set()

    def _online_ended(self, status: str) -> None:
        # A pull request on the online consumer ended unfilled: nothing is waiting there.
        self._online_backlog = False
        self._kick()

    def _accept(self, msg: Msg, priority: Priority) -> None:
        if not self._open:
            asyncio.get_running_loop().create_task(self._hand_back(msg))
            return
        info = ack_info(msg.reply)
        if priority is Priority.ONLINE:
            self._online_backlog = info is not None and info.pending > 0
            self._kick()  # top the online credit up again
        self._idle.clear()
        if info is not None and info.delivered > 1:
            if self._handbacks is not None:  # redeliveries only: were they handed back?
                self._waiting[id(msg)] = (msg, time.monotonic())
                check = asyncio.get_running_loop().create_task(self._classify(msg, info.delivered))
                self._checks.add(check)
                check.add_done_callback(self._checks.discard)
                return
            self._hold(msg, self._suspects)
        elif self._suspects or self._alone is not None:
            self._hold(msg, self._held)
        else:
            self._start(msg)
        self._advance()

    def _place(self, msg: Msg, suspect: bool) -> None:
        if suspect:
            self._hold(msg, self._suspects)
        elif self._suspects or self._alone is not None:
            self._hold(msg, self._held)
        else:
            self._start(msg)
        self._advance()

    async def _classify(self, msg: Msg, delivered: int) -> None:
        """A redelivery: a suspect only if some earlier delivery was not handed back."""
        assert self._handbacks is not None
        attempt = await self._handbacks.attempt(msg, delivered)
        self._waiting.pop(id(msg), None)
        if self._open:
            self._place(msg, suspect=attempt > 1)
        else:
            with contextlib.suppress(Exception):
                await self._hand_back(msg)
            if not self._in_flight and not self._waiting:
                self._idle.set()
        self._kick()

    async def _hand_back(self, msg: Msg) -> None:
        if self._handbacks is not None:
            await self._handbacks.hand_back(msg)
        else:
            await msg.nak()

    def _hold(self, msg: Msg, queue: deque[Msg]) -> None:
        queue.append(msg)
        self._waiting[id(msg)] = (msg, time.monotonic())

    def _start(self, msg: Msg) -> asyncio.Task[None]:
        self._waiting.pop(id(msg), None)
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        self._in_flight[task] = (msg, time.monotonic())
        task.add_done_callback(self._done)
        return task

    def _advance(self) -> None:
        """Run the next suspect alone once nothing else runs; else release held messages."""
        if self._alone is not None:
            return
        if self._suspects:
            if not self._in_flight:
                self._alone = self._start(self._suspects.popleft())
            return
        while self._held:
            self._start(self._held.popleft())

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        if task is self._alone:
            self._alone = None
        if not task.cancelled() and task.exception() is not None:
            log.error("message handler failed", exc_info=task.exception())
        if self._open:
            self._advance()
        if not self._in_flight and not self._waiting:
            self._idle.set()
        self._kick()

    def _state(self) -> PullState:
        capacity = self._capacity()
        if self._suspects or self._alone is not None:
            capacity = min(capacity, self.in_flight)  # quarantine: pull nothing more
        reserve = online_reserve(capacity, self._reserve_setting)
        return PullState(
            capacity=capacity,
            in_flight=self.in_flight,
            online_outstanding=self._online.outstanding,
            batch_outstanding=self._batch.outstanding,
            online_backlog=self._online_backlog,
            online_reserve=reserve,
            min_pull=max(1, capacity // 8),
        )

    async def _pull_loop(self) -> None:
        while self._open:
            self._online.forget_expired()
            self._batch.forget_expired()
            plan = plan_pulls(self._state())
            try:
                if plan.withdraw_batch:
                    await self._batch.withdraw()
                if plan.online:
                    await self._online.pull(plan.online, ONLINE_EXPIRES_S)
                if plan.batch:
                    await self._batch.pull(plan.batch, BATCH_EXPIRES_S)
            except Exception as exc:  # disconnected: credit is re-planned after reconnect
                log.warning("pull request failed: %s", exc)
                self._online.reset()
                self._batch.reset()
                await asyncio.sleep(0.2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # arrives as the event is set, and this loop would outlive `close()`.
                async with asyncio.timeout(0.5):
                    await self._wake.wait()

    async def _in_progress_loop(self) -> None:
        """Tell JetStream that long-running messages are still being worked on."""
        every = self._in_progress_every_s
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for msg, started in [*self._in_flight.values(), *self._waiting.values()]:
                if now - started >= every:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
