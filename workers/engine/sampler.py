"""Turning a step's logits into tokens, per request: penalties, greedy or temperature with
top-k / top-p, per-request seeds, and log-probabilities.

Rows are processed together where the parameters allow; only seeded rows draw their noise
one by one (each from its own generator, so a seed gives the same tokens whatever else is in
the batch). Sampling uses the exponential race (`argmax(p / q)`, `q ~ Exp(1)`), which equals
drawing from `p`.

Log-probabilities are those of the model's raw distribution (before penalties and
temperature), like vLLM's default.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from schemas.params import SamplingParams
from workers.engine.sequence import Sequence


@dataclass(frozen=True)
class TokenChoice:
    token_id: int
    #: Raw log-probability of the chosen token (when asked for).
    logprob: float | None = None
    #: Most likely alternatives: (token id, log-probability).
    top: tuple[tuple[int, float], ...] = ()


class Sampler:
    def __init__(self, seed: int | None = None) -> None:
        self._shared = torch.Generator()
        if seed is not None:
            self._shared.manual_seed(seed)
        else:
            self._shared.seed()
        self._generators: dict[str, torch.Generator] = {}

    def forget(self, seq_id: str) -> None:
        self._generators.pop(seq_id, None)

    def sample(
        self,
        logits: torch.Tensor,
        seqs: Seq[Sequence],
        allowed: tuple[list[int], torch.Tensor] | None = None,
    ) -> list[TokenChoice]:
        """One token per row of `logits` [N, V] (float32), for `seqs` in the same order.
        `allowed`: (rows, bool mask [len(rows), V]) restricting those rows (grammars)."""
        params = [s.request.params for s in seqs]
        raw = logits
        logits = logits.clone()
        self._penalize(logits, seqs, params)
        if allowed is not None:
            rows, mask = allowed
            logits[rows] = logits[rows].masked_fill(~mask, float("-inf"))
        tokens = self._choose(logits, seqs, params)
        return self._with_logprobs(raw, tokens, params)

    # -- penalties -------------------------------------------------------------------------

    def _penalize(
        self, logits: torch.Tensor, seqs: Seq[Sequence], params: list[SamplingParams]
    ) -> None:
        vocab = logits.shape[1]
        for i, (seq, p) in enumerate(zip(seqs, params, strict=True)):
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
                seen = seen[seen < vocab]
                row = logits[i, seen]
                logits[i, seen] = torch.where(
                    row > 0, row / p.repetition_penalty, row * p.repetition_penalty
                )
            if p.frequency_penalty or p.presence_penalty:
                out = torch.tensor(seq.output_token_ids, dtype=torch.long)
                counts = torch.bincount(out[out < vocab], minlength=vocab).to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts
                logits[i] -= p.presence_penalty * (counts > 0).to(logits.dtype)

    # -- choosing --------------------------------------------------------------------------

    def _choose(
        self, logits: torch.Tensor, seqs: Seq[Sequence], params: list[SamplingParams]
    ) -> list[int]:
        greedy = [i for i, p in enumerate(params) if p.temperature == 0.0]
        sampled = [i for i, p in enumerate(params) if p.temperature != 0.0]
        tokens = [0] * len(params)
        if greedy:
            picks = logits[greedy].argmax(dim=-1).tolist()
            for i, t in zip(greedy, picks, strict=True):
                tokens[i] = int(t)
        if sampled:
            rows = logits[sampled]
            temps = torch.tensor([params[i].temperature for i in sampled])
            rows = rows / temps[:, None]
            rows = _top_k(rows, [params[i].top_k for i in sampled])
            rows = _top_p(rows, [params[i].top_p for i in sampled])
            probs = torch.softmax(rows, dim=-1)
            noise = torch.empty_like(probs)
            shared = [j for j, i in enumerate(sampled) if params[i].seed is None]
            if shared:
                noise[shared] = torch.empty(len(shared), probs.shape[1]).exponential_(
                    generator=self._shared
                )
            for j, i in enumerate(sampled):
                if params[i].seed is not None:
                    noise[j].exponential_(generator=self._generator(seqs[i]))
            picks = (probs / noise).argmax(dim=-1).tolist()
            for i, t in zip(sampled, picks, strict=True):
                tokens[i] = int(t)
        return tokens

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self._generators.get(seq.id)
        if gen is None:
            gen = torch.Generator()
            gen.manual_seed(int(seq.request.params.seed or 0))
            self._generators[seq.id] = gen
        return gen

    # -- log-probabilities -----------------------------------------------------------------

    def _with_logprobs(
        self, raw: torch.Tensor, tokens: list[int], params: list[SamplingParams]
    ) -> list[TokenChoice]:
        wanted = [i for i, p in enumerate(params) if p.logprobs or p.top_logprobs]
        if not wanted:
            return [TokenChoice(t) for t in tokens]
        choices = [TokenChoice(t) for t in tokens]
        logprobs = torch.log_softmax(raw[wanted], dim=-1)
        for j, i in enumerate(wanted):
            chosen = float(logprobs[j, tokens[i]])
            top: tuple[tuple[int, float], ...] = ()
            k = params[i].top_logprobs
            if k:
                values, ids = logprobs[j].topk(k)
                top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
            choices[i] = TokenChoice(tokens[i], chosen, top)
        return choices


def _top_k(rows: torch.Tensor, ks: list[int]) -> torch.Tensor:
    if not any(ks):
        return rows
    vocab = rows.shape[1]
    k = torch.tensor([k if 0 < k < vocab else vocab for k in ks])
    kth = rows.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return rows.masked_fill(rows < kth, float("-inf"))


def _top_p(rows: torch.Tensor, ps: list[float]) -> torch.Tensor:
    if all(p >= 1.0 for p in ps):
        return rows
    p = torch.tensor(ps)[:, None]
    ordered, order = rows.sort(dim=-1, descending=True)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach p (the first always stays).
    drop = (cumulative - torch.softmax(ordered, dim=-1)) >= p
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(rows).scatter_(1, order, ordered)
