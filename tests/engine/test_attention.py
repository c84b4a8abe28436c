"""The batched prompt-chunk attention: chunks attend causally to their own keys and, when KV
is already in the cache before them (a cached prefix, earlier chunks), to that prefix, the two
merged by log-sum-exp; chunks are padded into groups, one call per group and part, and chunks
on the same prefix share it. The result is the same as attending to each chunk alone, and
greedy output is the same with the prefix cache as without it."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch

from schemas.params import SamplingParams
from workers.engine import chunks as chunk_layout
from workers.engine.attention import _attend, _attend_plain
from workers.engine.chunks import MAX_PADDING, Chunk, PrefixRow, prefix_groups, prefix_rows
from workers.engine.engine import Engine
from workers.engine.sequence import EngineRequest

from .conftest import run_to_end

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 250) for _ in range(n)]


def request(rid: str, ids: list[int], n: int) -> EngineRequest:
    return EngineRequest(id=rid, prompt_token_ids=ids, params=GREEDY, max_tokens=n)


def test_chunks_on_the_same_prefix_share_one_row() -> None:
    bs = 16
    # Three suffixes of one cached 64-token prefix (4 blocks), one chunk whose prefix ends
    # mid-block (its own earlier chunk), and a first chunk (no prefix).
    chunks = [
        Chunk(0, 8, 64, [0, 1, 2, 3, 10]),
        Chunk(8, 5, 64, [0, 1, 2, 3, 11]),
        Chunk(13, 20, 64, [0, 1, 2, 3, 12, 13]),
        Chunk(33, 7, 40, [20, 21, 22]),
        Chunk(40, 30, 0, [30, 31]),
    ]
    rows = prefix_rows(chunks, bs)
    assert [(r.length, r.slots, r.tokens) for r in rows] == [
        (64, [0, 1, 2, 3], list(range(0, 33))),
        (40, [20, 21, 22], list(range(33, 40))),
    ]


def test_groups_keep_every_row_and_bound_the_padding() -> None:
    rows = [PrefixRow(64 * b, list(range(b)), list(range(n))) for n, b in MIXED]
    groups = prefix_groups(rows)
    assert sorted(id(r) for g in groups for r in g) == sorted(id(r) for r in rows)
    for g in groups:
        padded = len(g) * max(len(r.tokens) for r in g) * max(len(r.slots) for r in g)
        assert padded <= MAX_PADDING * sum(len(r.tokens) * len(r.slots) for r in g)
    assert len(groups) < len(rows)
    # Rows alike (chunks of different prompts at the same depth) all go together.
    same = [PrefixRow(64, [i], list(range(32))) for i in range(40)]
    assert [len(g) for g in prefix_groups(same)] == [40]


#: (queries, prefix blocks) of rows of different sizes.
MIXED = [(32, 17), (31, 17), (700, 30), (5, 2), (30, 17)]


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
    monkeypatch.setattr(chunk_layout, "MAX_PADDING", 0.0)  # every chunk in its own group
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


def test_the_kernel_path_returns_what_plain_products_give() -> None:
    """`_attend` (torch's flash kernel, with its log-sum-exp) against plain products: causal,
    a key-padding bias, and keys viewed with a non-unit last stride (as a one-block prefix
    gathered from the transposed key cache is)."""
    torch.manual_seed(0)
    q = torch.randn(3, 4, 12, 16)
    k, v = torch.randn(3, 4, 16, 12).transpose(-1, -2), torch.randn(3, 4, 12, 16)
    assert k.stride(-1) != 1
    past = torch.arange(12) >= torch.tensor([12, 5, 1])[:, None]
    bias = torch.zeros(past.shape).masked_fill(past, float("-inf"))[:, None, None]
    for causal, b in ((True, None), (False, bias), (False, None)):
        o, lse = _attend(q, k, v, causal, b, 0.25)
        o_ref, lse_ref = _attend_plain(q, k, v, causal, b, 0.25)
        assert torch.allclose(o, o_ref, atol=1e-5)
        assert torch.allclose(lse, lse_ref, atol=1e-5)
