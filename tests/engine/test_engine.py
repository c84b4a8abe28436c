"""The engine on the tiny random model: same tokens as transformers' `generate`, stopping
rules, seeds, cancellation, deadlines, preemption."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from schemas.errors import ErrorCode
from schemas.names import Priority
from schemas.params import SamplingParams
from workers.engine.engine import Engine, EngineConfig
from workers.engine.scheduler import SchedulerConfig
from workers.engine.sequence import EngineRequest, Status
from workers.errors import PermanentError

from .conftest import generate_greedy, run_to_end

PROMPTS = [
    "Hello there",
    "The capital of France is",
    "naïve 東京 🙂 café",
    "def add(a, b):\n    return",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000.",
]
GREEDY = SamplingParams(temperature=0.0)


def ids_of(tiny: tuple[Any, Any], text: str) -> list[int]:
    return [int(i) for i in tiny[1](text)["input_ids"]]


def request(
    rid: str, ids: list[int], max_tokens: int, params: SamplingParams = GREEDY, **kw: Any
) -> EngineRequest:
    return EngineRequest(id=rid, prompt_token_ids=ids, params=params, max_tokens=max_tokens, **kw)


@pytest.mark.parametrize("batched_tokens", [1024, 7])
def test_greedy_matches_generate(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine], batched_tokens: int
) -> None:
    """All prompts together, joining one step apart; with a 7-token budget the prompts are
    also prefilled in chunks beside other sequences' decoding."""
    model, _ = tiny
    prompts = [ids_of(tiny, p) for p in PROMPTS]
    reference = [generate_greedy(model, ids, 24) for ids in prompts]
    engine = make_engine(max_num_batched_tokens=batched_tokens)
    outputs: dict[str, list[int]] = {}
    for i, ids in enumerate(prompts):
        engine.add(request(str(i), ids, 24))
        for out in engine.step():  # the next request arrives while these run
            outputs.setdefault(out.id, []).extend(out.token_ids)
    for rid, outs in run_to_end(engine).items():
        outputs.setdefault(rid, []).extend(t for o in outs for t in o.token_ids)
    assert [outputs[str(i)] for i in range(len(prompts))] == reference


def test_logits_match_transformers(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    model, _ = tiny
    ids = ids_of(tiny, PROMPTS[3])
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0, -1].float()
    engine = make_engine(max_num_batched_tokens=5)
    engine.add(request("a", ids, 1))
    sched = engine.scheduler
    while True:
        out = sched.schedule()
        logits = engine.runner.run(out)
        sched.update(out)
        if out.scheduled[0].samples:
            break
    assert torch.allclose(logits[0], expected, atol=1e-4)


def test_max_tokens_and_usage(tiny: tuple[Any, Any], make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    ids = ids_of(tiny, PROMPTS[0])
    engine.add(request("a", ids, 5, SamplingParams(temperature=0.0, ignore_eos=True)))
    outs = run_to_end(engine)["a"]
    final = outs[-1]
    assert final.finish is Status.FINISHED_LENGTH
    assert final.num_output_tokens == 5
    assert final.num_prompt_tokens == len(ids)
    assert sum(len(o.token_ids) for o in outs) == 5
    assert "".join(o.delta for o in outs) == final.text


def test_stop_string_is_cut_and_never_streamed(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    ids = ids_of(tiny, PROMPTS[1])
    engine = make_engine()
    engine.add(request("free", ids, 40))
    full = run_to_end(engine)["free"][-1].text
    assert full is not None
    assert len(full) > 12
    stop = full[8:11]
    assert stop.strip()
    engine.add(request("stopped", ids, 40, SamplingParams(temperature=0.0, stop=[stop])))
    outs = run_to_end(engine)["stopped"]
    streamed = "".join(o.delta for o in outs)
    assert outs[-1].finish is Status.FINISHED_STOP
    assert streamed == outs[-1].text == full[: full.index(stop)]
    assert stop not in streamed


def test_stop_token_ids_and_eos(tiny: tuple[Any, Any], make_engine: Callable[..., Engine]) -> None:
    model, _ = tiny
    ids = ids_of(tiny, PROMPTS[2])
    third = generate_greedy(model, ids, 3)[2]
    engine = make_engine()
    engine.add(request("stop-id", ids, 20, SamplingParams(temperature=0.0, stop_token_ids=[third])))
    engine.add(request("eos", ids, 20, eos_token_ids=frozenset({third})))
    engine.add(
        request(
            "ignore",
            ids,
            20,
            SamplingParams(temperature=0.0, ignore_eos=True),
            eos_token_ids=frozenset({third}),
        )
    )
    outs = run_to_end(engine)
    for rid in ("stop-id", "eos"):
        assert outs[rid][-1].finish is Status.FINISHED_STOP
        assert outs[rid][-1].num_output_tokens <= 3
    assert outs["ignore"][-1].finish is Status.FINISHED_LENGTH
    assert outs["ignore"][-1].num_output_tokens == 20


def test_seed_reproducible_across_batches(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    ids = ids_of(tiny, PROMPTS[0])
    seeded = SamplingParams(temperature=1.0, seed=1234)

    def sample(others: int, params: SamplingParams = seeded) -> list[int]:
        engine = make_engine()
        engine.add(request("s", ids, 16, params))
        for i in range(others):
            engine.add(
                request(f"o{i}", ids_of(tiny, PROMPTS[i % 5]), 16, SamplingParams(temperature=1.0))
            )
        return [t for o in run_to_end(engine)["s"] for t in o.token_ids]

    alone, crowded = sample(0), sample(4)
    assert alone == crowded
    other_seed = sample(0, SamplingParams(temperature=1.0, seed=99))
    assert other_seed != alone


def test_logprobs_of_chosen_tokens(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    model, _ = tiny
    ids = ids_of(tiny, PROMPTS[4])
    engine = make_engine()
    engine.add(
        request("lp", ids, 3, SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3))
    )
    choices = [c for o in run_to_end(engine)["lp"] for c in o.choices]
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    expected = torch.log_softmax(logits, -1)
    first = choices[0]
    assert first.logprob == pytest.approx(float(expected[first.token_id]), abs=1e-4)
    assert first.top[0][0] == first.token_id  # greedy: the top choice
    assert len(first.top) == 3


def test_cancel_frees_the_row(tiny: tuple[Any, Any], make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.add(request("a", ids_of(tiny, PROMPTS[0]), 100))
    engine.add(request("b", ids_of(tiny, PROMPTS[1]), 100))
    engine.step()
    engine.step()
    assert len(engine.scheduler.running) == 2
    out = engine.abort("a")
    assert out is not None
    assert out.finish is Status.FINISHED_CANCELLED
    engine.step()
    assert [s.id for s in engine.scheduler.running] == ["b"]
    assert engine.abort("a") is None


def test_deadline_while_queued_is_never_run(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine()
    engine.add(request("late", ids_of(tiny, PROMPTS[0]), 10, deadline=time.monotonic() - 1))
    outs = engine.step()
    assert [(o.id, o.finish, o.num_output_tokens) for o in outs] == [
        ("late", Status.FINISHED_DEADLINE, 0)
    ]
    assert engine.steps == 0  # the model never ran


def test_deadline_while_running_returns_partial_output(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    now = [100.0]
    engine = make_engine()
    engine._clock = lambda: now[0]
    engine.add(
        request(
            "d",
            ids_of(tiny, PROMPTS[0]),
            50,
            SamplingParams(temperature=0.0, ignore_eos=True),
            deadline=105.0,
        )
    )
    for _ in range(4):
        engine.step()
    now[0] = 106.0
    (out,) = engine.step()
    assert out.finish is Status.FINISHED_DEADLINE
    assert out.num_output_tokens == 4


def test_preemption_recomputes_and_output_is_unchanged(
    tiny: tuple[Any, Any], make_engine: Callable[..., Engine]
) -> None:
    model, _ = tiny
    prompts = [ids_of(tiny, p) for p in PROMPTS[:3]]
    reference = [generate_greedy(model, ids, 40) for ids in prompts]
    # Three sequences of ~50 tokens cannot share a 96-position cache: some are preempted.
    engine = make_engine(kv_cache_tokens=96)
    for i, ids in enumerate(prompts):
        engine.add(request(str(i), ids, 40))
    preempted = 0
    outputs: dict[str, list[int]] = {}
    while engine.has_work():
        before = {s.id: s.preemptions for s in engine.scheduler.running}
        for out in engine.step():
            outputs.setdefault(out.id, []).extend(out.token_ids)
        preempted += sum(
            1 for s in engine.scheduler.waiting[Priority.ONLINE] if before.get(s.id) is not None
        )
    assert preempted > 0
    assert [outputs[str(i)] for i in range(3)] == reference


def test_context_limits(tiny: tuple[Any, Any], make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(max_model_len=64, kv_cache_tokens=4096)
    assert engine.check(10, None) == 54
    with pytest.raises(PermanentError) as info:
        engine.check(60, 10)
    assert info.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(PermanentError):
        engine.check(64, None)
    # Longer contexts than the KV cache holds: what it can never hold is refused, at once.
    small = make_engine(max_model_len=4096, kv_cache_tokens=128)
    with pytest.raises(PermanentError, match="KV cache budget"):
        small.check(100, 100)
    with pytest.raises(PermanentError, match="KV cache budget") as info:
        small.check(200, None)
    assert info.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    assert small.check(100, None) == 28


def test_scheduler_config_carries_the_engine_fields() -> None:
    config = EngineConfig(
        max_num_seqs=3,
        max_num_batched_tokens=40,
        kv_cache_tokens=85,
        block_size=8,
        enable_prefix_caching=False,
        max_model_len=64,
        seed=1,
    )
    assert config.scheduler_config() == SchedulerConfig(
        max_num_seqs=3,
        max_num_batched_tokens=40,
        num_kv_blocks=10,
        block_size=8,
        enable_prefix_caching=False,
    )
    assert EngineConfig().scheduler_config().block_size == 64
