"""Benchmark: the HTTP bridge's chat endpoint against a trivial endpoint of the same server.

    python -m loadtest.http_bridge [--connections 64] [--duration-s 5] [--rounds 5]
                                   [--baseline DIR] [--json out.json]

Needs `wrk` (Debian: `apt-get install -y wrk`), a C load generator that is not the
bottleneck. One bridge process (`jetserve bridge`, auth off, `JETSERVE_HTTP_ECHO_ROUTE=1`),
one echo worker process and a nats-server are started; then, in one run against that same
bridge process, at the same fixed concurrency, each after a warm-up:

1. `POST /bench/echo` with the chat body: the trivial endpoint. The same framework route,
   body reading and JSON response as the OpenAI routes, no NATS;
2. `GET /healthz`: the cheapest route there is (no body), for reference;
3. `POST /bench/chat`: the chat endpoint's own code (body decoding, conversion, the call, the
   OpenAI response) answered in-process as the echo model would: what the OpenAI handling
   costs, without the queue;
4. `POST /v1/chat/completions` for the echo model: HTTP -> JetStream -> worker process ->
   reply subject -> HTTP, the same ~150-byte body.

The four run in rounds (trivial, healthz, chat without NATS, chat) against the same processes,
and the figures are the rounds' medians: this machine's speed drifts by tens of percent
within a minute, and a ratio taken from side-by-side runs of one round is what drift moves
least. Prints req/s, p50/p99, the CPU per request of the bridge, the worker and nats-server,
how often per request the bridge was preempted (involuntary context switches: on a small
machine the chat run puts the load generator, the bridge, the worker and nats-server on the
same cores), each round's ratio chat / trivial (the target is >= 0.5), and the median ratios
chat / trivial, chat without NATS / trivial and chat / healthz.

With `--baseline DIR` (a copy of another commit's source tree, e.g. `git archive <commit> |
tar -x -C DIR`), a second bridge process runs that code beside this one, on the same NATS and
worker, and each round also times its chat endpoint (5. `baseline`): the ratio chat /
baseline chat of each round is a change's cost measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jetserve.servers import free_port
from loadtest.common import bridge as start_bridge
from loadtest.common import echo_worker, nats_server, wrk_parser

MODEL = "bench-echo"
CHAT_BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello! Tell me something about queues."}],
        "max_tokens": 16,
    }
)
_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _preemptions(pid: int) -> int:
    """Involuntary context switches of all the process's threads so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        match = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
    return total


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """The CPU model and core count (the echo model computes nothing: no dtype, no threads)."""
    name = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"CPU {name}, {os.cpu_count()} cores; echo model (no tensors: no dtype, no threads)"


def nats_server_pid(url: str) -> int | None:
    """The pid of the local nats-server listening on `url`'s port (for CPU accounting)."""
    port = url.rsplit(":", 1)[-1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"nats-server") and port.encode() in args:
            return int(entry.name)
    return None


def wrk(
    url: str,
    connections: int,
    duration_s: float,
    script: Path | None,
    pids: dict[str, int],
    ready: Callable[[], object] | None = None,
) -> dict[str, float]:
    """`pids`: processes whose CPU per request to report; "bridge" is required. `ready`, if
    given, is called once the processes are idle, just before the load starts."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{round(duration_s)}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    quiesce(pids)
    if ready is not None:
        ready()
    before = {name: _cpu_s(pid) for name, pid in pids.items()}
    switched = _preemptions(pids["bridge"])
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    cpu = {name: _cpu_s(pid) - before[name] for name, pid in pids.items()}
    switched = _preemptions(pids["bridge"]) - switched
    figures = {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    for name, seconds in cpu.items():
        figures[f"{name}_cpu_us_per_req"] = seconds / figures["requests"] * 1e6
    figures["bridge_preempted_per_req"] = switched / figures["requests"]
    return figures


def quiesce(pids: dict[str, int], timeout_s: float = 10.0) -> None:
    """Until the processes are idle. When a run ends, wrk drops the requests it has in flight
    and the bridge cancels each one upstream (a cancel message and a stream deletion): work
    that must not be charged to the next run."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        before = sum(_cpu_s(pid) for pid in pids.values())
        time.sleep(0.25)
        if sum(_cpu_s(pid) for pid in pids.values()) - before < 0.02:
            return


def _wait_http(url: str, body: bytes | None, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"{url} not answering after {timeout_s}s")
        time.sleep(0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)")
    with nats_server() as url, tempfile.TemporaryDirectory(prefix="jetserve-bench-") as tmp:
        script = Path(tmp) / "chat.lua"
        script.write_text(_LUA.format(body=CHAT_BODY))
        port = free_port()
        env = {"JETSERVE_NATS_URL": url, "JETSERVE_LOG_LEVEL": "WARNING"}
        worker = echo_worker(MODEL, env)
        bridge = start_bridge(
            port, {**env, "JETSERVE_AUTH": "off", "JETSERVE_HTTP_ECHO_ROUTE": "1"}
        )
        base = f"http://127.0.0.1:{port}"
        bridges = [bridge]
        if args.baseline:
            baseline_port = free_port()
            bridges.append(
                start_bridge(
                    baseline_port,
                    {**env, "JETSERVE_AUTH": "off"},
                    tree=Path(args.baseline).resolve(),
                )
            )
        try:
            _wait_http(f"{base}/v1/chat/completions", CHAT_BODY.encode(), 60)
            targets = {
                "trivial": (f"{base}/bench/echo", script),
                "healthz": (f"{base}/healthz", None),
                "inproc": (f"{base}/bench/chat", script),
                "chat": (f"{base}/v1/chat/completions", script),
            }
            if args.baseline:
                baseline_url = f"http://127.0.0.1:{baseline_port}/v1/chat/completions"
                _wait_http(baseline_url, CHAT_BODY.encode(), 60)
                targets["baseline"] = (baseline_url, script)
            pids = {"bridge": bridge.pid, "worker": worker.pid}
            nats_pid = nats_server_pid(url)
            if nats_pid is not None:
                pids["nats"] = nats_pid
            for target, lua in targets.values():
                wrk(target, args.connections, 2, lua, pids)  # warm-up
            rounds: list[dict[str, dict[str, float]]] = []
            for _ in range(args.rounds):
                rounds.append(
                    {
                        name: wrk(
                            target,
                            args.connections,
                            args.duration_s,
                            lua,
                            {**pids, "bridge": bridges[-1].pid} if name == "baseline" else pids,
                        )
                        for name, (target, lua) in targets.items()
                    }
                )
        finally:
            for proc in (*bridges, worker):
                proc.terminate()
                proc.wait(30)
    figures = {
        name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
        for name in targets
    }
    result: dict[str, Any] = {f"{name}_{k}": v for name, f in figures.items() for k, v in f.items()}
    per_round = [r["chat"]["req_per_s"] / r["trivial"]["req_per_s"] for r in rounds]
    result["ratio_rounds"] = per_round
    result["ratio"] = statistics.median(per_round)
    result["ratio_vs_healthz"] = statistics.median(
        r["chat"]["req_per_s"] / r["healthz"]["req_per_s"] for r in rounds
    )
    result["ratio_inproc"] = statistics.median(
        r["inproc"]["req_per_s"] / r["trivial"]["req_per_s"] for r in rounds
    )
    if args.baseline:
        result["vs_baseline_rounds"] = [
            r["chat"]["req_per_s"] / r["baseline"]["req_per_s"] for r in rounds
        ]
        result["vs_baseline"] = statistics.median(result["vs_baseline_rounds"])
    chat, trivial, healthz = figures["chat"], figures["trivial"], figures["healthz"]
    c = args.connections
    print(machine())
    print(
        f"one bridge process (uvicorn + uvloop + httptools), wrk -t1 -c{c}, {args.duration_s:g}s"
        f" each, {args.rounds} rounds (medians)"
    )
    rows = (
        ("POST /bench/echo (trivial)", trivial),
        ("GET /healthz", healthz),
        ("POST /bench/chat (no NATS)", figures["inproc"]),
        ("POST /v1/chat/completions (echo)", chat),
        *((("  the same, baseline bridge", figures["baseline"]),) if args.baseline else ()),
    )
    for name, f in rows:
        others = "  ".join(
            f"{who} {f[f'{who}_cpu_us_per_req']:4.0f}"
            for who in ("worker", "nats")
            if f"{who}_cpu_us_per_req" in f
        )
        print(
            f"  {name:34s} {f['req_per_s']:8.0f} req/s  p50 {f['p50_ms']:6.2f} ms  "
            f"p99 {f['p99_ms']:6.2f} ms  CPU us/req: bridge {f['bridge_cpu_us_per_req']:4.0f}"
            f"  {others}  bridge preempted {f['bridge_preempted_per_req']:4.2f}/req"
        )
    rounds_text = ", ".join(f"{r:.3f}" for r in per_round)
    print(f"  ratio chat / trivial, each round   {rounds_text}")
    print(f"  ratio chat / trivial               {result['ratio']:8.3f}   (target >= 0.50)")
    print(f"  ratio chat without NATS / trivial  {result['ratio_inproc']:8.2f}")
    print(f"  ratio chat / healthz               {result['ratio_vs_healthz']:8.2f}")
    if args.baseline:
        rounds_text = ", ".join(f"{r:.3f}" for r in result["vs_baseline_rounds"])
        print(f"  ratio chat / baseline chat, rounds {rounds_text}")
        print(f"  ratio chat / baseline chat         {result['vs_baseline']:8.3f}")
    return result


def main() -> None:
    parser = wrk_parser(__doc__, rounds=5)
    parser.add_argument("--baseline", help="another source tree whose bridge runs beside")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
