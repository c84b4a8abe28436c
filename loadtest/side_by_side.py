"""Benchmark: two variants of the HTTP path under the same conditions, for no-regression gates.

    python -m loadtest.side_by_side {tree,responses,limits,routing,pipeline,batch} [--old DIR]
        [--rounds 7] [--duration-s 8] [--connections 32] [--mode slices|together]
        [--slice-ms 100] [--json out.json]

Each variant is a lane: a whole stack of its own (a nats-server, the echo worker(s), one bridge
process, and a PostgreSQL where the variant needs one) driven by its own `wrk -t1`.

By default (`--mode slices`) the lanes take turns, 0.1 s at a time (`loadtest.slices`): each
has the whole machine during its slices, and the machine's drift over seconds falls on both
alike. A round gives each lane `--duration-s` of slices; its requests per second are what its
bridge answered over its active time. An A/A check (this tree in both lanes), 7 rounds of 8 s,
on a machine shared with other work (load average 3): rounds 0.955-1.035, while each lane's
absolute rate moved from 4,200 to 6,700 requests per second.

With `--mode together` both lanes' wrk runs start together in each round and run for the same
time, sharing the two cores: each serves about half of what it would alone, and how the
kernel splits ten processes between two cores moves single rounds by 5-10 % (A/A 0.98-1.08).
Run one after the other instead, this 2-core machine's drift of tens of percent within a
minute lands in the ratio (A/A 0.66-1.33).

What a lane costs shows as fewer requests per second for the same CPU, which is what
"requests per second >= 0.97x" guards; the bridge's CPU per request is printed beside it.

Gates (lane A, lane B):
- `tree`: `/v1/chat/completions` with the bridge and worker of `--old DIR` (a copy of an
  older commit's tree: `git archive <commit> | tar -x -C DIR`), and of this tree (or `--new
  DIR`).
- `responses`: this tree, `/v1/chat/completions`, and `/v1/responses` (`store: false`) for
  the same input (the Responses issue's gate).
- `limits`: this tree, tenant limits off, and on but never reached (the tenants' gate).
- `routing`: this tree, the concrete model, and a served name routed to it (the versions' gate).

Whole benchmarks, `--old DIR` and this tree (`loadtest.lanes_whole`: each tree's whole stack,
the two taking turns on the machine every 200 ms):
- `pipeline`: `loadtest.pipeline`'s echo pipeline, requests per second;
- `batch`: `loadtest.batch_bench`'s large batch (50,000 lines), items per second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetserve.servers import NatsServer, PostgresServer, free_port
from loadtest import lanes_whole
from loadtest.common import REPO, spawn
from loadtest.http_bridge import _LUA, CHAT_BODY, MODEL, _wait_http, machine, quiesce, wrk
from loadtest.limits_bench import LIMITS_ON
from loadtest.responses_bench import RESPONSES
from loadtest.routing_bench import SERVED, SPARE, _set_route
from loadtest.slices import Turn, take_turns


@dataclass
class Lane:
    name: str
    path: str = "/v1/chat/completions"
    body: str = CHAT_BODY
    tree: Path = REPO
    bridge_env: dict[str, str] = field(default_factory=dict)
    #: Models served by echo workers in this lane (one worker process each).
    models: tuple[str, ...] = (MODEL,)
    postgres: bool = False
    #: Run once the lane's workers answer (e.g. to write routes), given the NATS URL.
    setup: Callable[[str], None] | None = None


def lanes(gate: str, old: Path | None, new: Path = REPO) -> tuple[Lane, Lane]:
    if gate == "tree":
        if old is None:
            sys.exit("--old DIR is required for the tree gate")
        return Lane("old", tree=old.resolve()), Lane("new", tree=new.resolve())
    if gate == "responses":
        body = json.dumps({**RESPONSES, "store": False})
        return Lane("chat", postgres=True), Lane("responses", "/v1/responses", body, postgres=True)
    if gate == "limits":
        return Lane("off", bridge_env={"JETSERVE_LIMITS": "off"}), Lane("on", bridge_env=LIMITS_ON)
    if gate == "routing":
        served = CHAT_BODY.replace(f'"{MODEL}"', f'"{SERVED}"')
        both = (MODEL, SPARE)
        return Lane("concrete", models=both, setup=_set_route), Lane(
            "served", body=served, models=both, setup=_set_route
        )
    raise ValueError(gate)


@dataclass
class Running:
    lane: Lane
    url: str
    script: Path
    pids: dict[str, int]


@contextmanager
def stack(lane: Lane, tmp: Path) -> Iterator[Running]:
    """The lane's servers and processes, answering."""
    with ExitStack() as stack:
        nats = NatsServer(tmp / f"{lane.name}-nats").start()
        stack.callback(nats.stop)
        env = {"JETSERVE_NATS_URL": nats.url, "JETSERVE_LOG_LEVEL": "WARNING"}
        bridge_env = {**env, "JETSERVE_AUTH": "off", **lane.bridge_env}
        if lane.postgres:
            pg = PostgresServer(tmp / f"{lane.name}-pg", durable=False).start()
            stack.callback(pg.stop)
            bridge_env["JETSERVE_DATABASE_URL"] = pg.dsn
        echo = ("--class", "echo", "--option", "capacity=256")
        procs = [
            spawn(["-m", "jetserve", "worker", "--model", model, *echo], env, lane.tree)
            for model in lane.models
        ]
        port = free_port()
        procs.append(
            spawn(["-m", "jetserve", "bridge", "--port", str(port)], bridge_env, lane.tree)
        )
        for proc in procs:
            stack.callback(proc.wait, 30)
            stack.callback(proc.terminate)
        base = f"http://127.0.0.1:{port}"
        for model in lane.models:
            _wait_http(f"{base}/v1/chat/completions", CHAT_BODY.replace(MODEL, model).encode(), 60)
        if lane.setup is not None:
            lane.setup(nats.url)
        url = base + lane.path
        _wait_http(url, lane.body.encode(), 30)
        script = tmp / f"{lane.name}.lua"
        script.write_text(_LUA.format(body=lane.body))
        yield Running(lane, url, script, {"bridge": procs[-1].pid, "worker": procs[0].pid})


def together(
    running: tuple[Running, Running], connections: int, duration_s: float
) -> list[dict[str, float]]:
    """Both lanes' wrk runs at once, started when both stacks are idle."""
    start = threading.Barrier(2)
    got: list[dict[str, float]] = [{}, {}]
    failed: list[BaseException] = []

    def drive(i: int) -> None:
        lane = running[i]
        try:
            got[i] = wrk(lane.url, connections, duration_s, lane.script, lane.pids, start.wait)
        except BaseException as exc:  # reported by the caller
            start.abort()
            failed.append(exc)

    threads = [threading.Thread(target=drive, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    return got


def in_slices(running: tuple[Running, Running], args: argparse.Namespace) -> list[Any]:
    """Each lane's wrk in turn, `--slice-ms` at a time (`loadtest.slices`)."""
    turns = []
    for lane in running:
        quiesce(lane.pids)
        cmd = ["wrk", "-t1", f"-c{args.connections}", "-d100000s", "-s", str(lane.script)]
        turns.append(Turn(lane.url.removesuffix(lane.lane.path), lane.pids, [*cmd, lane.url]))
    return take_turns(turns, args.rounds, args.duration_s, args.slice_ms / 1000)


#: Whole benchmarks, run by `loadtest.lanes_whole`.
BENCHES = ("pipeline", "batch")


def run_trees(args: argparse.Namespace) -> dict[str, Any]:
    """Both trees' whole stacks taking turns, per round."""
    if args.old is None:
        sys.exit(f"--old DIR is required for the {args.gate} gate")
    with tempfile.TemporaryDirectory(prefix="jetserve-bench-", dir="/var/tmp") as tmp:
        return lanes_whole.run(args, Path(tmp))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)")
    a, b = lanes(args.gate, args.old, args.new)
    with (
        tempfile.TemporaryDirectory(prefix="jetserve-bench-", dir="/var/tmp") as tmp,
        stack(a, Path(tmp)) as ra,
        stack(b, Path(tmp)) as rb,
    ):
        if args.mode == "slices":
            rounds = in_slices((ra, rb), args)
        else:
            together((ra, rb), args.connections, 2)  # warm-up
            rounds = [
                together((ra, rb), args.connections, args.duration_s) for _ in range(args.rounds)
            ]
    ratios = [r[1]["req_per_s"] / r[0]["req_per_s"] for r in rounds]
    cpu = [r[1]["bridge_cpu_us_per_req"] / r[0]["bridge_cpu_us_per_req"] for r in rounds]
    return {
        "machine": machine(),
        "gate": args.gate,
        "mode": args.mode,
        "lanes": [a.name, b.name],
        "rounds": rounds,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "bridge_cpu_ratio": statistics.median(cpu),
    }


def report(result: dict[str, Any]) -> None:
    if "lanes" not in result:
        print(result["machine"])
        print(f"gate {result['gate']}: old and new trees' stacks taking turns, each round")
        for name, ratios in result["ratios"].items():
            print(
                f"  {name} new / old: median {result['ratio'][name]:.3f}, rounds "
                f"{min(ratios):.3f}-{max(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"
            )
        return
    a, b = result["lanes"]
    print(result["machine"])
    how = "taking turns" if result.get("mode") == "slices" else "both at once"
    print(f"gate {result['gate']}: lanes {a} (A) and {b} (B), each round {how}")
    for i, (ra, rb) in enumerate(result["rounds"], 1):
        print(
            f"  round {i}: {a} {ra['req_per_s']:7.0f} req/s ({ra['bridge_cpu_us_per_req']:4.0f} µs"
            f" bridge CPU/req)  {b} {rb['req_per_s']:7.0f} req/s "
            f"({rb['bridge_cpu_us_per_req']:4.0f} µs)  {b}/{a} "
            f"{rb['req_per_s'] / ra['req_per_s']:.3f}"
        )
    ratios = result["ratios"]
    print(
        f"  ratio {b} / {a} req/s: median {result['ratio']:.3f}, rounds "
        f"{min(ratios):.3f}-{max(ratios):.3f}; bridge CPU per request B / A "
        f"{result['bridge_cpu_ratio']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gate", choices=("tree", "responses", "limits", "routing", *BENCHES))
    parser.add_argument("--old", type=Path, help="the older tree (tree, pipeline, batch)")
    parser.add_argument("--new", type=Path, default=REPO, help="the newer tree (default: this one)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32, help="per lane")
    parser.add_argument(
        "--mode",
        choices=("slices", "together"),
        default="slices",
        help="lanes take turns, --slice-ms each (default), or run at the same time",
    )
    parser.add_argument("--slice-ms", type=float, default=100.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run_trees(args) if args.gate in BENCHES else run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
