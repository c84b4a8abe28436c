"""Which tokens the model runs each step. Plain code: no torch, no I/O, no clock.

The KV cache is a rectangle: one row per running sequence (rows are kept dense: a sequence
that leaves is replaced by the last row, reported as a move), and enough columns for the
longest running sequence. Its area, rows x columns, must stay within `kv_budget_tokens`.

Each step (`schedule()`):
1. Every running sequence gets its uncomputed tokens, within the step's token budget: one for
   a decoding sequence, a chunk of its prompt for one still prefilling.
2. If the rectangle that needs no longer fits the KV budget, the newest batch sequence (then
   the newest online one) is preempted: it leaves the cache and goes back to the front of the
   waiting queue, to be recomputed later (prompt and output so far).
3. Waiting sequences are admitted, online before batch, oldest first, while the token budget,
   `max_num_seqs` and the KV budget allow.

After the model ran, `update()` records which tokens were computed; the engine appends sampled
tokens and calls `finish()` for sequences that are done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from workers.engine.sequence import Sequence, Status


@dataclass(frozen=True)
class SchedulerConfig:
    #: Sequences running at once (rows of the KV cache).
    max_num_seqs: int = 64
    #: Tokens fed to the model in one step: prompt chunks plus one per decoding sequence.
    max_num_batched_tokens: int = 1024
    #: KV cache area (rows x columns, in token positions).
    kv_budget_tokens: int = 64 * 2048
    #: Columns grow in multiples of this.
    kv_block: int = 32
    #: Columns grow by at least this factor, so the cache is re-laid out rarely.
    kv_growth: float = 1.25

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.kv_block < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and kv_block must be >= 1")
        if self.kv_budget_tokens < self.kv_block:
            raise ValueError("kv_budget_tokens must hold at least one block")


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
    #: In row order.
    scheduled: list[Scheduled]
    #: KV rows to copy (src row, dst row, positions), in order, before the step runs.
    moves: list[tuple[int, int, int]]
    #: Shape of the KV cache rectangle this step needs: (rows, columns).
    kv_shape: tuple[int, int]
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.online: deque[Sequence] = deque()
        self.batch: deque[Sequence] = deque()
        #: Running sequences; index == KV row.
        self.running: list[Sequence] = []
        self.kv_cols = 0
        self._moves: list[tuple[int, int, int]] = []
        self._arrivals = 0

    # -- queue ---------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        (self.online if seq.request.online else self.batch).append(seq)

    def new_arrival(self) -> int:
        self._arrivals += 1
        return self._arrivals

    @property
    def num_waiting(self) -> int:
        return len(self.online) + len(self.batch)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.online or self.batch)

    def kv_usage(self) -> float:
        """Fraction of the KV budget the current rectangle occupies."""
        return len(self.running) * self.kv_cols / self.config.kv_budget_tokens

    def fits(self, seq_len: int) -> bool:
        """Whether a sequence of `seq_len` tokens could ever run alone in the cache."""
        return _round_up(seq_len, self.config.kv_block) <= self.config.kv_budget_tokens

    # -- leaving ---------------------------------------------------------------------------

    def finish(self, seq: Sequence, status: Status) -> None:
        """Remove a running or waiting sequence for good."""
        assert status.is_finished
        if seq.status is Status.RUNNING:
            self._release_row(seq)
        else:
            for queue in (self.online, self.batch):
                if seq in queue:
                    queue.remove(seq)
        seq.status = status

    def _release_row(self, seq: Sequence) -> None:
        row = seq.slot
        last = self.running.pop()
        if last is not seq:
            self.running[row] = last
            self._moves.append((last.slot, row, last.num_computed))
            last.slot = row
        seq.slot = -1

    def _preempt(self, seq: Sequence) -> None:
        self._release_row(seq)
        seq.status = Status.PREEMPTED
        seq.num_computed = 0
        seq.preemptions += 1
        (self.online if seq.request.online else self.batch).appendleft(seq)

    # -- the step --------------------------------------------------------------------------

    def _cols_for(self, needed: int, current: int) -> int:
        if needed <= current:
            return current
        grown = max(needed, int(current * self.config.kv_growth))
        return _round_up(grown, self.config.kv_block)

    def _maybe_shrink(self) -> None:
        """Give columns back once the longest running sequence needs under half of them."""
        if not self.running:
            self.kv_cols = 0
            return
        live = max(len(s.token_ids) for s in self.running) + 1
        if live * 2 <= self.kv_cols:
            self.kv_cols = _round_up(int(live * self.config.kv_growth), self.config.kv_block)

    def _fits(self, rows: int, cols: int) -> bool:
        return rows * cols <= self.config.kv_budget_tokens

    def _preemption_victim(self) -> Sequence:
        # Newest batch sequence first, then the newest online one.
        return max(self.running, key=lambda s: (not s.request.online, s.arrival))

    def schedule(self) -> SchedulerOutput:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        preempted: list[Sequence] = []
        self._maybe_shrink()

        # 1+2: the running sequences, preempting while their rectangle does not fit.
        while True:
            plan = self._plan_running(budget)
            needed = max((s.seq.num_computed + s.num_tokens for s in plan), default=0)
            cols = self._cols_for(needed, self.kv_cols)
            if self._fits(len(self.running), cols) or len(self.running) <= 1:
                break
            victim = self._preemption_victim()
            self._preempt(victim)
            preempted.append(victim)
        scheduled = plan
        budget -= sum(s.num_tokens for s in scheduled)
        if not self._fits(len(self.running), cols):
            # A single sequence longer than the whole budget: the engine refuses those on
            # arrival (`fits`), so this only happens if the budget was misconfigured.
            raise RuntimeError("KV budget cannot hold a single running sequence")

        # 3: admissions.
        # Columns are sized for a whole prompt at admission, so its later chunks never force
        # a re-layout; a sequence preempted in this step is not readmitted in it.
        for queue in (self.online, self.batch):
            while queue and budget > 0 and len(self.running) < cfg.max_num_seqs:
                seq = queue[0]
                if seq.status is Status.PREEMPTED and seq in preempted:
                    break
                new_cols = self._cols_for(max(needed, seq.num_uncomputed + 1), cols)
                if not self._fits(len(self.running) + 1, new_cols):
                    break
                queue.popleft()
                take = min(seq.num_uncomputed, budget)
                seq.status = Status.RUNNING
                seq.slot = len(self.running)
                self.running.append(seq)
                scheduled.append(_scheduled(seq, take))
                budget -= take
                needed = max(needed, seq.num_uncomputed + 1)
                cols = new_cols

        self.kv_cols = cols
        moves, self._moves = self._moves, []
        return SchedulerOutput(scheduled, moves, (len(self.running), cols), preempted)

    def _plan_running(self, budget: int) -> list[Scheduled]:
        plan: list[Scheduled] = []
        for seq in self.running:
            take = min(seq.num_uncomputed, budget)
            if take <= 0:
                continue
            plan.append(_scheduled(seq, take))
            budget -= take
        return plan

    def update(self, output: SchedulerOutput) -> None:
        """Record that the model computed the scheduled tokens."""
        for s in output.scheduled:
            s.seq.num_computed += s.num_tokens
