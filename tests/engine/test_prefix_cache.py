"""Prefix caching on the tiny random model: greedy output with the cache is the output without
it, and `num_cached_tokens` counts exactly the whole blocks reused."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from schemas.params import SamplingParams
from workers.engine.engine import Engine
from workers.engine.sequence import EngineRequest

from .conftest import run_to_end

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)
BS = 16


def tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 250) for _ in range(n)]


def request(rid: str, ids: list[int], n: int, params: SamplingParams = GREEDY) -> EngineRequest:
    return EngineRequest(id=rid, prompt_token_ids=ids, params=params, max_tokens=n)


def run(engine: Engine, reqs: list[EngineRequest], stagger: bool) -> dict[str, Any]:
    """Token ids and cached tokens per request; with `stagger`, one step between arrivals."""
    outs: dict[str, list[Any]] = {}
    for r in reqs:
        engine.add(r)
        if stagger:
            for o in engine.step():
                outs.setdefault(o.id, []).append(o)
    for rid, got in run_to_end(engine).items():
        outs.setdefault(rid, []).extend(got)
    return {
        rid: ([t for o in got for t in o.token_ids], got[-1].num_cached_tokens)
        for rid, got in outs.items()
    }


def compare(
    make_engine: Callable[..., Engine],
    reqs: Callable[[], list[EngineRequest]],
    stagger: bool = True,
    **config: Any,
) -> dict[str, int]:
    """Run with and without the cache; assert equal tokens; return the cached counts."""
    cached = run(make_engine(**config), reqs(), stagger)
    plain = run(make_engine(enable_prefix_caching=False, **config), reqs(), stagger)
    assert {k: v[0] for k, v in cached.items()} == {k: v[0] for k, v in plain.items()}
    assert all(v[1] == 0 for v in plain.values())
    return {k: v[1] for k, v in cached.items()}


def test_shared_prefix(make_engine: Callable[..., Engine]) -> None:
    system = tokens(70, 1)

    def reqs() -> list[EngineRequest]:
        return [request(f"r{i}", system + tokens(9, 10 + i), 12) for i in range(4)]

    cached = compare(make_engine, reqs)
    assert cached == {"r0": 0, "r1": 64, "r2": 64, "r3": 64}


def test_two_requests_arriving_in_the_same_step_share(make_engine: Callable[..., Engine]) -> None:
    system = tokens(50, 2)

    def reqs() -> list[EngineRequest]:
        return [request("a", [*system, 7, 8, 9], 10), request("b", [*system, 9], 10)]

    cached = compare(make_engine, reqs, stagger=False)
    assert cached == {"a": 0, "b": 48}


def test_whole_prompt_cached_still_computes_its_last_token(
    make_engine: Callable[..., Engine],
) -> None:
    prompt = tokens(64, 3)

    def reqs() -> list[EngineRequest]:
        return [request("a", prompt, 5), request("b", list(prompt), 5)]

    assert compare(make_engine, reqs) == {"a": 0, "b": 48}


def test_multi_turn_second_turn_hits_the_first_turns_blocks(
    make_engine: Callable[..., Engine],
) -> None:
    first = tokens(40, 4)
    for caching in (True, False):
        engine = make_engine(enable_prefix_caching=caching)
        reply, _ = run(engine, [request("t1", first, 30)], False)["t1"]
        second = first + reply + tokens(7, 5)
        out = run(engine, [request("t2", second, 12)], False)["t2"]
        if caching:
            # Turn 1 computed its prompt and all but its last sampled token: 69 positions.
            assert out[1] == (40 + 30 - 1) // BS * BS
            with_cache = out[0]
        else:
            assert out[0] == with_cache


def test_prefix_evicted_and_recomputed_mid_run(make_engine: Callable[..., Engine]) -> None:
    """A 12-block cache: the shared prefix's blocks are evicted by other requests while a
    long one runs, then the prefix comes back and is computed again."""
    system = tokens(40, 6)

    def reqs() -> list[EngineRequest]:
        out = [request("long", tokens(20, 7), 60), request("p1", [*system, 1], 4)]
        out += [request(f"fill{i}", tokens(60, 20 + i), 4) for i in range(3)]
        return [*out, request("p2", [*system, 2], 4)]

    cached = compare(make_engine, reqs, kv_cache_tokens=12 * BS)
    assert cached["p2"] == 0  # its blocks were evicted by the fillers
    engine = make_engine(kv_cache_tokens=12 * BS)
    run(engine, reqs(), True)
    assert engine.scheduler.blocks.stats.evictions > 0


def test_preemption_under_a_small_kv_budget(make_engine: Callable[..., Engine]) -> None:
    system = tokens(33, 8)

    def reqs() -> list[EngineRequest]:
        return [request(f"r{i}", system + tokens(5, 30 + i), 40) for i in range(4)]

    engine = make_engine(kv_cache_tokens=10 * BS)
    run(engine, reqs(), True)
    assert engine.scheduler.blocks.stats.hits_tokens > 0
    cached = compare(make_engine, reqs, kv_cache_tokens=10 * BS)
    assert cached["r0"] == 0
    assert all(v in (0, 32) for v in cached.values())


def test_seeded_sampling_is_unchanged_by_the_cache(make_engine: Callable[..., Engine]) -> None:
    system = tokens(48, 9)
    seeded = [SamplingParams(temperature=1.0, seed=i, ignore_eos=True) for i in range(3)]

    def reqs() -> list[EngineRequest]:
        return [request(f"s{i}", [*system, i + 3], 16, p) for i, p in enumerate(seeded)]

    assert compare(make_engine, reqs) == {"s0": 0, "s1": 48, "s2": 48}


def test_cancelling_a_sharer_keeps_the_blocks_for_the_others(
    make_engine: Callable[..., Engine],
) -> None:
    system = tokens(40, 11)
    plain = make_engine(enable_prefix_caching=False)
    reference = run(plain, [request("b", [*system, 5], 20)], False)
    engine = make_engine()
    engine.add(request("a", [*system, 4], 20))
    engine.step()
    engine.add(request("b", [*system, 5], 20))
    first = [t for o in engine.step() if o.id == "b" for t in o.token_ids]
    assert engine.abort("a") is not None
    rest, cached = run(engine, [], False)["b"]
    assert (first + rest, cached) == (reference["b"][0], 32)
    again = run(engine, [request("c", [*system, 6], 3)], False)
    assert again["c"][1] == 32
    assert engine.scheduler.blocks.num_used == 0
