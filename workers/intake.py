"""Intake: how much the worker pulls, from which consumer, and what it holds.

Invariant: messages in flight + pull credit outstanding <= the backend's capacity. The backlog
therefore stays in the stream (visible to KEDA as `num_pending`), and a replica never hoards.

Priority: the consumers are served in order, priority, online, batch (README: "Per-model
queue layout"). The first one with a backlog is offered all free capacity. One without a
backlog keeps a small reserve of credit waiting on it (so its next request is delivered the
moment it is published): online while idle, priority always (even while online has a backlog,
so a priority request never waits behind online work in the stream). The rest of the free
capacity goes to the batch consumer. `plan_pulls` is that policy as a pure function.

Quarantine: a redelivered message whose earlier delivery ended in a crash (its worker died or
its `ack_wait` ran out) is a suspect. Suspects run in groups, with nothing else running
meanwhile: the intake lets what is running finish, then runs the next group (first deliveries
pulled meanwhile wait). A group is at most half the suspects that crashed together, and a
group that crashes again splits in halves, so a poison request among `n` is isolated after
about log2(n) crashes and the others are served in a few groups, not one by one. Only a crash
while a message ran alone counts as its attempt (workers/handbacks.py keeps that count, per
message, in a KV bucket), so the requests beside a poison one are never dead-lettered with
it. A message redelivered only because a draining worker handed it back, or after a model
failure, is no suspect and runs like a first delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple

from nats.aio.msg import Msg

from schemas.names import Priority
from workers.handbacks import HandBacks, Verdict
from workers.jsmeta import ack_info
from workers.keepalive import KeepAlive
from workers.puller import PullConsumer

log = logging.getLogger(__name__)

#: Pull requests stay open this long; credit of a request that found nothing returns after it.
ONLINE_EXPIRES_S = 5.0
BATCH_EXPIRES_S = 1.0
#: A quarantine group is chosen once no redelivery has come in for this long (the suspects that
#: crashed together are redelivered together, in a few pull responses), at most
#: GROUP_SETTLE_MAX_S after its first suspect could run.
GROUP_SETTLE_S = 0.05
GROUP_SETTLE_MAX_S = 1.0


@dataclass(frozen=True)
class IntakeSettings:
    """How the intake paces itself (fixed for the worker's life)."""

    #: How often messages held longer than this are reported in progress to JetStream.
    in_progress_every_s: float
    #: Settings of `online_reserve` and `priority_reserve` (None: their defaults).
    online_reserve: int | None = None
    priority_reserve: int | None = None
    #: See GROUP_SETTLE_S.
    group_settle_s: float = GROUP_SETTLE_S


class PullState(NamedTuple):
    # NamedTuples, not frozen dataclasses: the pull loop builds one after deliveries and
    # completions, and a frozen dataclass of these ten fields costs twice as much to build
    # (each field set through object.__setattr__).
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
    #: The same for the priority consumer, served before online. Its reserve is kept even
    #: while online has a backlog: a priority request never waits behind online work.
    priority_outstanding: int = 0
    priority_backlog: bool = False
    priority_reserve: int = 0


class PullPlan(NamedTuple):
    online: int
    batch: int
    #: Take back the batch consumer's outstanding credit first (it stands in online's way).
    withdraw_batch: bool = False
    priority: int = 0


def plan_pulls(s: PullState) -> PullPlan:
    """What to request now. The consumers are served in order: priority, online, batch.
    The first one with a backlog is offered all free capacity (the batch credit withdrawn
    for it) and the ones after it get nothing; one without a backlog gets at least its
    reserve; batch gets what is left."""
    upper = (
        (s.priority_outstanding, s.priority_backlog, s.priority_reserve),
        (s.online_outstanding, s.online_backlog, s.online_reserve),
    )
    free = s.capacity - s.in_flight - s.batch_outstanding - sum(u[0] for u in upper)
    batch_out = s.batch_outstanding
    wants = 0
    for outstanding, backlog, reserve in upper:
        if backlog:
            wants += max(0, free) + batch_out
            break
        wants += max(0, reserve - outstanding)
    withdraw = batch_out > 0 and wants > max(0, free)
    if withdraw:
        free += batch_out
        batch_out = 0
    credit = [0, 0]
    for i, (outstanding, backlog, reserve) in enumerate(upper):
        if free <= 0:
            break
        if backlog:
            credit[i] = free if free >= s.min_pull or outstanding == 0 else 0
            return PullPlan(credit[1], 0, withdraw, credit[0])
        credit[i] = min(free, max(0, reserve - outstanding))
        free -= credit[i]
    batch = free if free > 0 and (free >= s.min_pull or batch_out == 0) else 0
    return PullPlan(credit[1], batch, withdraw, credit[0])


def online_reserve(capacity: int, setting: int | None = None) -> int:
    """Credit kept on the idle online consumer: the setting, else a quarter of the capacity
    (at least 1). Batch work fills `capacity - online_reserve` (KEDA's target, jetserve/k8s)."""
    reserve = max(1, capacity // 4) if setting is None else setting
    return min(reserve, capacity)


def next_group(suspects: list[tuple[Msg, int]], capacity: int, crashed: int) -> list[Msg]:
    """The next quarantine group, from the front of `suspects` ((message, bound) in arrival
    order): as many as every member's bound allows, at most `capacity`. A suspect without a
    bound (its crash was beside other work, not in a group) may join a group of half the
    `crashed` unbounded suspects of this quarantine, those already run included (1 when it is
    alone: run alone). Half of those that crashed together, not of those still waiting: the
    bystanders of one crash are served in two groups, not in halves of halves (32 suspects
    ran as 16, 8, 4, 2, 1 and 1, six runs one after another)."""
    default = max(1, (crashed + 1) // 2)
    limit = max(1, capacity)
    group: list[Msg] = []
    for msg, bound in suspects:
        limit = min(limit, bound or default)
        if len(group) >= limit:
            break
        group.append(msg)
    return group


def priority_reserve(capacity: int, setting: int | None = None) -> int:
    """Credit always kept on the priority consumer: the setting, else 1 (never less: the
    credit is how a priority backlog is noticed). It is taken from what online work may
    hold (capacity - 1 with an online backlog), so a priority request is delivered the
    moment it is published; once one arrives with more behind it, all free capacity goes
    to priority. At most capacity - 1: online work always has a slot (a worker of capacity
    1 cannot keep credit on two consumers, and keeps none on priority)."""
    return max(0, min(max(1, 1 if setting is None else setting), capacity - 1))


MessageHandler = Callable[[Msg], Coroutine[Any, Any, None]]


ConsumerFactory = Callable[[Callable[[Msg], None], Callable[[str], None]], PullConsumer]


class Intake:
    """Owns the three pull consumers of one model and the set of in-flight messages."""

    def __init__(
        self,
        *,
        priority: ConsumerFactory,
        online: ConsumerFactory,
        batch: ConsumerFactory,
        capacity: Callable[[], int],
        handle: MessageHandler,
        settings: IntakeSettings,
        handbacks: HandBacks | None = None,
    ) -> None:
        self._priority = priority(
            lambda m: self._accept(m, Priority.PRIORITY), self._ended(Priority.PRIORITY)
        )
        self._online = online(
            lambda m: self._accept(m, Priority.ONLINE), self._ended(Priority.ONLINE)
        )
        self._batch = batch(lambda m: self._accept(m, Priority.BATCH), lambda _s: self._kick())
        self._consumers = (self._priority, self._online, self._batch)
        self._capacity = capacity
        self._handle = handle
        self._settings = settings
        self._handbacks = handbacks
        #: Redeliveries received (the quarantine chooses a group once they stop coming).
        self._redeliveries = 0
        #: Redeliveries whose hand-backs are being looked up (held in `_waiting` meanwhile).
        self._checks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[asyncio.Task[None], Msg] = {}
        #: Suspects waiting for their quarantine group: (message, largest group it may join;
        #: 0: any), and the other messages held meanwhile.
        self._suspects: deque[tuple[Msg, int]] = deque()
        #: Unbounded suspects placed since the quarantine began (what `next_group` halves).
        self._crashed = 0
        self._held: deque[Msg] = deque()
        #: Messages held (not running), by id(msg).
        self._waiting: dict[int, Msg] = {}
        #: Every message from its delivery until acked or handed back, kept alive.
        self._keepalive = KeepAlive(settings.in_progress_every_s)
        #: The quarantine group being recorded (`_group_forming`) or running.
        self._group: set[asyncio.Task[None]] = set()
        self._group_forming = False
        self._grouping: asyncio.Task[None] | None = None
        self._group_started = 0.0
        #: Consumers known to have messages waiting (priority and online are tracked).
        self._backlog: set[Priority] = set()
        #: (capacity, online reserve, priority reserve) for the capacity last seen.
        self._reserves = (-1, 0, 0)
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
        for consumer in self._consumers:
            await consumer.start()
        self._open = True
        self._tasks = [asyncio.create_task(self._pull_loop(), name="intake-pull")]
        self._keepalive.start()

    def on_reconnect(self) -> None:
        for consumer in self._consumers:
            consumer.reset()
        self._kick()

    async def close(self) -> None:
        """Stop pulling. A message still delivered for outstanding credit, or held back by
        the quarantine, is handed back. What runs is kept alive until `finish`."""
        self._open = False
        for task in [*self._tasks, *([self._grouping] if self._grouping else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        held = [m for m, _ in self._suspects] + list(self._held)
        self._suspects.clear()
        self._held.clear()
        for msg in held:
            self._waiting.pop(id(msg), None)
            with contextlib.suppress(Exception):
                await self._hand_back(msg)
        if not self._in_flight and not self._waiting:
            self._idle.set()

    async def finish(self) -> None:
        """After `close`, once what ran has ended (acked, or handed back): stop keeping
        messages alive."""
        await self._keepalive.stop()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False if the timeout passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def unsubscribe(self) -> None:
        for consumer in self._consumers:
            await consumer.stop()

    def _kick(self) -> None:
        self._wake.set()

    def _ended(self, priority: Priority) -> Callable[[str], None]:
        def ended(status: str) -> None:
            # A pull request on this consumer ended unfilled: nothing is waiting there.
            self._backlog.discard(priority)
            self._kick()

        return ended

    def _accept(self, msg: Msg, priority: Priority) -> None:
        if not self._open:
            asyncio.get_running_loop().create_task(self._hand_back(msg))
            return
        info = ack_info(msg.reply)
        if priority is not Priority.BATCH:
            if info is not None and info.pending > 0:
                self._backlog.add(priority)
            else:
                self._backlog.discard(priority)
            self._kick()  # top the credit up again
        self._idle.clear()
        self._keepalive.hold(msg)
        if info is not None and info.delivered > 1:
            self._redeliveries += 1
            if self._handbacks is not None:  # redeliveries only: why was it redelivered?
                self._waiting[id(msg)] = msg
                check = asyncio.get_running_loop().create_task(self._classify(msg, info.delivered))
                self._checks.add(check)
                check.add_done_callback(self._checks.discard)
                return
            self._place(msg, Verdict(info.delivered, True, 1))  # no records: each runs alone
        else:
            self._place(msg, None)

    def _place(self, msg: Msg, verdict: Verdict | None) -> None:
        if verdict is not None and verdict.suspect:
            self._suspects.append((msg, verdict.bound))
            self._crashed += verdict.bound == 0
            self._waiting[id(msg)] = msg
        elif self._quarantined:
            self._hold(msg, self._held)
        else:
            self._start(msg)
        self._advance()

    @property
    def _quarantined(self) -> bool:
        # A redelivery still being looked up may be a suspect: a first delivery that started
        # meanwhile would hold the quarantine up for its whole run (a restarted worker's first
        # pull brings the suspects and first deliveries together).
        return bool(self._suspects or self._group or self._group_forming or self._checks)

    async def _classify(self, msg: Msg, delivered: int) -> None:
        assert self._handbacks is not None
        verdict = await self._handbacks.classify(msg, delivered)
        self._waiting.pop(id(msg), None)
        self._checks.discard(asyncio.current_task())
        if self._open:
            self._place(msg, verdict)
        else:
            with contextlib.suppress(Exception):
                await self._hand_back(msg)
            if not self._in_flight and not self._waiting:
                self._idle.set()
        self._kick()

    async def _hand_back(self, msg: Msg) -> None:
        self._keepalive.release(msg)
        if self._handbacks is not None:
            await self._handbacks.hand_back(msg)
        else:
            await msg.nak()

    def _hold(self, msg: Msg, queue: deque[Msg]) -> None:
        queue.append(msg)
        self._waiting[id(msg)] = msg

    def _start(self, msg: Msg) -> asyncio.Task[None]:
        self._waiting.pop(id(msg), None)
        task = asyncio.get_running_loop().create_task(self._handle(msg))
        self._in_flight[task] = msg
        task.add_done_callback(self._done)
        return task

    def _advance(self) -> None:
        """Start the next quarantine group once nothing else runs; else release held
        messages."""
        if self._group or self._group_forming:
            return
        if self._suspects:
            if not self._in_flight:
                self._group_forming = True
                self._grouping = asyncio.get_running_loop().create_task(self._run_group())
            return
        if self._checks:  # the held wait for the verdicts
            return
        self._crashed = 0  # the quarantine is over
        while self._held:
            self._start(self._held.popleft())

    async def _run_group(self) -> None:
        """Choose the next group, record it on each member (so that a crash is charged
        right), then run it."""
        group: list[Msg] = []
        cancelled = False
        try:
            # Suspects that crashed together arrive together, but in a few pull responses (a
            # restarted worker's first pull asks for its online reserve only): choose once no
            # redelivery has come in for a settle period and all are looked up, at most
            # GROUP_SETTLE_MAX_S after the first.
            deadline = time.monotonic() + GROUP_SETTLE_MAX_S
            while True:
                seen = self._redeliveries
                await asyncio.sleep(self._settings.group_settle_s)
                while self._checks and self._open:
                    await asyncio.wait(set(self._checks))
                if self._redeliveries == seen or time.monotonic() >= deadline:
                    break
            group = next_group(list(self._suspects), self._capacity(), self._crashed)
            for _ in group:
                self._suspects.popleft()
            log.info(
                "quarantine: a group of %d suspects runs (%d more waiting, %d held)",
                len(group),
                len(self._suspects),
                len(self._held),
            )
            if self._handbacks is not None:
                handbacks = self._handbacks
                await asyncio.gather(*(handbacks.started(m, len(group)) for m in group))
            if self._open:
                self._group_started = time.monotonic()
                for msg in group:
                    self._group.add(self._start(msg))
                group = []
        except asyncio.CancelledError:
            cancelled = True  # closing: close() hands back what is held
            raise
        finally:
            self._group_forming = False
            self._grouping = None
            for msg in group:  # closed meanwhile
                self._waiting.pop(id(msg), None)
                with contextlib.suppress(Exception):
                    await self._hand_back(msg)
            if self._open and not cancelled:
                self._advance()
            if not self._in_flight and not self._waiting:
                self._idle.set()
            self._kick()

    def _done(self, task: asyncio.Task[None]) -> None:
        msg = self._in_flight.pop(task, None)
        if msg is not None:  # acked or handed back by the handler
            self._keepalive.release(msg)
        if task in self._group:
            self._group.discard(task)
            if not self._group:
                log.info(
                    "quarantine: the group ran in %.2f s",
                    time.monotonic() - self._group_started,
                )
        if not task.cancelled() and task.exception() is not None:
            log.error("message handler failed", exc_info=task.exception())
        if self._open:
            self._advance()
        if not self._in_flight and not self._waiting:
            self._idle.set()
        self._kick()

    def _state(self) -> PullState:
        # In quarantine the worker still pulls up to its capacity: more suspects join the next
        # group, and first deliveries wait for the suspects (held, kept alive).
        capacity = self._capacity()
        if capacity != self._reserves[0]:
            settings = self._settings
            self._reserves = (
                capacity,
                online_reserve(capacity, settings.online_reserve),
                priority_reserve(capacity, settings.priority_reserve),
            )
        _, online, priority = self._reserves
        return PullState(
            capacity=capacity,
            in_flight=self.in_flight,
            online_outstanding=self._online.outstanding,
            batch_outstanding=self._batch.outstanding,
            online_backlog=Priority.ONLINE in self._backlog,
            online_reserve=online,
            min_pull=max(1, capacity // 8),
            priority_outstanding=self._priority.outstanding,
            priority_backlog=Priority.PRIORITY in self._backlog,
            priority_reserve=priority,
        )

    async def _pull_loop(self) -> None:
        while self._open:
            for consumer in self._consumers:
                consumer.forget_expired()
            plan = plan_pulls(self._state())
            try:
                if plan.withdraw_batch:
                    await self._batch.withdraw()
                if plan.priority:
                    await self._priority.pull(plan.priority, ONLINE_EXPIRES_S)
                if plan.online:
                    await self._online.pull(plan.online, ONLINE_EXPIRES_S)
                if plan.batch:
                    await self._batch.pull(plan.batch, BATCH_EXPIRES_S)
            except Exception as exc:  # disconnected: credit is re-planned after reconnect
                log.warning("pull request failed: %s", exc)
                for consumer in self._consumers:
                    consumer.reset()
                await asyncio.sleep(0.2)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
                # arrives as the event is set, and this loop would outlive `close()`.
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
