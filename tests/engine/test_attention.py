"""The batched prompt-chunk attention: chunks that follow KV already in the cache (a cached
prefix, earlier chunks) are padded into groups and attended in one call per group; the
result is the same as attending to each chunk alone, and greedy output is the same with the
prefix cache as without it."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

from schemas.params import SamplingParams
from workers.engine import model_runner
from workers.engine.engine import Engine
from workers.engine.model_runner import MAX_PADDING, _Chunk, group_chunks
from workers.engine.sequence import EngineRequest

from .conftest import run_to_end

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 250) for _ in range(n)]


def request(rid: str, ids: list[int], n: int) -> EngineRequest:
    return EngineRequest(id=rid, prompt_token_ids=ids, params=GREEDY, max_tokens=n)


def chunk(n: int, blocks: int, start: int = 0) -> _Chunk:
    return _Chunk(start, n, 16, list(range(blocks)))


def test_groups_keep_every_chunk_and_bound_the_padding() -> None:
    chunks = [chunk(32, 17), chunk(31, 17), chunk(700, 30), chunk(5, 2), chunk(30, 17)]
    groups = group_chunks(chunks)
    assert sorted(id(c) for g in groups for c in g) == sorted(id(c) for c in chunks)
    for g in groups:
        padded = len(g) * max(c.num_tokens for c in g) * max(len(c.slots) for c in g)
        assert padded <= MAX_PADDING * sum(c.area for c in g)
    assert len(groups) < len(chunks)
    # Chunks alike (a shared prefix's suffixes) all go together.
    assert [len(g) for g in group_chunks([chunk(32, 17) for _ in range(40)])] == [40]


def prefill_step_logits(engine: Engine) -> torch.Tensor:
    """Prefill a shared prefix, start decoding it, then run one step in which six requests of
    different suffix lengths join on the cached prefix: that step's logits."""
    system = tokens(50, 1)
    engine.add(request("first", [*system, 3], 8))
    engine.step()
    engine.step()
    for i in range(6):
        engine.add(request(f"r{i}", system + tokens(2 + 5 * i, 10 + i), 4))
    sched = engine.scheduler
    out = sched.schedule()
    assert sum(1 for s in out.scheduled if s.num_tokens > 1 and s.start > 0) == 6
    logits = engine.runner.run(out)
    sched.update(out)
    return logits


def test_grouped_chunks_attend_as_one_chunk_at_a_time(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    grouped = prefill_step_logits(make_engine())
    monkeypatch.setattr(model_runner, "MAX_PADDING", 0.0)  # every chunk in its own group
    alone = prefill_step_logits(make_engine())
    assert grouped.shape == alone.shape == (7, grouped.shape[1])
    assert torch.allclose(grouped, alone, atol=1e-5)


def test_many_chunks_on_a_cached_prefix_in_one_step_give_the_same_greedy_output(
    make_engine: Callable[..., Engine],
) -> None:
    system = tokens(70, 2)

    def outputs(caching: bool) -> tuple[dict[str, list[int]], dict[str, int]]:
        engine = make_engine(enable_prefix_caching=caching)
        engine.add(request("first", [*system, 5], 6))
        got: dict[str, list[int]] = {}
        for o in engine.step():
            got.setdefault(o.id, []).extend(o.token_ids)
        for i in range(8):
            engine.add(request(f"r{i}", system + tokens(1 + 7 * i, 20 + i), 10))
        cached = {}
        for rid, outs in run_to_end(engine).items():
            got.setdefault(rid, []).extend(t for o in outs for t in o.token_ids)
            cached[rid] = outs[-1].num_cached_tokens
        return got, cached

    with_cache, cached = outputs(True)
    without, none = outputs(False)
    assert with_cache == without
    assert set(none.values()) == {0}
    assert cached == {"first": 0, **{f"r{i}": 64 for i in range(8)}}
