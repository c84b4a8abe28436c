"""Which tokens the model runs each step. Plain code: no torch, no I/O, no clock.

KV memory is counted in blocks (`block_manager`): a running sequence holds the blocks of its
tokens, so memory grows with the tokens held, not with the longest sequence.

Each step (`schedule()`):
1. Every running sequence, in admission order, gets its uncomputed tokens within the step's
   token budget: one for a decoding sequence, a chunk of its prompt for one still prefilling.
   When the blocks for them are not free, the newest batch sequence (then the newest online
   one, then the newest priority one) not yet scheduled in this step is preempted: it gives
   its blocks back and goes to the front of its waiting queue, to be recomputed later (prompt
   and output so far).
2. Waiting sequences are admitted, priority before online before batch (`Priority` order),
   oldest first, while the token budget, `max_num_seqs` and the free blocks allow. Each first
   takes the longest prefix of its tokens already in the prefix cache, and is given blocks for
   the rest of its tokens at once (so its later prompt chunks never wait for memory).
3. Every full block whose last position is computed in this step is registered in the prefix
   cache (a sequence admitted later in the same step may share it: the step writes all new
   keys/values before any attention reads them).

After the model ran, `update()` records which tokens were computed; the engine appends sampled
tokens and calls `finish()` for sequences that are done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from schemas.names import Priority
from workers.engine.block_manager import BlockManager
from workers.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    #: Sequences running at once.
    max_num_seqs: int = 64
    #: Tokens fed to the model in one step: prompt chunks plus one per decoding sequence.
    max_num_batched_tokens: int = 1024
    #: KV cache size, in blocks of `block_size` token positions.
    num_kv_blocks: int = 4096
    block_size: int = 16
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.block_size) < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and block_size must be >= 1")
        if self.num_kv_blocks < 1:
            raise ValueError("the KV cache must hold at least one block")


@dataclass(frozen=True)
class Scheduled:
    seq: Sequence
    #: Tokens fed this step: token_ids[start : start + num_tokens].
    num_tokens: int
    #: Position of the first token fed (the sequence's num_computed when scheduled).
    start: int
    #: This step computes the sequence's last token, so a new token is sampled.
    samples: bool


def _scheduled(seq: Sequence, take: int) -> Scheduled:
    return Scheduled(seq, take, seq.num_computed, seq.num_computed + take == len(seq.token_ids))


@dataclass
class SchedulerOutput:
    scheduled: list[Scheduled]
    #: Physical slots of each scheduled sequence's blocks, in scheduled order.
    tables: list[list[int]]
    #: KV slot swaps (a, b) to apply in order before the step runs.
    swaps: list[tuple[int, int]]
    #: Slots [0, num_live) hold every block in use.
    num_live: int
    #: Slots of the blocks that one-token (decoding) sequences of this step hold together
    #: with another sequence.
    shared: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


_RANK = {p: rank for rank, p in enumerate(Priority)}


def _preemption_order(seq: Sequence) -> tuple[int, int]:
    """The largest is preempted first: the lowest priority, then the newest."""
    return _RANK[seq.request.priority], seq.arrival


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.blocks = BlockManager(
            config.num_kv_blocks, config.block_size, config.enable_prefix_caching
        )
        #: Waiting sequences, one queue per priority, in admission order.
        self.waiting: dict[Priority, deque[Sequence]] = {p: deque() for p in Priority}
        #: Running sequences, in admission order.
        self.running: list[Sequence] = []
        self._arrivals = 0
        #: Blocks kept free at admission while others run (vLLM's watermark), besides one
        #: block per running sequence: room for every running sequence's next `block_size`
        #: tokens, so that an admission does not force a preemption a few steps later (and a
        #: preempted sequence does not bounce straight back in).
        self._watermark = max(1, config.num_kv_blocks // 100)

    # -- queue ---------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting[seq.request.priority].append(seq)

    def new_arrival(self) -> int:
        self._arrivals += 1
        return self._arrivals

    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    @property
    def has_work(self) -> bool:
        return bool(self.running) or any(self.waiting.values())

    def kv_usage(self) -> float:
        """Fraction of the KV blocks held by running sequences."""
        return self.blocks.num_used / self.config.num_kv_blocks

    def fits(self, seq_len: int) -> bool:
        """Whether a sequence of `seq_len` tokens could ever run alone in the cache."""
        return self.blocks.blocks_for(seq_len) <= self.config.num_kv_blocks

    # -- leaving ---------------------------------------------------------------------------

    def finish(self, seq: Sequence, status: Status) -> None:
        """Remove a running or waiting sequence for good."""
        assert status.is_finished
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self._free(seq)
        else:
            queue = self.waiting[seq.request.priority]
            if seq in queue:
                queue.remove(seq)
        seq.status = status

    def _free(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.block_table = []
        seq.num_registered = 0

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.status = Status.PREEMPTED
        seq.num_computed = 0
        seq.preemptions += 1
        self.waiting[seq.request.priority].appendleft(seq)

    # -- the step --------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        preempted: list[Sequence] = []
        scheduled: list[Scheduled] = []

        # 1: the running sequences, preempting while their blocks are not free.
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            take = min(seq.num_uncomputed, budget)
            if take <= 0:
                i += 1
                continue
            need = self.blocks.blocks_for(seq.num_computed + take) - len(seq.block_table)
            while need > self.blocks.num_free and seq.status is Status.RUNNING:
                victim = max(self.running[i:], key=_preemption_order)
                self._preempt(victim)
                preempted.append(victim)
            if seq.status is not Status.RUNNING:
                continue  # it was the victim; the next sequence is now at index i
            seq.block_table.extend(self.blocks.allocate() for _ in range(need))
            scheduled.append(_scheduled(seq, take))
            self._register(seq, seq.num_computed + take)
            budget -= take
            i += 1

        # 2: admissions. A sequence preempted in this step is not readmitted in it.
        for queue in self.waiting.values():
            while queue and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = queue[0]
                if seq in preempted or not self._admit(seq, budget):
                    break
                queue.popleft()
                scheduled.append(_scheduled(seq, min(seq.num_uncomputed, budget)))
                budget -= scheduled[-1].num_tokens
                self._register(seq, seq.num_computed + scheduled[-1].num_tokens)

        return self._output(scheduled, preempted)

    def _admit(self, seq: Sequence, budget: int) -> bool:
        """Take the sequence's cached prefix and blocks for the rest, if they are free."""
        bm = self.blocks
        tokens = seq.token_ids
        # At least one token is computed, so that a next token can be sampled.
        extras = seq.block_extras(bm.block_size)
        full = (len(tokens) - 1) // bm.block_size
        seq.block_hashes = bm.hashes(tokens, seq.block_hashes, full, extras)
        hits = bm.lookup(tokens, seq.block_hashes, extras)
        new = bm.blocks_for(len(tokens)) - len(hits)
        reserve = self._watermark + len(self.running) if self.running else 0
        if not bm.can_take(new + reserve, hits):
            bm.touch(hits)
            return False
        cached = len(hits) * bm.block_size
        if seq.preemptions == 0:
            bm.count_query(seq.num_prompt_tokens, min(cached, seq.num_prompt_tokens))
            seq.num_cached_tokens = min(cached, seq.num_prompt_tokens)
        bm.hold(hits)
        seq.block_table = hits + [bm.allocate() for _ in range(new)]
        seq.num_registered = len(hits)
        seq.num_computed = cached
        seq.status = Status.RUNNING
        self.running.append(seq)
        return True

    def _register(self, seq: Sequence, computed: int) -> None:
        """Register the full blocks of `seq` whose positions are all computed by `computed`."""
        bm = self.blocks
        full = computed // bm.block_size
        if not bm.enable_caching or full <= seq.num_registered:
            return
        bs = bm.block_size
        extras = seq.block_extras(bs)
        seq.block_hashes = bm.hashes(seq.token_ids, seq.block_hashes, full, extras)
        for j in range(seq.num_registered, full):
            ids = tuple(seq.token_ids[j * bs : (j + 1) * bs])
            extra = extras.get(j) if extras else None
            bm.register(seq.block_table[j], seq.block_hashes[j], ids, extra)
        seq.num_registered = full

    def _output(self, scheduled: list[Scheduled], preempted: list[Sequence]) -> SchedulerOutput:
        bm = self.blocks
        tables = []
        shared: set[int] = set()
        for s in scheduled:
            table = s.seq.block_table
            tables.append([bm.slot(b) for b in table])
            if s.num_tokens == 1:
                shared.update(bm.slot(b) for b in table if bm.blocks[b].ref_count > 1)
        return SchedulerOutput(
            scheduled, tables, bm.take_swaps(), bm.num_live, sorted(shared), preempted
        )

    def update(self, output: SchedulerOutput) -> None:
        """Record that the model computed the scheduled tokens."""
        for s in output.scheduled:
            s.seq.num_computed += s.num_tokens
