"""Recovery after a worker crash, side by side: 48 SmolLM2 requests (48 tokens each) through
one `jetserve worker` with and without a SIGKILL mid-run, in alternating rounds. The kill comes
at half the time to the first answer of the pair's run without it: the first requests (31, the
worker's online capacity) in flight and about half done (if the run is not twice as fast).

A supervisor restarts the worker 0.5 s after it dies (the first backoff of `jetserve up`),
with the model cache warm, as under `make up`. Printed per pair: the run's time without and with
the kill, the difference, requests unanswered at the kill, the restart's time to its first
answer, and where the time after the kill went (the restart, the new worker's start-up, each
quarantine group, the answers).

    .venv/bin/python -m loadtest.recovery_bench --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from loadtest.common import REPO, nats_server, spawn
from producer.client import Client, make_request
from schemas.messages import FinalResult, InferenceRequest
from schemas.params import SamplingParams

MODEL = "smollm2"
RESTART_DELAY_S = 0.5


class Supervised:
    """One worker process, restarted RESTART_DELAY_S after it dies. Each process's log (INFO:
    its start-up and the quarantine's groups) goes to a file in `log_dir`."""

    def __init__(self, url: str, models_file: Path, log_dir: Path) -> None:
        self._args = ["-m", "jetserve", "worker", "--model", MODEL, "--models-file"]
        self._args.append(str(models_file))
        self._env = {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "INFO"}
        self._log_dir = log_dir
        self.logs: list[Path] = []
        self.proc: subprocess.Popen[bytes] = self._spawn()
        self.restarted_at: float | None = None
        self.died_at: float | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.logs.append(self._log_dir / f"worker-{len(self.logs)}.log")
        with self.logs[-1].open("wb") as out:
            return spawn(self._args, self._env, stderr=out)

    async def watch(self) -> None:
        while True:
            if self.proc.poll() is not None:
                self.died_at = time.time()
                await asyncio.sleep(RESTART_DELAY_S)
                self.proc = self._spawn()
                self.restarted_at = time.time()
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_run(client: Client, sup: Supervised, kill_at_s: float | None) -> dict[str, float]:
    """48 requests at once (the worker runs 31: its capacity less the credit kept on the
    priority consumer; the rest wait in the stream); with `kill_at_s`, SIGKILL the worker that
    long after the start, or at the first answer if that comes sooner."""
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    requests = [
        make_request(
            MODEL, "completion", {"prompt": f"Story {i}: once upon a time"}, parameters=params
        )
        for i in range(48)
    ]
    answered: list[float] = []
    first = asyncio.Event()

    async def ask(r: InferenceRequest) -> None:
        result = await client.request_obj(r, 300)
        assert isinstance(result, FinalResult)
        assert result.usage.completion_tokens == 48
        answered.append(time.time())
        first.set()

    start = time.time()
    tasks = [asyncio.create_task(ask(r)) for r in requests]
    figures: dict[str, float] = {}
    if kill_at_s is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(kill_at_s):
                await first.wait()
        figures["unanswered"] = 48 - len(answered)
        sup.kill()
        killed = time.time()
        figures["killed_at_s"] = killed - start
    await asyncio.gather(*tasks)
    figures["total_s"] = time.time() - start
    figures["first_answer_s"] = min(answered) - start
    if kill_at_s is not None and sup.restarted_at is not None:
        later = [t for t in answered if t > sup.restarted_at]
        figures["restart_to_first_answer_s"] = min(later) - sup.restarted_at if later else -1
        print(timeline(killed, sup, answered), flush=True)
    return figures


def timeline(killed: float, sup: Supervised, answered: list[float]) -> str:
    """Where the time after the kill went: the restart, the new worker's start-up and the
    quarantine's groups (from its log), and the answers (seconds after the kill)."""
    events = [(sup.died_at or killed, "worker dead"), (sup.restarted_at or killed, "restarted")]
    for line in sup.logs[-1].read_text(errors="replace").splitlines():
        if "startup:" in line or "quarantine:" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, line.split(": ", 1)[1]))
    after = sorted(t - killed for t in answered if t > killed)
    if after:
        events.append((killed + after[0], f"first answer ({len(after)} after the kill)"))
        events.append((killed + after[-1], "last answer"))
    return "\n".join(f"  +{t - killed:6.2f} s  {what}" for t, what in sorted(events))


async def main_async(args: argparse.Namespace) -> None:
    with nats_server() as url, tempfile.TemporaryDirectory(prefix="jetserve-recovery-") as logs:
        sup = Supervised(url, REPO / "jetserve" / "models.toml", Path(args.log_dir or logs))
        watch = asyncio.create_task(sup.watch())
        try:
            await pairs(args, url, sup)
        finally:
            watch.cancel()
            sup.stop()


async def pairs(args: argparse.Namespace, url: str, sup: Supervised) -> None:
    client = await Client.connect(url)
    warm = SamplingParams(temperature=0.0, max_tokens=2)
    for _ in range(900):
        try:
            await client.request(MODEL, "completion", {"prompt": "hi"}, parameters=warm)
            break
        except Exception:
            await asyncio.sleep(0.2)
    deltas = []
    for i in range(args.pairs):
        plain = await one_run(client, sup, None)
        crash = await one_run(client, sup, plain["first_answer_s"] * args.kill_at)
        deltas.append(crash["total_s"] - plain["total_s"])
        print(
            f"pair {i + 1}: without kill {plain['total_s']:.1f} s; with kill "
            f"{crash['total_s']:.1f} s (killed at {crash['killed_at_s']:.1f} s with "
            f"{crash['unanswered']:.0f} unanswered, up to 31 of them in flight; restart to "
            f"first answer {crash.get('restart_to_first_answer_s', -1):.1f} s); "
            f"difference {deltas[-1]:+.1f} s",
            flush=True,
        )
    print(
        f"difference with the kill: median {statistics.median(deltas):+.1f} s, "
        f"range {min(deltas):+.1f} .. {max(deltas):+.1f} s over {len(deltas)} pairs"
    )
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--log-dir", help="keep the workers' logs here (default: a temporary dir)")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.5,
        help="kill at this fraction of the time to the first answer in the pair's run without a "
        "kill (the first requests in flight, half done)",
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
    # Stopped (a timeout's SIGTERM): unwind like ^C, so the worker and nats-server stop too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
