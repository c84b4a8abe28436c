"""Benchmark: the engine's KV blocks and prefix cache, against this engine with the cache off,
the engine of an earlier commit (`--baseline`, the rectangle KV cache) and transformers'
continuous batching, in one run with alternating rounds.

    python -m loadtest.prefix_bench --model builtin:tiny-bench [--scenarios shared,...]

Every run is a fresh process (`loadtest/engine_driver.py`: model loaded, an untimed warm-up,
then the timed workload), so the two sides of a ratio run under the same conditions; the
earlier engine is `git archive`d from `--baseline` into a temporary folder and imported from
there. Greedy, end-of-sequence ignored, token-id prompts drawn from the vocabulary by `--seed`.

Scenarios:
- shared: 64 requests, one 1,024-token system prompt, distinct 32-token user turns, 64 new
  tokens each; caching on / off alternating; then transformers' CB (block sharing on) once.
- multiturn: 16 conversations x 4 turns, block size 16, a 512-token system prompt, 32-token
  user turns, replies of exactly 64 tokens, each turn resending the whole history: tokens
  prefilled (prompt tokens sent minus cached ones) against prompt tokens sent.
- mixed: a KV budget of 12,000 token positions, max_num_seqs 64, 4 prompts of 1,800 tokens
  submitted first, then 60 of 64 tokens, 128 new tokens each: this engine against the baseline,
  alternating; peak sequences running together (overall, and while a long one runs).
- unique: engine_bench's workload (64 unique prompts of 16-128 tokens, 16-128 new tokens):
  this engine against the baseline, alternating.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtest.common import REPO
from loadtest.rounds import alternate, spread

DRIVER = REPO / "loadtest" / "engine_driver.py"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` (read with `git archive`; the repository is not changed)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "workers", "schemas"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    tar = into / "baseline.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as handle:
        handle.extractall(into / "tree", filter="data")
    patch_rectangle(into / "tree")
    return into / "tree"


#: The rectangle engine (6d7986e) raises on the mixed workload: when its columns shrink in a
#: step that also admits rows, `set_cols` copies `live_rows` rows of the old layout, which
#: has fewer. Rows past the old layout's are new ones with nothing to copy; this clamps to it.
RECTANGLE_FIX = (
    "            keep = min(self.cols, cols)\n",
    "            keep = min(self.cols, cols)\n"
    "            live_rows = min(live_rows, self.budget_tokens // self.cols)\n",
)


def patch_rectangle(tree: Path) -> None:
    path = tree / "workers" / "engine" / "kv_cache.py"
    text = path.read_text()
    if "set_cols" in text and RECTANGLE_FIX[0] in text:
        path.write_text(text.replace(*RECTANGLE_FIX))
        print("baseline: patched the rectangle's set_cols row clamp (see RECTANGLE_FIX)")


class Runner:
    def __init__(self, model_path: Path, dtype: str, tmp: Path) -> None:
        self.model_path = model_path
        self.dtype = dtype
        self.tmp = tmp

    def run(self, tree: Path, job: dict[str, Any]) -> dict[str, Any]:
        job = {"model_path": str(self.model_path), "dtype": self.dtype, **job}
        path = self.tmp / "job.json"
        path.write_text(json.dumps(job))
        proc = subprocess.run(
            [sys.executable, str(DRIVER), str(path)],
            env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
            cwd=self.tmp,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise RuntimeError(f"driver failed:\n{proc.stderr[-3000:]}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def tokens(rng: random.Random, usable: list[int], n: int) -> list[int]:
    return [rng.choice(usable) for _ in range(n)]


def describe(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name} {r['tok_s']:.1f} tok/s (TTFT {r['ttft_median_s']:.2f} s, peak "
        f"{r.get('peak_running', '-')}, preemptions {r.get('preemptions', '-')})"
    )


def ratios(
    a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, inverse: bool = False
) -> list[float]:
    """Per round: a / b (b / a with `inverse`)."""
    return [(y[key] / x[key]) if inverse else (x[key] / y[key]) for x, y in zip(a, b, strict=True)]


def engine_fields(**kw: Any) -> dict[str, Any]:
    base = {"max_num_seqs": 64, "max_num_batched_tokens": 1024}
    return {**base, **kw}


def scenario_shared(run: Runner, tree: Path, usable: list[int], args: Any) -> None:
    rng = random.Random(args.seed)
    system = tokens(rng, usable, 1024)
    suffixes = [tokens(rng, usable, 32) for _ in range(64)]
    requests = [[system + s, 64] for s in suffixes]
    warmup = [[tokens(rng, usable, 48), 8] for _ in range(8)]
    fields = engine_fields(kv_cache_tokens=64 * 1152, max_model_len=2048)

    def side(caching: bool) -> Callable[[], dict[str, Any]]:
        job = {"engine": {**fields, "enable_prefix_caching": caching}}
        return lambda: run.run(tree, {**job, "requests": requests, "warmup": warmup})

    res = alternate(args.rounds, {"cache on": side(True), "cache off": side(False)}, describe)
    tput = ratios(res["cache on"], res["cache off"], "tok_s")
    ttft = ratios(res["cache on"], res["cache off"], "ttft_median_s", inverse=True)
    print(f"  throughput on / off: {spread(tput)} (target >= 3)")
    print(f"  median TTFT off / on: {spread(ttft)} (target >= 4)")
    print(
        f"  cached tokens (cache on): {res['cache on'][0]['cached_tokens']} of "
        f"{res['cache on'][0]['prompt_tokens']} prompt tokens"
    )
    probe = run.run(
        tree,
        {
            "system": "probe",
            "engine": fields,
            "prefix": system,
            "suffixes": suffixes[:5],
        },
    )
    print(
        f"  one request alone, time to first token: a hit (1,024 cached + 32) "
        f"{probe['hit_s'] * 1000:.0f} ms; its 32-token suffix as a prompt "
        f"{probe['suffix_alone_s'] * 1000:.0f} ms; 1,056 tokens uncached "
        f"{probe['uncached_s'] * 1000:.0f} ms (median of 5)"
    )
    if args.hf:
        hf = run.run(tree, {"system": "hf_cb", "engine": fields, "requests": requests})
        on = statistics.median(r["tok_s"] for r in res["cache on"])
        print(
            f"  transformers CB (allow_block_sharing on: {hf['prefix_sharing']}) "
            f"{hf['tok_s']:.1f} tok/s, TTFT {hf['ttft_median_s']:.2f} s; engine (median) / CB "
            f"{on / hf['tok_s']:.2f} (target >= 2)"
        )


def scenario_multiturn(run: Runner, tree: Path, usable: list[int], args: Any) -> None:
    rng = random.Random(args.seed + 1)
    convs = {
        "system": tokens(rng, usable, 512),
        "users": [[tokens(rng, usable, 32) for _ in range(4)] for _ in range(16)],
        "reply_tokens": 64,
    }
    fields = engine_fields(kv_cache_tokens=16 * 1024, max_model_len=2048, block_size=16)
    for caching in (True, False):
        job = {"engine": {**fields, "enable_prefix_caching": caching}, "conversations": convs}
        res = run.run(tree, job)
        sent, cached = res["prompt_tokens"], res["cached_tokens"]
        print(
            f"  cache {'on ' if caching else 'off'}: {res['tok_s']:.1f} tok/s, prompt tokens sent "
            f"{sent}, cached {cached} (hit rate {cached / sent:.1%}), prefilled {sent - cached} "
            f"= {(sent - cached) / sent:.1%} of sent (target <= 35%)",
            flush=True,
        )


def scenario_mixed(
    run: Runner, tree: Path, baseline: Path, usable: list[int], args: Any, bytes_per_token: int
) -> None:
    rng = random.Random(args.seed + 2)
    requests = [[tokens(rng, usable, 1800), 128] for _ in range(4)]
    requests += [[tokens(rng, usable, 64), 128] for _ in range(60)]
    warmup = [[tokens(rng, usable, 48), 8] for _ in range(8)]
    budget = 12_000
    print(f"  KV budget {budget} token positions = {budget * bytes_per_token / 2**20:.0f} MiB")
    fields = engine_fields(kv_cache_tokens=budget, max_model_len=4096)
    job = {"engine": fields, "requests": requests, "warmup": warmup, "long": 4}
    res = alternate(
        args.rounds,
        {"blocks": lambda: run.run(tree, job), "rectangle": lambda: run.run(baseline, job)},
        describe,
    )
    tput = ratios(res["blocks"], res["rectangle"], "tok_s")
    peak = ratios(res["blocks"], res["rectangle"], "peak_running_long")
    print(f"  throughput blocks / rectangle: {spread(tput)} (target >= 1.3)")
    print(
        f"  peak running while a long prompt runs, blocks / rectangle: {spread(peak)} "
        f"({res['blocks'][0]['peak_running_long']} vs {res['rectangle'][0]['peak_running_long']};"
        f" overall {res['blocks'][0]['peak_running']} vs {res['rectangle'][0]['peak_running']};"
        " target >= 2)"
    )


def scenario_unique(run: Runner, tree: Path, baseline: Path, usable: list[int], args: Any) -> None:
    rng = random.Random(args.seed)
    requests = [
        [tokens(rng, usable, rng.randint(16, 128)), rng.randint(16, 128)] for _ in range(64)
    ]
    warmup = [[ids, 8] for ids, _ in requests[:8]]
    fields = engine_fields(kv_cache_tokens=64 * 512, max_model_len=512)
    job = {"engine": fields, "requests": requests, "warmup": warmup}
    res = alternate(
        args.rounds,
        {"blocks": lambda: run.run(tree, job), "rectangle": lambda: run.run(baseline, job)},
        describe,
    )
    tput = ratios(res["blocks"], res["rectangle"], "tok_s")
    print(f"  throughput blocks / rectangle: {spread(tput)} (target >= 0.97)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-bench")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--scenarios", default="shared,multiturn,mixed,unique")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default="6d7986e", help="commit of the earlier engine")
    parser.add_argument("--no-hf", dest="hf", action="store_false")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from workers.engine.loader import choose_dtype, resolve_model_path
    from workers.engine.model_runner import kv_bytes_per_token

    path = resolve_model_path(args.model)
    dtype = choose_dtype(args.dtype, torch.device("cpu"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    special = set(tokenizer.all_special_ids)
    usable = [t for t in range(len(tokenizer)) if t not in special]
    per_token = kv_bytes_per_token(AutoConfig.from_pretrained(path), dtype)
    print(
        f"model {path.name}, {dtype}, {torch.get_num_threads()} threads, CPU {cpu_model()}; "
        f"{args.rounds} rounds; baseline engine {args.baseline}"
    )
    scenarios = args.scenarios.split(",")
    with tempfile.TemporaryDirectory(prefix="jetserve-prefix-bench-") as tmp:
        run = Runner(path, str(dtype).removeprefix("torch."), Path(tmp))
        baseline = (
            extract(args.baseline, Path(tmp)) if {"mixed", "unique"} & set(scenarios) else REPO
        )
        for name in scenarios:
            print(f"{name}:", flush=True)
            start = time.perf_counter()
            if name == "shared":
                scenario_shared(run, REPO, usable, args)
            elif name == "multiturn":
                scenario_multiturn(run, REPO, usable, args)
            elif name == "mixed":
                scenario_mixed(run, REPO, baseline, usable, args, per_token)
            elif name == "unique":
                scenario_unique(run, REPO, baseline, usable, args)
            else:
                raise SystemExit(f"unknown scenario {name!r}")
            print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
