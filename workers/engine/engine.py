"""The engine: requests in, a step at a time, token outputs out. Single-threaded; the worker
runs it on a dedicated thread (see `backend`).

    def step(self):
        out = self.scheduler.schedule()
        logits = self.runner.run(out)
        return self._update(out, logits)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch

from schemas.errors import ErrorCode
from workers.engine.constraints import MaskComputer
from workers.engine.detokenizer import IncrementalDetokenizer
from workers.engine.sampler import Sampler, TokenChoice
from workers.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from workers.engine.sequence import EngineRequest, Sequence, Status
from workers.errors import PermanentError


class Runner(Protocol):
    def run(self, out: SchedulerOutput) -> torch.Tensor: ...


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 1024
    #: KV cache size in token positions (rounded down to whole blocks).
    kv_cache_tokens: int = 64 * 1024
    #: Token positions per KV block (also the prefix cache's granularity). 64, not vLLM's 16:
    #: decoding multiplies every block in use in one batched product, and on CPU a product of
    #: 4x more, 4x smaller blocks took 2.2x as long (57 sequences, 15,600 positions, bf16:
    #: 2.3 ms a layer at 16, 1.5 at 32, 1.0 at 64, 1.3 at 128). vLLM's CPU backend uses 128.
    block_size: int = 64
    enable_prefix_caching: bool = True
    #: Longest sequence (prompt + output) accepted.
    max_model_len: int = 4096
    seed: int | None = None

    @property
    def num_kv_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size

    def scheduler_config(self) -> SchedulerConfig:
        """The scheduler's share of this config: each `SchedulerConfig` field has its namesake
        here (`num_kv_blocks` derived), so the fields are listed once, in `SchedulerConfig`."""
        return SchedulerConfig(**{f.name: getattr(self, f.name) for f in fields(SchedulerConfig)})


@dataclass
class Output:
    """What one step produced for one sequence."""

    id: str
    #: New text (never part of a UTF-8 character, never part of a stop string).
    delta: str
    #: Tokens sampled this step (one, or none when the sequence only finished).
    token_ids: list[int]
    choices: list[TokenChoice]
    #: Set on the sequence's last output.
    finish: Status | None
    num_prompt_tokens: int
    num_output_tokens: int
    #: The full output text, on the last output.
    text: str | None = None
    #: Prompt tokens whose KV came from the prefix cache (whole blocks).
    num_cached_tokens: int = 0


class Engine:
    def __init__(
        self,
        runner: Runner,
        tokenizer: Any,
        config: EngineConfig,
        *,
        masks: MaskComputer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`tokenizer`: a `tokenizers.Tokenizer` (for detokenization)."""
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.scheduler = Scheduler(config.scheduler_config())
        self.sampler = Sampler(config.seed)
        self._masks = masks
        self._clock = clock
        self._seqs: dict[str, Sequence] = {}
        self._detok: dict[str, IncrementalDetokenizer] = {}
        self.steps = 0
        #: Mean prompt + output length of finished sequences (sizes capacity estimates).
        self.mean_seq_len = 256.0

    # -- requests --------------------------------------------------------------------------

    def check(self, prompt_len: int, max_tokens: int | None) -> int:
        """The request's effective max_tokens, or PermanentError if it cannot fit."""
        limit = self.config.max_model_len
        kv_tokens = self.config.num_kv_blocks * self.config.block_size
        if prompt_len >= min(limit, kv_tokens):
            raise PermanentError(
                f"prompt has {prompt_len} tokens; this model accepts at most "
                f"{min(limit, kv_tokens) - 1} (context {limit}, KV cache budget {kv_tokens})",
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            )
        room = limit - prompt_len
        if max_tokens is None:
            max_tokens = min(limit, kv_tokens) - prompt_len
        elif max_tokens > room:
            raise PermanentError(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the "
                f"context of {limit} tokens",
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            )
        if not self.scheduler.fits(prompt_len + max_tokens):
            raise PermanentError(
                f"prompt + max_tokens ({prompt_len + max_tokens}) exceeds the KV cache budget",
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
            )
        return max_tokens

    def add(self, request: EngineRequest) -> None:
        if request.id in self._seqs:
            raise PermanentError(f"request {request.id} is already running")
        seq = Sequence(request, self.scheduler.new_arrival())
        self._seqs[request.id] = seq
        self._detok[request.id] = IncrementalDetokenizer(
            self.tokenizer, request.prompt_token_ids, list(request.params.stop)
        )
        self.scheduler.add(seq)

    def abort(self, request_id: str, status: Status = Status.FINISHED_CANCELLED) -> Output | None:
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq, status)
        return self._final(seq, [], [])

    @property
    def num_unfinished(self) -> int:
        return len(self._seqs)

    def has_work(self) -> bool:
        return self.scheduler.has_work

    def capacity(self) -> int:
        """Requests the engine can hold: `max_num_seqs`, and the KV blocks at the mean
        sequence length."""
        per_seq = max(1, -(-int(self.mean_seq_len) // self.config.block_size))
        return max(1, min(self.config.max_num_seqs, self.config.num_kv_blocks // per_seq))

    # -- the step ----------------------------------------------------------------------------

    def step(self) -> list[Output]:
        outputs = self._expire()
        out = self.scheduler.schedule()
        if out.is_empty:
            return outputs
        sampling = [s.seq for s in out.scheduled if s.samples]
        rows = [i for i, seq in enumerate(sampling) if seq.request.constraint is not None]
        masks = None
        if rows:
            if self._masks is None:
                raise RuntimeError("constrained request on an engine without a mask computer")
            # Masks depend only on tokens already sampled: compute them during the forward.
            masks = self._masks.start([sampling[i].request.constraint for i in rows])
        logits = self.runner.run(out)
        self.steps += 1
        allowed = None
        if masks is not None:
            assert self._masks is not None
            allowed = (rows, self._masks.allowed(masks.result(), logits.shape[1]))
        self.scheduler.update(out)
        choices = self.sampler.sample(logits, sampling, allowed)
        return outputs + [self._append(seq, c) for seq, c in zip(sampling, choices, strict=True)]

    def _expire(self) -> list[Output]:
        now = self._clock()
        late = [
            s
            for s in self._seqs.values()
            if s.request.deadline is not None and s.request.deadline <= now
        ]
        outputs = []
        for seq in late:
            self.scheduler.finish(seq, Status.FINISHED_DEADLINE)
            outputs.append(self._final(seq, [], []))
        return outputs

    def _append(self, seq: Sequence, choice: TokenChoice) -> Output:
        token = choice.token_id
        seq.token_ids.append(token)
        request = seq.request
        detok = self._detok[seq.id]
        status: Status | None = None
        constraint = request.constraint
        eos = token in request.eos_token_ids and (
            not request.params.ignore_eos or constraint is not None
        )
        if eos or token in request.params.stop_token_ids:
            status = Status.FINISHED_STOP
        else:
            detok.add(token)
            if detok.hit_stop():
                status = Status.FINISHED_STOP
        if constraint is not None and status is None:
            if not constraint.consume(token):
                raise RuntimeError(f"grammar rejected a masked token: {constraint.error()}")
            if constraint.finished:
                status = Status.FINISHED_STOP
        if status is None and seq.num_output_tokens >= request.max_tokens:
            status = Status.FINISHED_LENGTH
        if status is not None:
            self.scheduler.finish(seq, status)
            return self._final(seq, [token], [choice])
        return Output(
            seq.id,
            detok.delta(final=False),
            [token],
            [choice],
            None,
            seq.num_prompt_tokens,
            seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )

    def _final(self, seq: Sequence, tokens: list[int], choices: list[TokenChoice]) -> Output:
        detok = self._detok.pop(seq.id)
        del self._seqs[seq.id]
        self.sampler.forget(seq.id)
        self.mean_seq_len = 0.9 * self.mean_seq_len + 0.1 * len(seq.token_ids)
        return Output(
            seq.id,
            detok.delta(final=True),
            tokens,
            choices,
            seq.status,
            seq.num_prompt_tokens,
            seq.num_output_tokens,
            detok.text,
            seq.num_cached_tokens,
        )
