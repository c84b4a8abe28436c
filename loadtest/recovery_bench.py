"""Recovery after a worker crash, side by side: 48 SmolLM2 requests (48 tokens each) through
one `jetserve worker` with and without a SIGKILL mid-run, in alternating rounds.

A supervisor restarts the worker 0.5 s after it dies (the first backoff of `jetserve up`),
with the model cache warm, as under `make up`. Printed per pair: the run's time without and with
the kill, the difference, requests in flight at the kill, and the restart's time to its
first answer.

    .venv/bin/python -m loadtest.recovery_bench --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import time
from pathlib import Path

from loadtest.common import REPO, nats_server, spawn
from producer.client import Client, make_request
from schemas.messages import FinalResult, InferenceRequest
from schemas.params import SamplingParams

MODEL = "smollm2"
RESTART_DELAY_S = 0.5


class Supervised:
    """One worker process, restarted RESTART_DELAY_S after it dies."""

    def __init__(self, url: str, models_file: Path) -> None:
        self._args = ["-m", "jetserve", "worker", "--model", MODEL, "--models-file"]
        self._args.append(str(models_file))
        self._env = {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] = spawn(self._args, self._env)
        self.restarted_at: float | None = None

    async def watch(self) -> None:
        while True:
            if self.proc.poll() is not None:
                await asyncio.sleep(RESTART_DELAY_S)
                self.proc = spawn(self._args, self._env)
                self.restarted_at = time.perf_counter()
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def one_run(client: Client, sup: Supervised, kill_after: int | None) -> dict[str, float]:
    """48 requests at once; with `kill_after`, SIGKILL the worker once that many are answered
    (the rest, up to the capacity of 32, in flight)."""
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    requests = [
        make_request(
            MODEL, "completion", {"prompt": f"Story {i}: once upon a time"}, parameters=params
        )
        for i in range(48)
    ]
    answered: list[float] = []
    reached = asyncio.Event()

    async def ask(r: InferenceRequest) -> None:
        result = await client.request_obj(r, 300)
        assert isinstance(result, FinalResult)
        assert result.usage.completion_tokens == 48
        answered.append(time.perf_counter())
        if len(answered) == kill_after:
            reached.set()

    start = time.perf_counter()
    tasks = [asyncio.create_task(ask(r)) for r in requests]
    figures: dict[str, float] = {}
    if kill_after is not None:
        await reached.wait()
        figures["in_flight"] = 48 - len(answered)
        sup.kill()
        killed = time.perf_counter()
        figures["killed_at_s"] = killed - start
    await asyncio.gather(*tasks)
    figures["total_s"] = time.perf_counter() - start
    if kill_after is not None and sup.restarted_at is not None:
        later = [t for t in answered if t > sup.restarted_at]
        figures["restart_to_first_answer_s"] = min(later) - sup.restarted_at if later else -1
    return figures


async def main_async(args: argparse.Namespace) -> None:
    with nats_server() as url:
        sup = Supervised(url, REPO / "jetserve" / "models.toml")
        client = await Client.connect(url)
        watch = asyncio.create_task(sup.watch())
        warm = SamplingParams(temperature=0.0, max_tokens=2)
        for _ in range(900):
            try:
                await client.request(MODEL, "completion", {"prompt": "hi"}, parameters=warm)
                break
            except Exception:
                await asyncio.sleep(0.2)
        pairs = []
        for i in range(args.pairs):
            plain = await one_run(client, sup, None)
            crash = await one_run(client, sup, args.kill_after)
            pairs.append((plain, crash))
            print(
                f"pair {i + 1}: without kill {plain['total_s']:.1f} s; with kill "
                f"{crash['total_s']:.1f} s (killed at {crash['killed_at_s']:.1f} s with "
                f"{crash['in_flight']:.0f} unanswered, up to 32 of them in flight; restart to "
                "first answer "
                f"{crash.get('restart_to_first_answer_s', -1):.1f} s); "
                f"difference {crash['total_s'] - plain['total_s']:+.1f} s",
                flush=True,
            )
        deltas = [c["total_s"] - p["total_s"] for p, c in pairs]
        print(
            f"difference with the kill: median {statistics.median(deltas):+.1f} s, "
            f"range {min(deltas):+.1f} .. {max(deltas):+.1f} s over {len(deltas)} pairs"
        )
        watch.cancel()
        await client.close()
        sup.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--kill-after", type=int, default=16, help="kill once this many requests are answered"
    )
    args = parser.parse_args()
    import torch

    from workers.engine.loader import choose_dtype

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "")
    cpu = cpu or platform.processor()
    print(
        f"CPU {cpu} ({os.cpu_count()} cores); dtype {choose_dtype('auto', torch.device('cpu'))}; "
        f"torch threads {torch.get_num_threads()}; SmolLM2 worker, capacity 32"
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
