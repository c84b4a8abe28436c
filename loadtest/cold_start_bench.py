"""Cold start: `jetserve worker` start to serving for SmolLM2, model cache warm, by phase.

Each round starts a worker process on its own nats-server and reads its `startup:` log line
(seconds from process start to serving: imports, the model's load, and the rest: connecting,
provisioning, starting the engine). Then "warm-up": the first request's latency (one token)
less the second's, the price of the first forward passes. Rounds run one after another,
nothing else started by the benchmark running meanwhile.

    .venv/bin/python -m loadtest.cold_start_bench --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
from pathlib import Path

from loadtest.common import REPO, nats_server, spawn
from producer.client import Client
from schemas.params import SamplingParams

MODEL = "smollm2"
_LINE = re.compile(r"startup: ([\d.]+) s to serving \(imports ([\d.]+) s, load ([\d.]+) s\)")


async def one_round(url: str) -> dict[str, float]:
    started = time.perf_counter()
    args = ["-m", "jetserve", "worker", "--model", MODEL]
    args += ["--models-file", str(REPO / "jetserve" / "models.toml")]
    proc = spawn(args, {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "INFO"})
    assert proc.stderr is not None
    try:
        found = None
        while found is None:
            line = await asyncio.to_thread(proc.stderr.readline)
            if not line:
                raise RuntimeError("the worker exited before serving")
            found = _LINE.search(line.decode(errors="replace"))
        total_s, imports_s, load_s = (float(x) for x in found.groups())
        client = await Client.connect(url)
        params = SamplingParams(temperature=0.0, max_tokens=1)
        latencies = []
        for _ in range(2):
            t = time.perf_counter()
            await client.request(MODEL, "completion", {"prompt": "Hello"}, parameters=params)
            latencies.append(time.perf_counter() - t)
        await client.close()
        return {
            "total_s": total_s,
            "imports_s": imports_s,
            "load_s": load_s,
            "rest_s": total_s - imports_s - load_s,
            "warm_up_s": latencies[0] - latencies[1],
            "to_first_answer_s": time.perf_counter() - started - latencies[1],
        }
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)


async def main_async(rounds: int) -> None:
    results = []
    for i in range(rounds):
        with nats_server() as url:
            r = await one_round(url)
        results.append(r)
        print(
            f"round {i + 1}: serving after {r['total_s']:.2f} s (imports {r['imports_s']:.2f}, "
            f"load {r['load_s']:.2f}, connect/provision/start {r['rest_s']:.2f}); first "
            f"request {r['warm_up_s']:.2f} s slower than the second",
            flush=True,
        )
    for key in ("total_s", "imports_s", "load_s", "rest_s", "warm_up_s"):
        values = [r[key] for r in results]
        print(
            f"{key:<10} median {statistics.median(values):.2f} s, "
            f"range {min(values):.2f} .. {max(values):.2f} over {len(values)} rounds"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    from workers.engine.loader import choose_dtype

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "?")
    print(
        f"CPU {cpu} ({os.cpu_count()} cores); dtype {choose_dtype('auto', torch.device('cpu'))}; "
        f"torch threads {torch.get_num_threads()} (the worker sets its own from cpu_cores)"
    )
    asyncio.run(main_async(args.rounds))


if __name__ == "__main__":
    main()
