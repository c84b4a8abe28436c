"""The scheduler with a fake model runner: no torch, no model, no NATS."""

from __future__ import annotations

import pytest

from schemas.params import SamplingParams
from workers.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from workers.engine.sequence import EngineRequest, Sequence, Status


def make_seq(
    sched: Scheduler,
    prompt_len: int,
    max_tokens: int,
    *,
    online: bool = True,
    name: str | None = None,
    first: int = 0,
) -> Sequence:
    """A sequence whose prompt is `first, first + 1, ...` (equal `first`: a shared prefix)."""
    arrival = sched.new_arrival()
    req = EngineRequest(
        id=name or f"r{arrival}",
        prompt_token_ids=list(range(first, first + prompt_len)),
        params=SamplingParams(),
        max_tokens=max_tokens,
        online=online,
    )
    seq = Sequence(req, arrival)
    sched.add(seq)
    return seq


def fake_step(sched: Scheduler) -> SchedulerOutput:
    """One engine step with a fake runner: every sampling sequence gets token 7; sequences
    that reach max_tokens finish."""
    out = sched.schedule()
    bm = sched.blocks
    held = {b for seq in sched.running for b in seq.block_table}
    assert out.num_live == len(held) == bm.num_used
    for s, table in zip(out.scheduled, out.tables, strict=True):
        assert s.seq in sched.running
        assert len(s.seq.block_table) * bm.block_size >= s.seq.num_computed + s.num_tokens
        assert table == [bm.slot(b) for b in s.seq.block_table]
        assert all(slot < out.num_live for slot in table)
    assert out.num_tokens <= sched.config.max_num_batched_tokens
    sched.update(out)
    for s in out.scheduled:
        if s.samples:
            s.seq.token_ids.append(7)
            if s.seq.num_output_tokens >= s.seq.request.max_tokens:
                sched.finish(s.seq, Status.FINISHED_LENGTH)
    return out


def run_all(sched: Scheduler, limit: int = 10_000) -> int:
    steps = 0
    while sched.has_work:
        fake_step(sched)
        steps += 1
        assert steps < limit
    return steps


def test_admits_up_to_max_num_seqs_then_as_sequences_leave() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=100))
    a, b, c = (make_seq(sched, 4, 3) for _ in range(3))
    out = fake_step(sched)
    assert [s.seq for s in out.scheduled] == [a, b]
    assert c.status is Status.WAITING
    fake_step(sched)
    fake_step(sched)  # a and b produce their 3rd token and finish
    assert a.status is Status.FINISHED_LENGTH
    out = fake_step(sched)
    assert [s.seq for s in out.scheduled] == [c]
    assert c.block_table == [sched.blocks.blocks[c.block_table[0]].id]


def test_decode_is_one_token_per_sequence_per_step() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=100))
    seqs = [make_seq(sched, 5, 4) for _ in range(3)]
    first = fake_step(sched)
    assert [s.num_tokens for s in first.scheduled] == [5, 5, 5]
    assert all(s.samples for s in first.scheduled)
    second = fake_step(sched)
    assert [s.num_tokens for s in second.scheduled] == [1, 1, 1]
    assert all(s.num_output_tokens == 2 for s in seqs)


def test_token_budget_chunks_a_long_prompt() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=8))
    seq = make_seq(sched, 20, 2)
    chunks = []
    while seq.num_output_tokens == 0:
        out = fake_step(sched)
        chunks.append((out.scheduled[0].num_tokens, out.scheduled[0].samples))
    assert chunks == [(8, False), (8, False), (4, True)]


def test_decodes_are_not_starved_by_prefills() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=10))
    running = make_seq(sched, 3, 50)
    fake_step(sched)
    late = make_seq(sched, 30, 2)
    out = fake_step(sched)
    by_seq = {s.seq: s.num_tokens for s in out.scheduled}
    assert by_seq == {running: 1, late: 9}


def test_online_is_admitted_before_batch() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=100))
    batch = make_seq(sched, 4, 1, online=False)
    online = make_seq(sched, 4, 1, online=True)
    out = fake_step(sched)
    assert [s.seq for s in out.scheduled] == [online]
    out = fake_step(sched)
    assert [s.seq for s in out.scheduled] == [batch]


def test_kv_blocks_limit_admission() -> None:
    # 10 blocks of 16; a prompt of 20 needs 2, and while others run 1 block stays free plus
    # one per running sequence: the 3rd leaves 4 free, the 4th would need 2 + 1 + 3.
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=1000, num_kv_blocks=10))
    seqs = [make_seq(sched, 20, 5, first=100 * i) for i in range(6)]
    out = fake_step(sched)
    assert len(out.scheduled) == 3
    assert sched.blocks.num_used == 6
    assert [s.status for s in seqs[3:]] == [Status.WAITING] * 3


def test_preemption_when_the_cache_is_full_then_recompute() -> None:
    # Four blocks: two sequences of up to 40 tokens (3 blocks each) start together and both
    # grow: the newer one is preempted, recomputed later, and both produce all their tokens.
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=1000, num_kv_blocks=4))
    old = make_seq(sched, 10, 30)
    new = make_seq(sched, 10, 30, first=100)
    preempted: list[Sequence] = []
    while sched.has_work:
        out = fake_step(sched)
        preempted += out.preempted
    assert preempted[0] is new
    assert new.preemptions >= 1
    assert old.preemptions == 0
    assert old.num_output_tokens == new.num_output_tokens == 30
    assert old.status is new.status is Status.FINISHED_LENGTH
    assert sched.blocks.num_used == 0


def test_batch_is_preempted_before_online() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=1000, num_kv_blocks=4))
    batch = make_seq(sched, 10, 30, online=False)
    fake_step(sched)
    online = make_seq(sched, 10, 30, online=True, first=100)
    victims: list[Sequence] = []
    while not victims:
        victims = fake_step(sched).preempted
    assert victims == [batch]
    assert online.status is Status.RUNNING


def test_blocks_in_use_stay_in_the_first_slots() -> None:
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=100, num_kv_blocks=16))
    a, b, c = (make_seq(sched, 20, 10, first=100 * i) for i in range(3))
    fake_step(sched)
    fake_step(sched)
    sched.finish(a, Status.FINISHED_CANCELLED)
    out = fake_step(sched)
    assert out.num_live == 4
    assert sorted(slot for table in out.tables for slot in table) == [0, 1, 2, 3]
    assert sched.running == [b, c]


def test_memory_grows_with_the_tokens_held() -> None:
    # One 200-token prompt and ten 10-token ones share 40 blocks (640 positions); a rectangle
    # as wide as the long one would hold three of them.
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=1000, num_kv_blocks=40))
    long = make_seq(sched, 200, 5)
    short = [make_seq(sched, 10, 5, first=1000 + 20 * i) for i in range(10)]
    fake_step(sched)
    assert sched.running == [long, *short]
    assert sched.blocks.num_used == 13 + 10


def test_finish_a_waiting_sequence() -> None:
    sched = Scheduler(SchedulerConfig(max_num_seqs=1))
    make_seq(sched, 4, 2)
    waiting = make_seq(sched, 4, 2)
    sched.finish(waiting, Status.FINISHED_CANCELLED)
    assert sched.num_waiting == 1
    assert waiting.status is Status.FINISHED_CANCELLED


def test_everything_finishes_under_pressure() -> None:
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, num_kv_blocks=24, block_size=8)
    )
    seqs = [
        make_seq(sched, 10 + (i * 7) % 50, 5 + (i * 13) % 40, online=i % 3 != 0, first=i % 4)
        for i in range(40)
    ]
    run_all(sched)
    assert sched.blocks.num_used == 0
    assert all(s.status is Status.FINISHED_LENGTH for s in seqs)
    assert all(s.num_output_tokens == s.request.max_tokens for s in seqs)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        SchedulerConfig(num_kv_blocks=0)
    with pytest.raises(ValueError, match="block_size"):
        SchedulerConfig(block_size=0)
