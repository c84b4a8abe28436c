"""Benchmark: what routing a served name costs the bridge, side by side.

    python -m loadtest.routing_bench [--connections 64] [--duration-s 4] [--rounds 7]

One bridge process (auth off), two echo worker processes and a nats-server. The route
`bench-chat -> bench-echo 999999, bench-echo-b 1` makes every request for `bench-chat` take
the whole routing path (the sticky-key lookup, the blake2b hash, the cumulative-weight lookup,
the request rewritten for its version, the per-version counter) while all but about one in a
million go to the same worker as the concrete model's requests (`bench-echo-b`'s worker is up
in both runs, idle). In each round, `POST /v1/chat/completions` with `model: bench-echo`
(concrete) and with `model: bench-chat` (served name) are run with wrk at the same
concurrency, the order alternating round by round; the figure is each round's ratio served /
concrete req/s, and their median and spread. The target: >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from jetserve.servers import free_port
from loadtest.common import bridge as start_bridge
from loadtest.common import nats_server, spawn, wrk_parser
from loadtest.http_bridge import _wait_http, machine, nats_server_pid, wrk

CONCRETE, SPARE, SERVED = "bench-echo", "bench-echo-b", "bench-chat"
_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def _body(model: str) -> str:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Hello! Tell me something about queues."}],
            "max_tokens": 16,
        }
    )


def _set_route(url: str) -> None:
    import asyncio

    import nats

    from natsio.routes import RouteStore
    from schemas.routes import Target

    async def put() -> None:
        nc = await nats.connect(url)
        try:
            store = await RouteStore.open(nc)
            await store.set(SERVED, [Target(CONCRETE, 999_999), Target(SPARE, 1)])
        finally:
            await nc.close()

    asyncio.run(put())


def run(args: argparse.Namespace) -> dict[str, Any]:
    with nats_server() as url, tempfile.TemporaryDirectory(prefix="jetserve-bench-") as tmp:
        scripts = {}
        for name, model in (("concrete", CONCRETE), ("served", SERVED)):
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(_LUA.format(body=_body(model)))
        env = {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"}
        worker_args = ["-m", "jetserve", "worker", "--class", "echo", "--option", "capacity=256"]
        workers = [spawn([*worker_args, "--model", m], env=env) for m in (CONCRETE, SPARE)]
        port = free_port()
        bridge = start_bridge(port, {**env, "JETSERVE_AUTH": "off"})
        chat = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            _wait_http(chat, _body(CONCRETE).encode(), 60)
            _wait_http(chat, _body(SPARE).encode(), 60)
            _set_route(url)
            _wait_http(chat, _body(SERVED).encode(), 10)
            pids = {"bridge": bridge.pid, "worker": workers[0].pid}
            nats_pid = nats_server_pid(url)
            if nats_pid is not None:
                pids["nats"] = nats_pid
            for script in scripts.values():
                wrk(chat, args.connections, 2, script, pids)  # warm-up
            rounds: list[dict[str, dict[str, float]]] = []
            for i in range(args.rounds):
                order = ("concrete", "served") if i % 2 == 0 else ("served", "concrete")
                rounds.append(
                    {
                        name: wrk(chat, args.connections, args.duration_s, scripts[name], pids)
                        for name in order
                    }
                )
        finally:
            for proc in (bridge, *workers):
                proc.terminate()
                proc.wait(30)
    ratios = [r["served"]["req_per_s"] / r["concrete"]["req_per_s"] for r in rounds]
    cpu = [
        r["served"]["bridge_cpu_us_per_req"] / r["concrete"]["bridge_cpu_us_per_req"]
        for r in rounds
    ]
    result: dict[str, Any] = {
        "machine": machine(),
        "rounds": rounds,
        "ratio_rounds": ratios,
        "ratio": statistics.median(ratios),
        "bridge_cpu_ratio_rounds": cpu,
        "bridge_cpu_ratio": statistics.median(cpu),
    }
    print(machine())
    print(
        f"one bridge process, wrk -t1 -c{args.connections}, {args.duration_s:g}s each, "
        f"{args.rounds} paired rounds (order alternating)"
    )
    for name in ("concrete", "served"):
        f = {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
        print(
            f"  {name:9s} {f['req_per_s']:8.0f} req/s  p50 {f['p50_ms']:6.2f} ms  "
            f"p99 {f['p99_ms']:6.2f} ms  bridge CPU {f['bridge_cpu_us_per_req']:5.0f} us/req"
        )
    print("  served / concrete req/s, rounds  " + ", ".join(f"{r:.3f}" for r in ratios))
    print(
        f"  median {result['ratio']:.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f}; "
        "target >= 0.97)"
    )
    print("  bridge CPU/req served / concrete " + ", ".join(f"{r:.3f}" for r in cpu))
    return result


def main() -> None:
    args = wrk_parser(__doc__, duration_s=4.0).parse_args()
    if args.rounds < 7:
        sys.exit("a gate needs at least 7 paired rounds")
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
