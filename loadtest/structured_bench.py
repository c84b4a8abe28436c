"""Benchmark: engine throughput with constrained decoding on vs off, same workload, one run.

    python -m loadtest.structured_bench [--model builtin:smollm2] [--requests 64] [--rounds 2]

Constrained: `--requests` chat requests with a strict JSON schema (sampled at temperature
0.8, seeds fixed). Each request stops when its JSON is complete; its token count is recorded.
Unconstrained: the same prompts with `max_tokens` set to those counts and end-of-sequence
ignored, so both runs generate exactly the same number of tokens per request. The two runs
alternate `--rounds` times; the medians are compared (tokens/s = generated tokens / wall time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import msgspec
import torch

from schemas.params import SamplingParams
from schemas.payloads import ChatPayload

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "hobbies", "employed"],
}
TOPICS = [
    "a teacher",
    "a sailor",
    "a painter",
    "a chef",
    "a pilot",
    "a farmer",
    "a doctor",
    "a poet",
]


def _payload(i: int, constrained: bool) -> ChatPayload:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"Describe {TOPICS[i % len(TOPICS)]} as JSON."}]
    }
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
        }
    return msgspec.convert(body, ChatPayload)


def run(
    backend: Any, requests: int, constrained: bool, lengths: list[int] | None
) -> tuple[float, list[int]]:
    from workers.engine.sequence import EngineRequest

    engine = backend.engine
    start = time.perf_counter()
    for i in range(requests):
        _, prompt, constraint = backend.prepare(_payload(i, constrained))
        if constrained:
            params = SamplingParams(temperature=0.8, seed=i, max_tokens=400)
        else:
            assert lengths is not None
            params = SamplingParams(temperature=0.8, seed=i, max_tokens=lengths[i], ignore_eos=True)
        engine.add(
            EngineRequest(
                id=f"r{i}",
                prompt_token_ids=prompt.token_ids,
                params=params,
                max_tokens=params.max_tokens or 400,
                eos_token_ids=backend.eos_token_ids,
                constraint=constraint,
            )
        )
    counts = [0] * requests
    while engine.has_work():
        for out in engine.step():
            counts[int(out.id[1:])] += len(out.token_ids)
    return sum(counts) / (time.perf_counter() - start), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from workers.config import ModelSpec
    from workers.engine.build import build_engine_adapter

    hf_logging.set_verbosity_error()
    spec = ModelSpec(
        name="bench",
        engine="llm",
        path=args.model,
        capacity=64,
        options={"kv_cache_mib": 1024, "max_model_len": 1024},
    )
    backend = build_engine_adapter(spec)
    torch.manual_seed(0)
    # Warm-up (and the token counts the unconstrained runs reproduce).
    _, lengths = run(backend, args.requests, True, None)
    on, off = [], []
    for _ in range(args.rounds):
        rate, counts = run(backend, args.requests, True, None)
        on.append(rate)
        rate_off, counts_off = run(backend, args.requests, False, counts)
        assert counts_off == counts
        off.append(rate_off)
    med_on, med_off = statistics.median(on), statistics.median(off)
    print(
        f"model {args.model}: {args.requests} requests, {sum(lengths)} tokens a run "
        f"(mean {sum(lengths) / len(lengths):.0f} per request), {args.rounds} rounds"
    )
    print(
        f"  unconstrained          {med_off:8.1f} tok/s  (runs: "
        f"{', '.join(f'{r:.1f}' for r in off)})"
    )
    print(
        f"  json_schema (strict)   {med_on:8.1f} tok/s  (runs: {', '.join(f'{r:.1f}' for r in on)})"
    )
    print(f"  ratio constrained / unconstrained  {med_on / med_off:.2f}  (target >= 0.80)")
    assert backend.grammars is not None
    print(f"  grammar compiles: {backend.grammars.compiles} (cached per schema)")


if __name__ == "__main__":
    main()
