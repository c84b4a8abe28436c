"""Which deliveries count (workers/handbacks.py), and the quarantine groups that split on each
crash (workers/intake.py), simulated with an in-memory KV bucket: a "crash" drops an intake
with everything it held, and the next intake receives those messages again, as JetStream
redelivers them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from schemas.messages import DeliveryRecord
from workers.handbacks import HandBacks, Verdict, resolve, verdict
from workers.intake import Intake, IntakeSettings, next_group

from .test_intake import _KV, _Consumer


def test_a_crash_beside_other_work_is_free_and_makes_a_suspect() -> None:
    before = DeliveryRecord()
    after = resolve(before, 2)
    assert after == DeliveryRecord(free=1, ended=1)
    assert verdict(before, after, 2) == Verdict(attempt=1, suspect=True, bound=0)


def test_a_crash_in_a_group_halves_the_group_and_is_free() -> None:
    before = DeliveryRecord(free=1, ended=1, run=2, group=9)
    after = resolve(before, 3)
    assert (after.free, after.ended, after.bound) == (2, 2, 5)
    assert verdict(before, after, 3) == Verdict(attempt=1, suspect=True, bound=5)


def test_a_crash_alone_counts() -> None:
    before = DeliveryRecord(free=4, ended=4, run=5, group=1, bound=1)
    after = resolve(before, 6)
    assert verdict(before, after, 6) == Verdict(attempt=2, suspect=True, bound=1)


def test_a_model_failure_counts_and_is_no_suspect() -> None:
    # The handler recorded delivery 1's failure before its nak: nothing to resolve.
    before = DeliveryRecord(ended=1)
    assert resolve(before, 2) == before
    assert verdict(before, before, 2) == Verdict(attempt=2, suspect=False, bound=0)


def test_resolving_twice_changes_nothing() -> None:
    once = resolve(DeliveryRecord(run=3, group=4, ended=2, free=2), 4)
    assert resolve(once, 4) == once


def test_next_group_is_half_of_those_that_crashed_together_and_respects_bounds() -> None:
    def pool(*bounds: int) -> list[tuple[Any, int]]:
        # Names stand in for messages (next_group only returns what it is given).
        return [(f"m{i}", b) for i, b in enumerate(bounds)]

    assert _names(pool(0), 8, 1) == ["m0"]  # one suspect: alone
    assert len(_names(pool(*[0] * 19), 64, 19)) == 10
    assert len(_names(pool(*[0] * 32), 8, 32)) == 8  # never over the capacity
    assert _names(pool(4, 4, 4, 4, 4), 64, 0) == ["m0", "m1", "m2", "m3"]
    assert _names(pool(4, 1, 4), 64, 0) == ["m0"]  # m1 must run alone: m0 goes first
    # The second half of 32 that crashed together: one group, not half of what is left.
    assert len(_names(pool(*[0] * 16), 64, 32)) == 16


def _names(suspects: list[tuple[Any, int]], capacity: int, crashed: int) -> list[str]:
    return [str(m) for m in next_group(suspects, capacity, crashed)]


async def test_the_bystanders_of_a_crash_run_in_two_groups() -> None:
    """32 requests redelivered after their worker died (no poison among them) run as two
    groups of 16, one after the other: half of those that crashed together, then the rest.
    (The quarantine used to halve what was left: 16, 8, 4, 2, 1, 1, six runs in a row.)"""
    running: set[str] = set()
    groups: list[int] = []

    async def handle(msg: Any) -> None:
        if not running:
            groups.append(0)
        running.add(msg.name)
        groups[-1] += 1
        await asyncio.sleep(0.01)
        running.discard(msg.name)

    consumers: list[_Consumer] = []

    def factory(on_msg: Callable[[Any], None], on_end: Callable[[str], None]) -> Any:
        consumers.append(_Consumer(on_msg, on_end))
        return consumers[-1]

    intake = Intake(
        priority=factory,
        online=factory,
        batch=factory,
        capacity=lambda: 64,
        handle=handle,
        settings=IntakeSettings(in_progress_every_s=60.0, group_settle_s=0.01),
        handbacks=HandBacks(_KV()),  # type: ignore[arg-type]
    )
    await intake.start()
    for i in range(32):
        consumers[1].on_msg(_Msg(f"r{i}", i, delivered=2))
    await asyncio.sleep(0)
    assert await intake.wait_idle(5.0)
    assert groups == [16, 16]
    # The quarantine is over: a later crash's suspects are halved afresh.
    for i in range(4):
        consumers[1].on_msg(_Msg(f"s{i}", 100 + i, delivered=2))
    await asyncio.sleep(0)
    assert await intake.wait_idle(5.0)
    assert groups == [16, 16, 2, 2]
    await intake.close()


class _SlowKV(_KV):
    """A hand-back bucket that answers after 50 ms (a real one answers in about a millisecond)."""

    async def get(self, key: str) -> Any:
        await asyncio.sleep(0.05)
        return await super().get(key)


async def test_a_first_delivery_waits_for_the_verdict_on_a_redelivery_before_it() -> None:
    """A restarted worker's first pull brings the dead worker's requests (redelivered, looked
    up in the bucket) and first deliveries together. A first delivery that started while the
    redeliveries were looked up held the quarantine up for its whole run (measured: 65 s of a
    SmolLM2 recovery). It waits for the verdicts; the suspects run first."""
    order: list[str] = []
    release = asyncio.Event()
    started = asyncio.Event()

    async def handle(msg: Any) -> None:
        order.append(msg.name)
        started.set()
        await release.wait()

    consumers: list[_Consumer] = []

    def factory(on_msg: Callable[[Any], None], on_end: Callable[[str], None]) -> Any:
        consumers.append(_Consumer(on_msg, on_end))
        return consumers[-1]

    intake = Intake(
        priority=factory,
        online=factory,
        batch=factory,
        capacity=lambda: 64,
        handle=handle,
        settings=IntakeSettings(in_progress_every_s=60.0, group_settle_s=0.01),
        handbacks=HandBacks(_SlowKV()),  # type: ignore[arg-type]
    )
    await intake.start()
    consumers[1].on_msg(_Msg("suspect-a", 1, delivered=2))
    consumers[1].on_msg(_Msg("suspect-b", 2, delivered=2))
    consumers[1].on_msg(_Msg("first", 3, delivered=1))
    async with asyncio.timeout(5):
        await started.wait()
    await asyncio.sleep(0.2)
    assert order == ["suspect-a"]  # a group of one of the two, nothing beside it
    release.set()
    assert await intake.wait_idle(5.0)
    assert order == ["suspect-a", "suspect-b", "first"]
    await intake.close()


class _Msg:
    def __init__(self, name: str, seq: int, delivered: int) -> None:
        self.name = name
        self.reply = f"$JS.ACK.s.online.{delivered}.{seq}.1.1700000000000000000.0"

    async def nak(self, delay: float | None = None) -> None: ...

    async def in_progress(self) -> None: ...


class _Sim:
    """Workers that share one KV bucket; the process dies when it runs the poison request."""

    def __init__(self, poison: str, max_attempts: int) -> None:
        self.poison = poison
        self.max_attempts = max_attempts
        self.kv = _KV()
        self.served: set[str] = set()
        self.dead: set[str] = set()

    async def run_worker(self, deliveries: list[_Msg]) -> bool:
        """One worker's life, given `deliveries`; True if it crashed."""
        handbacks = HandBacks(self.kv)  # type: ignore[arg-type]
        crashed = asyncio.Event()
        running: set[str] = set()

        async def handle(msg: Any) -> None:
            n = int(msg.reply.split(".")[4])
            if await handbacks.attempt(msg, n) > self.max_attempts:
                self.dead.add(msg.name)
                return
            running.add(msg.name)
            await asyncio.sleep(0.001)  # every member of a group is running now
            if self.poison in running:
                crashed.set()  # the process dies with all it runs
                await asyncio.Event().wait()
            running.discard(msg.name)
            self.served.add(msg.name)

        consumers: list[_Consumer] = []

        def factory(on_msg: Callable[[Any], None], on_end: Callable[[str], None]) -> Any:
            consumers.append(_Consumer(on_msg, on_end))
            return consumers[-1]

        intake = Intake(
            priority=factory,
            online=factory,
            batch=factory,
            capacity=lambda: 64,
            handle=handle,
            settings=IntakeSettings(in_progress_every_s=60.0),
            handbacks=handbacks,
        )
        await intake.start()
        online = consumers[1]  # made in the order priority, online, batch
        for msg in deliveries:
            online.on_msg(msg)
        idle = asyncio.create_task(intake.wait_idle(5.0))
        ended = asyncio.create_task(crashed.wait())
        done, _ = await asyncio.wait({idle, ended}, timeout=5.0, return_when="FIRST_COMPLETED")
        assert done, "neither idle nor crashed"
        # The process is gone: its tasks end, and nothing is handed back.
        intake._open = False
        grouping = [intake._grouping] if intake._grouping else []
        tasks = [*intake.tasks, *intake._tasks, *intake._checks, *grouping, idle, ended]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return crashed.is_set()


async def test_a_poison_request_among_31_others_is_isolated_in_log_crashes() -> None:
    """Target (c): the poison request is dead-lettered and none of the 31 others is; each
    crash of a group splits it, so it takes about log2(32) crashes, not 32."""
    names = [f"r{i}" for i in range(32)]
    sim = _Sim(poison="r13", max_attempts=2)
    delivered = dict.fromkeys(names, 0)
    crashes = 0
    for _ in range(40):
        pending = [n for n in names if n not in sim.served and n not in sim.dead]
        if not pending:
            break
        for n in pending:
            delivered[n] += 1
        crashes += await sim.run_worker([_Msg(n, names.index(n), delivered[n]) for n in pending])
    assert sim.dead == {"r13"}
    assert sim.served == set(names) - {"r13"}
    # 1 crash of the first batch, a split per halving, then max_attempts crashes alone.
    assert crashes <= 1 + math.ceil(math.log2(32)) + 2
    print(f"FIGURE poison-among-32: {crashes} crashes; 31/31 others served, poison dead-lettered")
