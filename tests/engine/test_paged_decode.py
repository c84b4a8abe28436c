"""The CPU paged decode kernel against attention written out per row (float64 products over
the row's blocks gathered in order), on shapes the engine uses: grouped query heads, partial
last blocks, blocks shared by several rows, float32 and bfloat16."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

from schemas.params import SamplingParams
from workers.engine import paged_decode
from workers.engine.engine import Engine
from workers.engine.model_runner import ModelRunner
from workers.engine.sequence import EngineRequest

from .conftest import run_to_end

pytestmark = pytest.mark.skipif(
    paged_decode.library() is None, reason="no C compiler to build the kernel"
)


def _reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tables: list[list[int]],
    lengths: list[int],
    scale: float,
) -> torch.Tensor:
    rows, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    out = torch.empty(rows, heads, dim, dtype=torch.float64)
    for r, (table, length) in enumerate(zip(tables, lengths, strict=True)):
        keys = k_cache[table].double().permute(1, 0, 3, 2).reshape(kv_heads, -1, dim)[:, :length]
        values = v_cache[table].double().transpose(0, 1).reshape(kv_heads, -1, dim)[:, :length]
        keys = keys.repeat_interleave(group, dim=0)
        values = values.repeat_interleave(group, dim=0)
        scores = torch.einsum("hd,hpd->hp", q[r].double() * scale, keys)
        out[r] = torch.einsum("hp,hpd->hd", scores.softmax(-1), values)
    return out


Case = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]], list[int]]


def _case(dtype: torch.dtype, block: int, kv_heads: int, group: int, dim: int, seed: int) -> Case:
    gen = torch.Generator().manual_seed(seed)
    slots = 40
    k_cache = torch.randn(slots, kv_heads, dim, block, generator=gen).to(dtype)
    v_cache = torch.randn(slots, kv_heads, block, dim, generator=gen).to(dtype)
    order = torch.randperm(slots, generator=gen).tolist()
    shared = order[:2]  # a prefix of two full blocks, held by rows 0 and 2
    lengths = [2 * block + 1, block // 2, 3 * block, 1, 5 * block - 3]
    tables, free = [], order[2:]
    for r, length in enumerate(lengths):
        need = -(-length // block)
        if r in (0, 2):
            tables.append(shared + free[: need - 2])
            free = free[need - 2 :]
        else:
            tables.append(free[:need])
            free = free[need:]
    q = torch.randn(len(lengths), kv_heads * group, dim, generator=gen).to(dtype)
    return q, k_cache, v_cache, tables, lengths


@pytest.mark.parametrize(
    ("dtype", "block", "kv_heads", "group", "dim"),
    [
        (torch.float32, 16, 4, 2, 64),
        (torch.float32, 64, 3, 3, 32),
        (torch.float32, 8, 1, 1, 16),
        (torch.bfloat16, 64, 4, 2, 64),
        (torch.bfloat16, 16, 2, 7, 48),
    ],
)
def test_kernel_matches_attention_per_row(
    dtype: torch.dtype, block: int, kv_heads: int, group: int, dim: int
) -> None:
    q, k_cache, v_cache, tables, lengths = _case(dtype, block, kv_heads, group, dim, seed=block)
    ptr = torch.tensor([0, *torch.tensor([len(t) for t in tables]).cumsum(0).tolist()])
    flat = torch.tensor([s for t in tables for s in t])
    scale = dim**-0.5
    got = paged_decode.decode(q, k_cache, v_cache, ptr, flat, torch.tensor(lengths), scale)
    want = _reference(q, k_cache, v_cache, tables, lengths, scale)
    assert got.dtype == dtype
    assert got.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_threads_do_not_change_the_result() -> None:
    q, k_cache, v_cache, tables, lengths = _case(torch.float32, 16, 4, 2, 64, seed=3)
    ptr = torch.tensor([0, *torch.tensor([len(t) for t in tables]).cumsum(0).tolist()])
    flat = torch.tensor([s for t in tables for s in t])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paged_decode.decode(q, k_cache, v_cache, ptr, flat, torch.tensor(lengths), 0.125)
        torch.set_num_threads(2)
        two = paged_decode.decode(q, k_cache, v_cache, ptr, flat, torch.tensor(lengths), 0.125)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each (row, KV head) is one thread's work, in order


def _engine_run(
    make_engine: Callable[..., Engine], paged: bool, **config: Any
) -> dict[str, list[int]]:
    """Greedy tokens of requests sharing a prefix (blocks held by several rows), in a KV budget
    small enough to preempt, with the decode on the kernel or on the torch path."""
    engine = make_engine(**config)
    assert isinstance(engine.runner, ModelRunner)
    assert engine.runner.paged  # the kernel is used where it is built
    engine.runner.paged = paged
    rng = random.Random(5)
    system = [rng.randrange(10, 250) for _ in range(70)]
    greedy = SamplingParams(temperature=0.0, ignore_eos=True)
    for i in range(6):
        ids = system + [rng.randrange(10, 250) for _ in range(3 + 7 * i)]
        engine.add(EngineRequest(id=str(i), prompt_token_ids=ids, params=greedy, max_tokens=40))
    outs = run_to_end(engine)
    return {rid: [t for o in got for t in o.token_ids] for rid, got in outs.items()}


def test_engine_output_is_the_same_on_the_kernel_and_the_torch_path(
    make_engine: Callable[..., Engine],
) -> None:
    config = {"kv_cache_tokens": 16 * 24}  # 24 blocks of 16 for six sequences of ~150: preempts
    kernel = _engine_run(make_engine, True, **config)
    torch_path = _engine_run(make_engine, False, **config)
    assert len(kernel) == 6
    assert all(len(t) == 40 for t in kernel.values())
    assert kernel == torch_path
