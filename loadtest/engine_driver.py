"""One timed engine run in its own process, for `loadtest.prefix_bench`:

    PYTHONPATH=<a jetserve tree> python loadtest/engine_driver.py JOB.json

The engine is whatever `workers.engine` the PYTHONPATH finds, so the same job runs on this
tree's engine and on an earlier commit's (extracted with `git archive`): this file imports
nothing else from the project that an earlier engine lacks. It prints one JSON line.

Job: `model_path`, `engine` (EngineConfig fields; `block_size` and `enable_prefix_caching`
are dropped for an engine without them), `requests` ([prompt ids, new tokens], all
submitted at once, in order), or `conversations` (system ids, each conversation's user
turns, reply length: every turn resends the whole history, token ids, and is submitted when
the previous turn of its conversation finishes), `long` (how many leading requests count as
long, for the peak while they run), `warmup` (requests run untimed first), or `system: hf_cb`
(transformers' continuous batching with its block sharing on, on `requests`), or `system:
probe` (`prefix`, `suffixes`: time to first token of a prefix-cache hit alone, see
`run_probe`).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch


def _engine(model: Any, tokenizer: Any, fields: dict[str, Any]) -> Any:
    from workers.engine.engine import Engine, EngineConfig
    from workers.engine.model_runner import ModelRunner

    known = EngineConfig.__dataclass_fields__
    config = EngineConfig(**{k: v for k, v in fields.items() if k in known})
    if "block_size" in known:
        runner = ModelRunner(model, num_blocks=config.num_kv_blocks, block_size=config.block_size)
    else:  # the engine before KV blocks: one rectangle
        runner = ModelRunner(model, kv_budget_tokens=config.kv_cache_tokens)  # type: ignore[call-arg]
    return Engine(runner, tokenizer.backend_tokenizer, config)


def _request(rid: str, ids: list[int], n: int) -> Any:
    from schemas.params import SamplingParams
    from workers.engine.sequence import EngineRequest

    params = SamplingParams(temperature=0.0, ignore_eos=True)
    return EngineRequest(id=rid, prompt_token_ids=ids, params=params, max_tokens=n)


def run_engine(model: Any, tokenizer: Any, job: dict[str, Any]) -> dict[str, Any]:
    engine = _engine(model, tokenizer, job["engine"])
    for i, (ids, n) in enumerate(job.get("warmup", [])):
        engine.add(_request(f"w{i}", ids, n))
    while engine.has_work():
        engine.step()
    convs = job.get("conversations")
    requests = job.get("requests", [])
    # Per conversation: the history so far (token ids) and the next turn.
    history: dict[str, list[int]] = {}
    turn: dict[str, int] = {}
    prompts: dict[str, int] = {}
    submitted: dict[str, float] = {}
    first: dict[str, float] = {}
    cached = 0
    produced = 0
    start = time.perf_counter()

    def submit(rid: str, ids: list[int], n: int) -> None:
        engine.add(_request(rid, ids, n))
        prompts[rid] = len(ids)
        submitted[rid] = time.perf_counter()

    if convs is not None:
        for c in range(len(convs["users"])):
            history[f"c{c}"] = list(convs["system"]) + convs["users"][c][0]
            turn[f"c{c}"] = 0
            submit(f"c{c}.0", history[f"c{c}"], convs["reply_tokens"])
    for i, (ids, n) in enumerate(requests):
        submit(f"r{i}", ids, n)
    long_ids = {f"r{i}" for i in range(job.get("long", 0))}
    peak = peak_long = steps = 0
    replies: dict[str, list[int]] = {}
    preemptions: dict[str, int] = {}
    while engine.has_work():
        outputs = engine.step()
        steps += 1
        now = time.perf_counter()
        running = len(engine.scheduler.running)
        for seq in engine.scheduler.running:
            preemptions[seq.id] = seq.preemptions
        peak = max(peak, running)
        if any(r in long_ids for r in (s.id for s in engine.scheduler.running)):
            peak_long = max(peak_long, running)
        for out in outputs:
            produced += len(out.token_ids)
            if out.token_ids and out.id not in first:
                first[out.id] = now - submitted[out.id]
            if convs is not None:
                replies.setdefault(out.id, []).extend(out.token_ids)
            if out.finish is None:
                continue
            cached += getattr(out, "num_cached_tokens", 0)
            if convs is not None:
                conv, t = out.id.split(".")
                t_next = int(t) + 1
                if t_next < len(convs["users"][0]):
                    c = int(conv[1:])
                    history[conv] += replies.pop(out.id) + convs["users"][c][t_next]
                    submit(f"{conv}.{t_next}", history[conv], convs["reply_tokens"])
    elapsed = time.perf_counter() - start
    return {
        "tok_s": produced / elapsed,
        "elapsed_s": elapsed,
        "produced": produced,
        "ttft_median_s": statistics.median(first.values()),
        "peak_running": peak,
        "peak_running_long": peak_long,
        "prompt_tokens": sum(prompts.values()),
        "cached_tokens": cached,
        "steps": steps,
        "preemptions": sum(preemptions.values()),
    }


def run_probe(model: Any, tokenizer: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Time to first token of one request alone, median of a few: a prompt whose prefix is
    cached (`prefix` + a suffix, after one request with that prefix ran), the suffix alone
    (what a hit should cost), and prefix + suffix uncached. A hit that truly skips its
    prefix's compute costs about what the suffix alone does."""
    engine = _engine(model, tokenizer, job["engine"])
    prefix, suffixes = job["prefix"], job["suffixes"]
    count = 0

    def ttft(ids: list[int]) -> float:
        nonlocal count
        count += 1
        engine.add(_request(f"p{count}", ids, 1))
        start = time.perf_counter()
        while engine.has_work():
            engine.step()
        return time.perf_counter() - start

    ttft([*prefix, prefix[0]])  # warm-up, and the prefix's blocks enter the cache
    hit = [ttft(prefix + s) for s in suffixes]
    alone = [ttft(s) for s in suffixes]
    # As long, starting with the suffix: its first block, and so every block, is new.
    cold = [ttft([*s, *prefix[len(s) :], *s]) for s in suffixes]
    return {
        "hit_s": statistics.median(hit),
        "suffix_alone_s": statistics.median(alone),
        "uncached_s": statistics.median(cold),
    }


def collect_cb(manager: Any, count: int, timeout_s: float) -> tuple[int, list[float]]:
    """Wait for `count` requests of transformers' continuous batching `manager` to finish:
    the tokens they produced, and each one's time to first token (where recorded)."""
    produced = finished = 0
    first: list[float] = []
    while finished < count:
        result = manager.get_result(timeout=timeout_s)
        if result is None:
            raise RuntimeError("transformers' continuous batching stopped producing results")
        if result.is_finished():
            finished += 1
            produced += len(result.generated_tokens)
            if result.timestamps:
                first.append(result.timestamps[0] - result.created_time)
    return produced, first


def stop_cb(model: Any, manager: Any) -> None:
    manager.stop(block=True)
    if hasattr(model, "destroy_cached_continuous_batching_manager"):
        model.destroy_cached_continuous_batching_manager()


def run_hf_cb(model: Any, job: dict[str, Any]) -> dict[str, Any]:
    """transformers' continuous batching on `requests`, block sharing on (its default)."""
    import dataclasses
    import inspect

    from transformers import ContinuousBatchingConfig, GenerationConfig

    requests = job["requests"]
    model.set_attn_implementation("sdpa")
    gen = GenerationConfig(
        do_sample=False,
        max_new_tokens=max(n for _, n in requests),
        eos_token_id=None,
        pad_token_id=0,
    )
    total = sum(len(ids) + n for ids, n in requests)
    wanted = {
        "max_batch_tokens": job["engine"]["max_num_batched_tokens"],
        "num_blocks": total // 32 + 64,
        "page_size": 32,
        "max_requests_per_batch": job["engine"].get("max_num_seqs", 64),
        "allow_block_sharing": True,
    }
    # Settings this transformers version has (the config gained fields release by release).
    try:
        known = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    except TypeError:
        known = set(inspect.signature(ContinuousBatchingConfig).parameters)
    cb = ContinuousBatchingConfig(**{k: v for k, v in wanted.items() if k in known})
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()
    start = time.perf_counter()
    for i, (ids, n) in enumerate(requests):
        manager.add_request(ids, request_id=f"r{i}", max_new_tokens=n, eos_token_id=[])
    produced, first = collect_cb(manager, len(requests), timeout_s=1200)
    elapsed = time.perf_counter() - start
    sharing = bool(getattr(manager, "_use_prefix_sharing", False))
    stop_cb(model, manager)
    return {
        "tok_s": produced / elapsed,
        "elapsed_s": elapsed,
        "produced": produced,
        "ttft_median_s": statistics.median(first) if first else float("nan"),
        "prefix_sharing": sharing,
    }


def main() -> None:
    from transformers.utils import logging as hf_logging

    from workers.engine.loader import load_model

    hf_logging.set_verbosity_error()
    with open(sys.argv[1]) as handle:
        job = json.load(handle)
    from pathlib import Path

    dtype = getattr(torch, job["dtype"])
    model, tokenizer = load_model(Path(job["model_path"]), torch.device("cpu"), dtype)
    if job.get("system") == "hf_cb":
        result = run_hf_cb(model, job)
    elif job.get("system") == "probe":
        result = run_probe(model, tokenizer, job)
    else:
        result = run_engine(model, tokenizer, job)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
