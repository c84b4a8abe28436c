from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from workers.handbacks import HandBacks
from workers.intake import Intake, IntakeSettings, PullPlan, PullState, plan_pulls

BASE = PullState(
    capacity=16,
    in_flight=0,
    online_outstanding=0,
    batch_outstanding=0,
    online_backlog=False,
    online_reserve=4,
    min_pull=2,
)


def plan(**changes: object) -> PullPlan:
    return plan_pulls(BASE._replace(**changes))  # type: ignore[arg-type]


def test_idle_keeps_a_reserve_on_online_and_gives_the_rest_to_batch() -> None:
    assert plan() == PullPlan(4, 12)


def test_online_backlog_takes_all_free_capacity() -> None:
    assert plan(online_backlog=True) == PullPlan(16, 0)
    assert plan(online_backlog=True, in_flight=10, online_outstanding=2) == PullPlan(4, 0)


def test_online_backlog_takes_back_the_batch_credit() -> None:
    assert plan(online_backlog=True, in_flight=10, batch_outstanding=2) == PullPlan(6, 0, True)


def test_online_reserve_is_refilled_from_batch_credit() -> None:
    # An online request used the reserve credit; batch credit fills the rest: take it back.
    assert plan(in_flight=1, online_outstanding=3, batch_outstanding=12) == PullPlan(1, 11, True)


def test_batch_work_in_flight_is_never_taken_back() -> None:
    assert plan(in_flight=16) == PullPlan(0, 0)
    assert plan(in_flight=16, online_backlog=True) == PullPlan(0, 0)


def test_never_exceeds_capacity() -> None:
    for in_flight in range(0, 17):
        for on in range(0, 17 - in_flight):
            for ba in range(0, 17 - in_flight - on):
                for backlog in (False, True):
                    p = plan(
                        in_flight=in_flight,
                        online_outstanding=on,
                        batch_outstanding=ba,
                        online_backlog=backlog,
                    )
                    kept_batch = 0 if p.withdraw_batch else ba
                    assert p.online >= 0
                    assert p.batch >= 0
                    assert in_flight + on + kept_batch + p.online + p.batch <= 16


def test_small_pulls_wait_while_credit_is_outstanding() -> None:
    assert plan(in_flight=11, online_outstanding=4, batch_outstanding=0) == PullPlan(0, 1)
    assert plan(in_flight=10, online_outstanding=4, batch_outstanding=1) == PullPlan(0, 0)
    assert plan(online_backlog=True, in_flight=14, online_outstanding=1) == PullPlan(0, 0)
    # ... but an online consumer with no credit at all always gets some.
    assert plan(online_backlog=True, in_flight=15) == PullPlan(1, 0)


def test_reserve_is_topped_up_not_exceeded() -> None:
    assert plan(online_outstanding=3, batch_outstanding=10) == PullPlan(1, 2)
    assert plan(online_outstanding=4, batch_outstanding=12) == PullPlan(0, 0)


async def test_a_batch_whose_callers_all_left_is_cancelled() -> None:
    import asyncio
    from collections.abc import Sequence
    from typing import ClassVar

    from schemas.params import SamplingParams
    from workers.batcher import DynamicBatcher
    from workers.sdk import Model, ModelInput

    cancelled = asyncio.Event()

    class Sleepy(Model):
        max_batch_size: ClassVar[int] = 1

        async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return [None]

    batcher = DynamicBatcher(Sleepy("s"))
    batcher.start()
    caller = asyncio.create_task(batcher.submit(ModelInput("r", "predict", None, SamplingParams())))
    await asyncio.sleep(0.05)
    caller.cancel()
    await asyncio.wait_for(cancelled.wait(), 2)
    await batcher.stop()


# -- quarantine: redelivered messages run alone -------------------------------------------


class _Consumer:
    """A pull consumer that never pulls (messages are handed to the intake directly)."""

    outstanding = 0

    def __init__(self, on_msg: Callable[[Any], None], on_end: Callable[[str], None]) -> None:
        self.on_msg = on_msg

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def pull(self, batch: int, expires_s: float) -> None: ...

    async def withdraw(self) -> None: ...

    def forget_expired(self) -> None: ...

    def reset(self) -> None: ...


class _Msg:
    def __init__(self, name: str, delivered: int) -> None:
        self.name = name
        self.reply = f"$JS.ACK.s.online.{delivered}.1.1.1700000000000000000.0"
        self.naks = 0

    async def nak(self, delay: float | None = None) -> None:
        self.naks += 1

    async def in_progress(self) -> None: ...


async def _quarantine_run(order: list[str]) -> tuple[Intake, dict[str, asyncio.Event], Any]:
    gates: dict[str, asyncio.Event] = {}
    running: set[str] = set()
    overlaps: list[tuple[str, set[str]]] = []

    async def handle(msg: Any) -> None:
        running.add(msg.name)
        overlaps.append((msg.name, set(running)))
        order.append(msg.name)
        gate = gates.setdefault(msg.name, asyncio.Event())
        await gate.wait()
        running.discard(msg.name)

    consumers: list[_Consumer] = []

    def factory(on_msg: Callable[[Any], None], on_end: Callable[[str], None]) -> Any:
        consumers.append(_Consumer(on_msg, on_end))
        return consumers[-1]

    intake = Intake(
        priority=factory,
        online=factory,
        batch=factory,
        capacity=lambda: 8,
        handle=handle,
        settings=IntakeSettings(in_progress_every_s=60.0, group_settle_s=0.0),
    )
    await intake.start()
    return intake, gates, (consumers, overlaps)


async def _release(gates: dict[str, asyncio.Event], name: str) -> None:
    gates.setdefault(name, asyncio.Event()).set()
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_redelivered_message_runs_alone() -> None:
    order: list[str] = []
    intake, gates, (consumers, overlaps) = await _quarantine_run(order)
    deliver = consumers[0].on_msg
    deliver(_Msg("a", 1))
    deliver(_Msg("b", 1))
    deliver(_Msg("suspect", 2))  # a worker died holding it
    deliver(_Msg("c", 1))  # arrives while the suspect waits: held back
    await asyncio.sleep(0)
    assert order == ["a", "b"]
    assert intake.in_flight == 4
    await _release(gates, "a")
    assert order == ["a", "b"]  # b still runs: the suspect waits for it
    await _release(gates, "b")
    assert order == ["a", "b", "suspect"]
    await _release(gates, "suspect")
    assert order == ["a", "b", "suspect", "c"]
    assert ("suspect", {"suspect"}) in overlaps  # nothing ran beside it
    await _release(gates, "c")
    assert await intake.wait_idle(1.0)
    await intake.close()


async def test_closing_hands_back_held_messages() -> None:
    order: list[str] = []
    intake, gates, (consumers, _) = await _quarantine_run(order)
    deliver = consumers[0].on_msg
    deliver(_Msg("a", 1))
    suspect, held = _Msg("suspect", 3), _Msg("c", 1)
    deliver(suspect)
    deliver(held)
    await asyncio.sleep(0)
    await intake.close()
    assert (suspect.naks, held.naks) == (1, 1)
    assert intake.in_flight == 1  # "a" still runs; the drain waits for it
    await _release(gates, "a")
    assert await intake.wait_idle(1.0)


async def test_close_ends_the_pull_loop_even_when_woken_as_it_is_cancelled() -> None:
    # A wake-up landing in the same loop turn as close()'s cancel: `asyncio.wait_for` on
    # Python 3.11 returns the event's result and drops the cancel, so the pull loop ran on and
    # close() never returned (a worker SIGTERMed just after traffic hung until SIGKILL).
    for _ in range(20):
        intake, _, _ = await _quarantine_run([])
        for _ in range(3):
            await asyncio.sleep(0)  # the pull loop waits for a wake-up
        intake._kick()
        closing = asyncio.create_task(intake.close())
        done, _ = await asyncio.wait({closing}, timeout=5)
        assert closing in done, "close() did not return"


class _KV:
    """An in-memory stand-in for the hand-back KV bucket (get / create / update with CAS)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[bytes, int]] = {}

    async def get(self, key: str) -> Any:
        if key not in self.entries:
            raise KeyNotFoundError()
        value, revision = self.entries[key]
        return SimpleNamespace(value=value, revision=revision)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.entries:
            raise KeyWrongLastSequenceError()
        self.entries[key] = (value, 1)
        return 1

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if self.entries[key][1] != last:
            raise KeyWrongLastSequenceError()
        self.entries[key] = (value, (last or 0) + 1)
        return (last or 0) + 1


async def test_a_message_only_handed_back_is_no_suspect() -> None:
    """A redelivery whose earlier deliveries were all handed back (recorded) runs beside the
    others; one with an unrecorded earlier delivery (a worker died) still runs alone."""
    order: list[str] = []
    gates: dict[str, asyncio.Event] = {}

    async def handle(msg: Any) -> None:
        order.append(msg.name)
        await gates.setdefault(msg.name, asyncio.Event()).wait()

    consumers: list[_Consumer] = []

    def factory(on_msg: Callable[[Any], None], on_end: Callable[[str], None]) -> Any:
        consumers.append(_Consumer(on_msg, on_end))
        return consumers[-1]

    handbacks = HandBacks(_KV())  # type: ignore[arg-type]
    intake = Intake(
        priority=factory,
        online=factory,
        batch=factory,
        capacity=lambda: 8,
        handle=handle,
        settings=IntakeSettings(in_progress_every_s=60.0, group_settle_s=0.0),
        handbacks=handbacks,
    )
    await intake.start()

    def msg(name: str, delivered: int, stream_seq: int) -> _Msg:
        m = _Msg(name, delivered)
        m.reply = f"$JS.ACK.s.online.{delivered}.{stream_seq}.1.1700000000000000000.0"
        return m

    # a draining worker gave it back, twice
    assert await handbacks.record(msg("handed-back", 1, stream_seq=7))
    assert await handbacks.record(msg("handed-back", 2, stream_seq=7))
    deliver = consumers[0].on_msg
    deliver(msg("a", 1, stream_seq=6))
    deliver(msg("handed-back", 3, stream_seq=7))  # third delivery, two hand-backs: attempt 1
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a", "handed-back"]  # ran at once, beside "a"
    deliver(msg("crashed", 2, stream_seq=8))  # no hand-back recorded: a suspect, waits to run alone
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a", "handed-back"]
    for name in ("a", "handed-back"):
        await _release(gates, name)
    assert order == ["a", "handed-back", "crashed"]
    await _release(gates, "crashed")
    assert await intake.wait_idle(1.0)
    await intake.close()
