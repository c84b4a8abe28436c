"""Benchmark: the cost of tenant limits on the hot path.

    python -m loadtest.limits_bench [--rounds 7] [--duration-s 5] [--connections 64]

Two bridge processes on one nats-server and one echo worker: one with limits off
(`JETSERVE_LIMITS=off`), one enforcing limits that are never reached (defaults of 10^9
requests and 10^12 tokens a minute, 10^6 in flight: every request goes through the gate, its
token buckets and its headers). wrk drives `POST /v1/chat/completions` against each in turn,
the order alternating between rounds; each round's ratio on / off is the cost measured side by
side. Target: the median >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from jetserve.servers import free_port
from loadtest.common import bridge as start_bridge
from loadtest.common import echo_worker, nats_server, wrk_parser
from loadtest.http_bridge import _LUA, CHAT_BODY, MODEL, _wait_http, machine, wrk

LIMITS_ON = {
    "JETSERVE_DEFAULT_RPM": str(10**9),
    "JETSERVE_DEFAULT_TPM": str(10**12),
    "JETSERVE_DEFAULT_MAX_IN_FLIGHT": str(10**6),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with nats_server() as url, tempfile.TemporaryDirectory(prefix="jetserve-bench-") as tmp:
        script = Path(tmp) / "chat.lua"
        script.write_text(_LUA.format(body=CHAT_BODY))
        env = {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING", "JETSERVE_AUTH": "off"}
        worker = echo_worker(MODEL, env)
        ports = {"off": free_port(), "on": free_port()}
        bridges = {
            "off": start_bridge(ports["off"], {**env, "JETSERVE_LIMITS": "off"}),
            "on": start_bridge(ports["on"], {**env, **LIMITS_ON}),
        }
        urls = {k: f"http://127.0.0.1:{p}/v1/chat/completions" for k, p in ports.items()}
        rounds: list[dict[str, float]] = []
        try:
            for target in urls.values():
                _wait_http(target, CHAT_BODY.encode(), 60)
            for name, target in urls.items():  # warm-up
                wrk(target, args.connections, 2, script, {"bridge": bridges[name].pid})
            for i in range(args.rounds):
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                got = {
                    name: wrk(
                        urls[name],
                        args.connections,
                        args.duration_s,
                        script,
                        {"bridge": bridges[name].pid, "worker": worker.pid},
                    )
                    for name in order
                }
                rounds.append(
                    {
                        "off": got["off"]["req_per_s"],
                        "on": got["on"]["req_per_s"],
                        "ratio": got["on"]["req_per_s"] / got["off"]["req_per_s"],
                        "off_bridge_cpu_us": got["off"]["bridge_cpu_us_per_req"],
                        "on_bridge_cpu_us": got["on"]["bridge_cpu_us_per_req"],
                    }
                )
                print(
                    f"round {i + 1} ({order[0]} first): off {rounds[-1]['off']:,.0f} req/s, "
                    f"on {rounds[-1]['on']:,.0f} req/s, on / off {rounds[-1]['ratio']:.3f}",
                    flush=True,
                )
        finally:
            for proc in (*bridges.values(), worker):
                proc.terminate()
                proc.wait(30)
    ratios = [r["ratio"] for r in rounds]
    return {
        "rounds": rounds,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "bridge_cpu_us_off": statistics.median(r["off_bridge_cpu_us"] for r in rounds),
        "bridge_cpu_us_on": statistics.median(r["on_bridge_cpu_us"] for r in rounds),
    }


def main() -> None:
    args = wrk_parser(__doc__).parse_args()
    print(machine())
    print(f"wrk -c{args.connections}, {args.duration_s:.0f} s a run, {args.rounds} rounds")
    result = run(args)
    print(
        f"limits on / off: median {result['ratio']:.3f} "
        f"(rounds {result['ratio_min']:.3f}-{result['ratio_max']:.3f}; target >= 0.95); "
        f"bridge CPU per request off {result['bridge_cpu_us_off']:.0f} us, "
        f"on {result['bridge_cpu_us_on']:.0f} us"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
