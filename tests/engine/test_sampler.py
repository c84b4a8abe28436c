"""The sampler on crafted logits: no model needed."""

from __future__ import annotations

import math

import pytest
import torch

from schemas.params import SamplingParams
from workers.engine.sampler import Sampler
from workers.engine.sequence import EngineRequest, Sequence


def seq(
    params: SamplingParams,
    prompt: list[int] | None = None,
    output: list[int] | None = None,
    rid: str = "s",
) -> Sequence:
    s = Sequence(
        EngineRequest(id=rid, prompt_token_ids=prompt or [0], params=params, max_tokens=10), 1
    )
    s.token_ids.extend(output or [])
    return s


LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0]])


def pick(
    params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None
) -> int:
    row = seq(params, prompt=prompt, output=output)
    return Sampler(seed=0).sample(LOGITS.clone(), [row])[0].token_id


def test_greedy_and_its_equivalents() -> None:
    assert pick(SamplingParams(temperature=0.0)) == 1
    for _ in range(5):
        assert pick(SamplingParams(temperature=1.0, top_k=1)) == 1
        assert pick(SamplingParams(temperature=1.0, top_p=0.01)) == 1


def test_top_k_and_top_p_restrict_the_support() -> None:
    sampler = Sampler(seed=1)
    k2 = {
        sampler.sample(LOGITS.clone(), [seq(SamplingParams(top_k=2))])[0].token_id
        for _ in range(200)
    }
    assert k2 == {1, 2}
    # p(1) ~ 0.63, p(2) ~ 0.23: top_p=0.8 keeps exactly tokens 1 and 2.
    p = {
        sampler.sample(LOGITS.clone(), [seq(SamplingParams(top_p=0.8))])[0].token_id
        for _ in range(200)
    }
    assert p == {1, 2}


def test_sampling_follows_the_distribution() -> None:
    sampler = Sampler(seed=2)
    counts = [0] * 5
    n = 4000
    for _ in range(n):
        counts[sampler.sample(LOGITS.clone(), [seq(SamplingParams())])[0].token_id] += 1
    probs = torch.softmax(LOGITS[0], -1)
    for observed, expected in zip(counts, probs.tolist(), strict=True):
        assert abs(observed / n - expected) < 0.03


def test_repetition_penalty() -> None:
    # Token 1 was seen: 3.0 / 2 = 1.5 < 2.0, so greedy moves to token 2.
    assert pick(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[1]) == 2
    assert pick(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[0]) == 1


def test_frequency_and_presence_penalties() -> None:
    # Output has token 1 twice: 3.0 - 2 * 0.6 = 1.8 < 2.0.
    assert pick(SamplingParams(temperature=0.0, frequency_penalty=0.6), output=[1, 1]) == 2
    assert pick(SamplingParams(temperature=0.0, frequency_penalty=0.6), output=[1]) == 1
    assert pick(SamplingParams(temperature=0.0, presence_penalty=1.5), output=[1]) == 2


def test_seeded_rows_are_reproducible_in_any_batch() -> None:
    params = SamplingParams(temperature=1.0, seed=7)
    logits = torch.randn(1, 50)

    def draw(batch: int) -> list[int]:
        sampler = Sampler(seed=None)
        rows = [seq(params, rid="seeded")] + [
            seq(SamplingParams(), rid=f"o{i}") for i in range(batch)
        ]
        out = []
        for _ in range(20):
            choices = sampler.sample(logits.repeat(len(rows), 1), rows)
            out.append(choices[0].token_id)
        return out

    assert draw(0) == draw(5)


def test_logprobs_are_the_raw_distribution() -> None:
    sampler = Sampler(seed=0)
    params = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2, repetition_penalty=2.0)
    (choice,) = sampler.sample(LOGITS.clone(), [seq(params, prompt=[1])])
    raw = torch.log_softmax(LOGITS[0], -1)
    assert choice.token_id == 2
    assert choice.logprob == pytest.approx(float(raw[2]))
    assert [t for t, _ in choice.top] == [1, 2]
    assert choice.top[0][1] == pytest.approx(float(raw[1]))
    assert math.isclose(sum(math.exp(v) for v in raw.tolist()), 1.0, rel_tol=1e-5)
