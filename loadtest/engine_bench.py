"""Benchmark: jetserve's engine against transformers' own continuous batching, sequential
`generate`, and the raw batched-decode bound, on one model and one workload, in one process.

    python -m loadtest.engine_bench --model builtin:tiny-bench
    python -m loadtest.engine_bench --model builtin:smollm2 [--worker]

Workload: `--requests` (64) requests, all submitted at once; prompt lengths uniform in
[16, 128] tokens, new tokens uniform in [16, 128], fixed by `--seed`; greedy; end-of-sequence
ignored so every system generates exactly the same number of tokens.

- engine: `workers.engine` (ragged continuous batching, its own KV cache), max batch 64;
- transformers CB: `model.init_continuous_batching()` manager, per-request max_new_tokens,
  the best of a few `max_batch_tokens` settings (printed);
- sequential: `model.generate()` one request at a time, over the first `--sequential`
  requests (its rate does not depend on how many);
- raw bound: timed decode forward passes of the plain model (StaticCache, the workload's mean
  context length; no scheduling, no sampling, no prefill, no attention waste) at the batch
  size of each step the engine ran, interpolated from a grid of batch sizes: the target's
  figure. Also printed: the same at batch 64 on every step (Dynamic- and StaticCache), which
  no run reaches, since the batch shrinks as requests finish;
- with `--worker`: the full worker path (NATS in, worker process with the engine, results
  out) on the same workload, against the engine alone.

The engine, the raw bound at its batch sizes and the worker path run in `--rounds` (3)
rounds, one after the other in each round; their ratios are the medians of the rounds'
ratios, so that a machine whose speed drifts during the run (a shared 2-core machine does)
moves both sides of a ratio together. transformers' CB, sequential `generate` and the raw
bound at batch 64 run once, after the rounds, against the median engine figure.

Tokens/s are generated tokens divided by wall time from first submission to last token.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from loadtest.engine_driver import collect_cb, stop_cb
from schemas.params import SamplingParams


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    new_tokens: list[int]

    @property
    def total_new(self) -> int:
        return sum(self.new_tokens)


def make_workload(vocab: int, requests: int, seed: int, special: set[int]) -> Workload:
    rng = random.Random(seed)
    usable = [t for t in range(vocab) if t not in special]
    prompts = [[rng.choice(usable) for _ in range(rng.randint(16, 128))] for _ in range(requests)]
    return Workload(prompts, [rng.randint(16, 128) for _ in range(requests)])


def bench_engine(
    model: Any, tokenizer: Any, work: Workload, max_seqs: int, batched_tokens: int
) -> tuple[float, list[int]]:
    """Tokens/s, and the engine's batch size at each step (tokens sampled in the step)."""
    from workers.engine.engine import Engine, EngineConfig
    from workers.engine.model_runner import ModelRunner
    from workers.engine.sequence import EngineRequest

    config = EngineConfig(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=batched_tokens,
        kv_cache_tokens=max_seqs * 512,
        max_model_len=512,
    )
    runner = ModelRunner(model, num_blocks=config.num_kv_blocks, block_size=config.block_size)
    engine = Engine(runner, tokenizer.backend_tokenizer, config)
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    # Warm-up (kernels for the step shapes, the allocator), untimed: the other systems run
    # after this one in the same process and find the model warm.
    for i, prompt in enumerate(work.prompts[:8]):
        engine.add(EngineRequest(id=f"w{i}", prompt_token_ids=prompt, params=params, max_tokens=8))
    while engine.has_work():
        engine.step()
    start = time.perf_counter()
    for i, (prompt, n) in enumerate(zip(work.prompts, work.new_tokens, strict=True)):
        engine.add(EngineRequest(id=f"r{i}", prompt_token_ids=prompt, params=params, max_tokens=n))
    produced = 0
    sizes: list[int] = []
    while engine.has_work():
        sizes.append(sum(len(o.token_ids) for o in engine.step()))
        produced += sizes[-1]
    elapsed = time.perf_counter() - start
    assert produced == work.total_new, (produced, work.total_new)
    model.set_attn_implementation("sdpa")
    return produced / elapsed, [n for n in sizes if n]


def bench_hf_cb(model: Any, work: Workload, batch_tokens: int) -> float:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    gen = GenerationConfig(
        do_sample=False, max_new_tokens=max(work.new_tokens), eos_token_id=None, pad_token_id=0
    )
    cb = ContinuousBatchingConfig(
        max_batch_tokens=batch_tokens, num_blocks=256, page_size=64, max_requests_per_batch=64
    )
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()
    start = time.perf_counter()
    for i, (p, n) in enumerate(zip(work.prompts, work.new_tokens, strict=True)):
        manager.add_request(p, request_id=f"r{i}", max_new_tokens=n, eos_token_id=[])
    produced, _ = collect_cb(manager, len(work.prompts), timeout_s=600)
    elapsed = time.perf_counter() - start
    stop_cb(model, manager)
    assert produced == work.total_new, (produced, work.total_new)
    return produced / elapsed


def bench_sequential(model: Any, work: Workload, count: int) -> float:
    produced = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt, n in list(zip(work.prompts, work.new_tokens, strict=True))[:count]:
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
            produced += out.shape[1] - len(prompt)
    return produced / (time.perf_counter() - start)


def bench_raw_decode(
    model: Any,
    work: Workload,
    batch: int,
    steps: int = 24,
    caches: tuple[str, ...] = ("dynamic", "static"),
) -> dict[str, float]:
    """Decode forward passes only, at `batch` and the workload's mean context: with
    transformers' DynamicCache (what `generate` uses) and with its StaticCache (no per-step
    concatenation). The bound is the faster of the two."""
    from transformers import DynamicCache, StaticCache

    context = int(
        sum(len(p) for p in work.prompts) / len(work.prompts)
        + sum(work.new_tokens) / len(work.new_tokens) / 2
    )
    rates = {}
    with torch.inference_mode():
        for name in caches:
            if name == "dynamic":
                cache: Any = DynamicCache(config=model.config)
            else:
                cache = StaticCache(config=model.config, max_cache_len=context + steps + 8)
            ids = torch.randint(1, 100, (batch, context))
            out = model(
                input_ids=ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                cache_position=torch.arange(context),
            )
            token = out.logits[:, -1:].argmax(-1)
            pos = context
            start = 0.0
            for i in range(steps + 3):  # 3 warm-up steps
                if i == 3:
                    start = time.perf_counter()
                out = model(
                    input_ids=token, cache=cache, use_cache=True, cache_position=torch.tensor([pos])
                )
                token = out.logits[:, -1:].argmax(-1)
                pos += 1
            rates[name] = batch * steps / (time.perf_counter() - start)
    return rates


def raw_at_engine_sizes(model: Any, work: Workload, sizes: list[int]) -> tuple[float, float]:
    """The raw bound for the steps the engine actually ran: each step's plain decode forward
    pass at that step's batch size (StaticCache), timed at a grid of batch sizes and
    interpolated. Returns (tokens/s, the token-weighted mean batch size)."""
    top = max(sizes)
    grid = sorted({b for b in (1, 2, 4, 8, 16, 24, 32, 48, 64) if b < top} | {top})
    step_s = {b: b / bench_raw_decode(model, work, b, 12, ("static",))["static"] for b in grid}

    def time_of(b: int) -> float:
        hi = next(g for g in grid if g >= b)
        lo = max((g for g in grid if g <= b), default=hi)
        if hi == lo:
            return step_s[hi]
        return step_s[lo] + (step_s[hi] - step_s[lo]) * (b - lo) / (hi - lo)

    total = sum(sizes)
    return total / sum(time_of(b) for b in sizes), sum(b * b for b in sizes) / total


def bench_rss(model: Any, tokenizer: Any, requests: int, seed: int) -> tuple[float, float]:
    """RSS after the first tenth of `requests` short requests through one engine, and after
    all of them (MiB)."""
    from workers.engine.engine import Engine, EngineConfig
    from workers.engine.model_runner import ModelRunner
    from workers.engine.sequence import EngineRequest

    config = EngineConfig(max_num_seqs=64, kv_cache_tokens=64 * 256, max_model_len=256)
    runner = ModelRunner(model, num_blocks=config.num_kv_blocks, block_size=config.block_size)
    engine = Engine(runner, tokenizer.backend_tokenizer, config)
    rng = random.Random(seed)
    vocab = len(tokenizer)
    marks = []
    for i in range(requests):
        prompt = [rng.randrange(10, vocab) for _ in range(rng.randint(16, 64))]
        params = SamplingParams(
            temperature=1.0, top_p=0.9, ignore_eos=True, stop=["xyz"] if i % 3 == 0 else []
        )
        engine.add(
            EngineRequest(
                id=f"m{i}", prompt_token_ids=prompt, params=params, max_tokens=rng.randint(4, 16)
            )
        )
        if engine.num_unfinished >= 64:
            while engine.num_unfinished > 32:
                engine.step()
        if i + 1 in (requests // 10, requests):
            while engine.has_work():
                engine.step()
            marks.append(_rss_mib())
    model.set_attn_implementation("sdpa")
    return marks[0], marks[1]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_rounds(
    args: argparse.Namespace, model: Any, tokenizer: Any, work: Workload
) -> tuple[float, dict[str, list[float]]]:
    """The engine, the raw bound at the batch sizes that engine run used and (`--worker`) the
    worker path, one right after the other, `--rounds` times: each round's ratios compare
    figures taken close together, so a machine that speeds up or slows down over the run
    (this one does) moves numerator and denominator together. Returns the median engine
    figure and each round's ratios."""
    from loadtest.engine_worker import WorkerPath

    engines: list[float] = []
    ratios: dict[str, list[float]] = {"raw": [], "worker": []}
    with asyncio.Runner() as loop:
        path = None
        if args.worker:
            path = WorkerPath(args.model, args.dtype, args.batched_tokens)
            loop.run(path.__aenter__())
        try:
            for r in range(args.rounds):
                engine, sizes = bench_engine(model, tokenizer, work, 64, args.batched_tokens)
                raw, mean_batch = raw_at_engine_sizes(model, work, sizes)
                engines.append(engine)
                ratios["raw"].append(engine / raw)
                line = (
                    f"  round {r + 1}: engine {engine:7.1f} tok/s, raw at its batch sizes "
                    f"({len(sizes)} steps, mean {mean_batch:.1f}) {raw:7.1f} ({engine / raw:.2f})"
                )
                if path is not None:
                    worker = loop.run(path.run(work))
                    ratios["worker"].append(worker / engine)
                    line += f", worker path {worker:7.1f} ({worker / engine:.2f})"
                print(line, flush=True)
        finally:
            if path is not None:
                loop.run(path.__aexit__(None, None, None))
    engine = statistics.median(engines)
    print(f"  jetserve engine (median)       {engine:9.1f} tok/s", flush=True)
    return engine, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-bench")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batched-tokens", type=int, default=1024)
    parser.add_argument("--sequential", type=int, default=8)
    parser.add_argument("--hf-batch-tokens", default="256,512,1024")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=3, help="engine / raw bound / worker path rounds"
    )
    parser.add_argument(
        "--rss-requests",
        type=int,
        default=1000,
        help="short requests through one engine to check RSS stays flat",
    )
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from workers.engine.loader import choose_dtype, load_model, resolve_model_path

    hf_logging.set_verbosity_error()
    path = resolve_model_path(args.model)
    dtype = choose_dtype(args.dtype, torch.device("cpu"))
    model, tokenizer = load_model(path, torch.device("cpu"), dtype)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    special = set(tokenizer.all_special_ids)
    work = make_workload(len(tokenizer), args.requests, args.seed, special)
    print(
        f"model {path.name}: {params:.1f} M params, {dtype}, {torch.get_num_threads()} "
        f"threads; {args.requests} requests, {work.total_new} new tokens, prompts "
        f"{sum(len(p) for p in work.prompts)} tokens"
    )

    engine, per_round = run_rounds(args, model, tokenizer, work)
    figures = {"engine": engine}
    hf = {}
    for bt in (int(x) for x in args.hf_batch_tokens.split(",")):
        hf[bt] = bench_hf_cb(model, work, bt)
        print(f"  transformers CB (max_batch_tokens={bt:4d}) {hf[bt]:9.1f} tok/s", flush=True)
    best = max(hf, key=lambda k: hf[k])
    figures["transformers_cb"] = hf[best]
    figures["sequential"] = bench_sequential(model, work, args.sequential)
    print(f"  sequential generate            {figures['sequential']:9.1f} tok/s", flush=True)
    raw = bench_raw_decode(model, work, 64)
    figures["raw_decode"] = max(raw.values())
    for name, rate in raw.items():
        print(f"  raw batched decode, {name:7s} cache (batch 64) {rate:9.1f} tok/s", flush=True)

    e = figures["engine"]
    print(f"ratios (engine: the median of {args.rounds} rounds, {e:.1f} tok/s):")
    print(
        f"  engine / transformers CB   {e / figures['transformers_cb']:6.2f}  (target >= 1.5; "
        f"best CB setting max_batch_tokens={best})"
    )
    print(f"  engine / sequential        {e / figures['sequential']:6.2f}  (target >= 5)")
    print(
        f"  engine / raw decode bound  {statistics.median(per_round['raw']):6.2f}  (target >= "
        "0.60; median of the rounds' ratios; the same steps' batch sizes, decode only)"
    )
    print(
        f"  engine / raw at batch 64   {e / figures['raw_decode']:6.2f}  (every step full: "
        "the batch shrinks as requests finish, so no run reaches it)"
    )
    if per_round.get("worker"):
        print(
            f"  worker path / engine       {statistics.median(per_round['worker']):6.2f}  "
            "(target >= 0.90; median of the rounds' ratios)"
        )
    if args.rss_requests:
        first, last = bench_rss(model, tokenizer, args.rss_requests, args.seed)
        print(
            f"engine RSS: {first:.0f} MiB after {args.rss_requests // 10} requests, "
            f"{last:.0f} MiB after {args.rss_requests} ({last - first:+.0f} MiB)"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the benchmark process {rss:.0f} MiB")


if __name__ == "__main__":
    main()
