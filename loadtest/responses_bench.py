"""Benchmark: `POST /v1/responses` against `POST /v1/chat/completions` for the same work.

    python -m loadtest.responses_bench [--connections 64] [--duration-s 5] [--rounds 7]

One bridge process (auth off, a PostgreSQL for stored responses), one echo worker process
and a nats-server. In each round, against the same processes and at the same concurrency
(wrk, after a warm-up): chat with a one-message body; Responses with the same input and
`store: false`; Responses with `store: true` (one INSERT per response). Prints each round's
ratios responses / chat and their medians (the gate: store false >= 0.95; the order of the
three alternates from round to round), the machine's
CPU model and the thread count (the echo model has no dtype: no tensors are computed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from jetserve.servers import PostgresServer, free_port
from loadtest.common import bridge as start_bridge
from loadtest.common import echo_worker, nats_server, wrk_parser
from loadtest.http_bridge import _LUA, _wait_http, nats_server_pid, wrk

MODEL = "bench-echo"
TEXT = "Hello! Tell me something about queues."
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": TEXT}], "max_tokens": 16}
RESPONSES = {"model": MODEL, "input": TEXT, "max_output_tokens": 16}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)")
    bodies = {
        "chat": CHAT,
        "responses_nostore": {**RESPONSES, "store": False},
        "responses_store": {**RESPONSES, "store": True},
    }
    paths = {
        "chat": "/v1/chat/completions",
        "responses_nostore": "/v1/responses",
        "responses_store": "/v1/responses",
    }
    with (
        nats_server() as url,
        tempfile.TemporaryDirectory(prefix="jetserve-bench-", dir="/var/tmp") as tmp,
    ):
        pg = PostgresServer(Path(tmp) / "pg", durable=False).start()
        scripts = {}
        for name, body in bodies.items():
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(_LUA.format(body=json.dumps(body)))
        port = free_port()
        env = {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"}
        worker = echo_worker(MODEL, env)
        bridge = start_bridge(
            port, {**env, "JETSERVE_AUTH": "off", "JETSERVE_DATABASE_URL": pg.dsn}
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{base}/v1/chat/completions", json.dumps(CHAT).encode(), 60)
            pids = {"bridge": bridge.pid, "worker": worker.pid}
            nats_pid = nats_server_pid(url)
            if nats_pid is not None:
                pids["nats"] = nats_pid
            for name in bodies:
                wrk(base + paths[name], args.connections, 2, scripts[name], pids)  # warm-up
            rounds: list[dict[str, dict[str, float]]] = []
            for i in range(args.rounds):
                # Alternating order (even rounds chat first, odd rounds chat last), so no
                # variant always runs right after the warm-up or right after another.
                order = list(bodies) if i % 2 == 0 else list(reversed(bodies))
                rounds.append(
                    {
                        name: wrk(
                            base + paths[name],
                            args.connections,
                            args.duration_s,
                            scripts[name],
                            pids,
                        )
                        for name in order
                    }
                )
        finally:
            for proc in (bridge, worker):
                proc.terminate()
                proc.wait(30)
            pg.stop()
    result: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count()}
    for name in bodies:
        result[f"{name}_req_per_s"] = statistics.median(r[name]["req_per_s"] for r in rounds)
        result[f"{name}_bridge_cpu_us_per_req"] = statistics.median(
            r[name]["bridge_cpu_us_per_req"] for r in rounds
        )
    for name in ("responses_nostore", "responses_store"):
        ratios = [r[name]["req_per_s"] / r["chat"]["req_per_s"] for r in rounds]
        result[f"{name}_ratio_rounds"] = ratios
        result[f"{name}_ratio"] = statistics.median(ratios)
    c = args.connections
    print(
        f"{result['cpu']}, {result['cpus']} CPUs; one bridge process (uvicorn, uvloop, one "
        f"thread), echo worker (no tensors: no dtype); wrk -t1 -c{c}, {args.duration_s:g}s "
        f"each, {args.rounds} paired rounds (medians)"
    )
    for name in bodies:
        print(
            f"  {name:18s} {result[f'{name}_req_per_s']:8.0f} req/s  "
            f"bridge CPU {result[f'{name}_bridge_cpu_us_per_req']:5.0f} us/req"
        )
    for name in ("responses_nostore", "responses_store"):
        ratios = result[f"{name}_ratio_rounds"]
        print(
            f"  {name} / chat: median {result[f'{name}_ratio']:.3f}, rounds "
            f"{', '.join(f'{r:.3f}' for r in ratios)} (min {min(ratios):.3f}, max "
            f"{max(ratios):.3f})"
        )
    return result


def main() -> None:
    args = wrk_parser(__doc__).parse_args()
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
