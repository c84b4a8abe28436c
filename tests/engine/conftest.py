"""Engine fixtures: the tiny random model (`tiny_model_dir`, in tests/conftest.py) loaded once
per session, and engines over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.engine.engine import Engine, EngineConfig, Output
from workers.engine.loader import load_model
from workers.engine.model_runner import ModelRunner


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_model(tiny_model_dir, torch.device("cpu"), torch.float32)


def generate_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy `generate`, the reference."""
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return [int(t) for t in out[0, len(ids) :]]


@pytest.fixture
def make_engine(tiny: tuple[Any, Any]) -> Iterator[Callable[..., Engine]]:
    model, tokenizer = tiny

    def make(**config: Any) -> Engine:
        config.setdefault("kv_cache_tokens", 8192)
        config.setdefault("max_model_len", 1024)
        config.setdefault("block_size", 16)  # many blocks per sequence
        cfg = EngineConfig(**config)
        runner = ModelRunner(model, num_blocks=cfg.num_kv_blocks, block_size=cfg.block_size)
        return Engine(runner, tokenizer.backend_tokenizer, cfg)

    yield make
    model.set_attn_implementation("sdpa")


def run_to_end(engine: Engine, limit: int = 10_000) -> dict[str, list[Output]]:
    outputs: dict[str, list[Output]] = {}
    steps = 0
    while engine.has_work():
        for out in engine.step():
            outputs.setdefault(out.id, []).append(out)
        steps += 1
        assert steps < limit
    return outputs
