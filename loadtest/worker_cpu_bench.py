"""Worker CPU per request at steady state, this tree against a baseline tree, side by side.

Two `jetserve worker` processes on one nats-server, each serving its own model with the test
model `tests.models:SlowModel` (capacity 64): one runs this tree's code, one a baseline tree's
(e.g. `git archive <commit> | tar -x -C /tmp/base`), each with its own defaults (ack_wait
included), or this tree with one setting changed (`--baseline . --base-env NAME=VALUE`). In
alternating rounds each gets the same requests with `--at-once` in flight (with `--together`,
both at once in each round); a request is held `--hold-s` by the model (0: the per-message
path alone; 2: long enough for the in-progress signals). CPU is the worker's threads' run time
from /proc (schedstat). Each round prints the requests per second too: CPU per request is
comparable only between rounds that served at the same rate (a worker's idle work, timers and
heartbeats, is spread over the requests of the round).

    .venv/bin/python -m loadtest.worker_cpu_bench --baseline /tmp/base --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loadtest.common import REPO, nats_server
from producer.client import Client, make_request


def cpu_s(pid: int) -> float:
    """CPU time of all the process's threads (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def start(tree: Path, url: str, model: str, extra: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(tree), JETSERVE_NATS_URL=url)
    env["JETSERVE_LOG_LEVEL"] = "WARNING"
    for item in extra:
        name, _, value = item.partition("=")
        env[name] = value
    args = ["-m", "jetserve", "worker", "--model", model, "--class", "tests.models:SlowModel"]
    args.append("--option=capacity=64")
    return subprocess.Popen([sys.executable, *args], env=env, cwd=tree)


async def load(client: Client, model: str, count: int, hold_s: float, at_once: int) -> float:
    """Sends `count` requests, `at_once` at a time: the seconds they took."""
    gate = asyncio.Semaphore(at_once)
    started = time.monotonic()

    async def one(i: int) -> None:
        async with gate:
            r = make_request(model, "predict", {"sleep_s": hold_s, "i": i})
            await client.request_obj(r, 120)

    await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - started


async def main_async(args: argparse.Namespace) -> None:
    with nats_server() as url:
        procs = {
            "base": start(args.baseline, url, "cpu-base", args.base_env),
            "this": start(args.this, url, "cpu-this", []),
        }
        client = await Client.connect(url)
        for name in procs:
            for _ in range(300):
                try:
                    await client.request(f"cpu-{name}", "predict", 0, timeout_s=2)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            await load(client, f"cpu-{name}", 500, 0.0, args.at_once)  # warm-up
        ratios = []
        for i in range(args.rounds):
            per: dict[str, float] = {}
            took: dict[str, float] = {}
            if args.together:  # both workers loaded at once: the round's conditions shared
                before = {name: cpu_s(proc.pid) for name, proc in procs.items()}
                took = dict(
                    zip(
                        procs,
                        await asyncio.gather(
                            *(
                                load(
                                    client, f"cpu-{name}", args.requests, args.hold_s, args.at_once
                                )
                                for name in procs
                            )
                        ),
                        strict=True,
                    )
                )
                await asyncio.sleep(0.2)
                for name, proc in procs.items():
                    per[name] = (cpu_s(proc.pid) - before[name]) / args.requests * 1e6
            for name in () if args.together else ("base", "this")[:: 1 if i % 2 == 0 else -1]:
                before_s = cpu_s(procs[name].pid)
                took[name] = await load(
                    client, f"cpu-{name}", args.requests, args.hold_s, args.at_once
                )
                await asyncio.sleep(0.2)
                per[name] = (cpu_s(procs[name].pid) - before_s) / args.requests * 1e6
            ratios.append(per["this"] / per["base"])
            print(
                f"round {i + 1}: base {per['base']:.0f} us/request, this {per['this']:.0f} "
                f"us/request, ratio {ratios[-1]:.3f} (requests/s: base "
                f"{args.requests / took['base']:.1f}, this {args.requests / took['this']:.1f})",
                flush=True,
            )
        print(
            f"this/base CPU per request (hold {args.hold_s} s): "
            f"median {statistics.median(ratios):.3f}, "
            f"range {min(ratios):.3f} .. {max(ratios):.3f} over {len(ratios)} rounds"
        )
        await client.close()
        for p in procs.values():
            p.terminate()
            p.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument(
        "--this", type=Path, default=REPO, help="the tree compared (default: this one)"
    )
    parser.add_argument(
        "--base-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the baseline worker only (e.g. JETSERVE_ACK_WAIT_S=15 against this "
        "tree: the cost of one setting alone)",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--hold-s", type=float, default=0.0)
    parser.add_argument(
        "--at-once",
        type=int,
        default=48,
        help="requests in flight (below the capacity of 64: a worker keeps a slot of it for "
        "priority requests, and a request waiting for a slot would make the rounds' length "
        "and idle time differ)",
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="load both workers at the same time in each round (not one after the other): "
        "whatever slows the machine in a round then slows both",
    )
    args = parser.parse_args()
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        "",
    )
    print(
        f"CPU {cpu} ({os.cpu_count()} cores); echo-like test model, no torch (dtype n/a); "
        f"1 Python thread per worker loop"
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
