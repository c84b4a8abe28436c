"""Whole-benchmark no-regression gates: two trees' stacks taking turns on the machine.

    python -m loadtest.side_by_side {pipeline,batch} --old DIR [--new DIR] [--rounds 7]
        [--duration-s 8] [--json out.json]

Each tree is a lane: a whole stack of its own, every process started from that tree's code
(its nats-server; its echo worker; for `batch` its PostgreSQL, bridge and a fresh scheduler
per round; for `pipeline` its producer, `loadtest/lane_producer.py` importing the tree's
`producer.client`). Both are set up and warm. Then the load runs in alternating slices
(`loadtest.turns`): every process of lane A is stopped (SIGSTOP, PostgreSQL's backends
included) while lane B's run (SIGCONT), and the two swap every 200 ms, so one lane works at a
time, on the whole machine, and whatever drifts over seconds (other work, the host,
frequency) falls on both lanes alike. Each lane's rate is its work over the time it ran:

- `batch` (`make bench-batch`'s figure, its large batch): per round each lane runs one batch
  of 50,000 lines (uploaded before the turns start: the benchmark times the upload apart)
  from create to completed, polled every 50 ms as the benchmark does; items/s = lines / the
  lane's running time between the batch's own `created_at` and `completed_at` (PostgreSQL's
  clock, the wall clock the turns are recorded in). A round with 5,000 lines comes first,
  not counted, as the benchmark's small batch does.
- `pipeline` (`make bench`'s echo pipeline): the lane's producer keeps 256 requests in flight
  all the time and counts answers; a round is `--duration-s` of running per lane (after 4 s
  each of warm-up), req/s = answers in the round's slices / their running time. The
  benchmark's ratio divides this by raw JetStream throughput, measured with nats-py alone,
  the same code in both trees: the new / old ratio of the pipeline's req/s is that gate.

Stopping is sound for this work: a lane is stopped whole (server and clients together) for
200 ms at a time, far below every timer that could turn a pause into lost or repeated work
(the workers' ack_wait of 3 s, with in-progress acks every second; request timeouts of
120 s; NATS pings every 2 minutes). Wall-clock sleeps (pollers, flush intervals) run on while
a lane is stopped, so a lane idles less of its running time than alone: the same in both
lanes. Each lane's redeliveries are counted from its JetStream consumers and reported; they
should be 0. An A/A run (`--old` this tree) shows the method's own spread.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats

from jetserve.servers import NatsServer, PostgresServer, free_port
from loadtest.batch_bench import MODEL, _wait_active, _wait_ready, _write_input, check_output
from loadtest.common import REPO, spawn
from loadtest.http_bridge import machine
from loadtest.turns import Turns, active_between

LINES, WARM_LINES = 50_000, 5_000  # `make bench-batch`: its large and small batch
IN_FLIGHT = 256
WARM_UP_S = 4.0
BATCH_POLL_S = 0.05


@dataclass
class Lane:
    name: str
    tree: Path
    nats: NatsServer
    roots: list[int]  #: the lane's processes (servers and ours), stopped and continued together
    logs: Path
    pg: PostgresServer | None = None
    url: str = ""  #: the bridge (batch)
    counter: Path | None = None  #: the producer's answers (pipeline)

    def env(self) -> dict[str, str]:
        env = {"JETSERVE_NATS_URL": self.nats.url, "JETSERVE_LOG_LEVEL": "WARNING"}
        if self.pg is not None:
            env |= {"JETSERVE_DATABASE_URL": self.pg.dsn, "JETSERVE_AUTH": "off"}
        return env

    def start(self, stack: ExitStack, args: list[str], tag: str) -> subprocess.Popen[bytes]:
        """`python args` from the lane's tree, stopped with the stack."""
        log = stack.enter_context((self.logs / f"{self.name}-{tag}.log").open("ab"))
        proc = spawn(args, self.env(), self.tree, stderr=log)
        stack.callback(proc.wait, 30)
        stack.callback(proc.terminate)
        return proc


@contextmanager
def servers(name: str, tree: Path, tmp: Path, postgres: bool) -> Iterator[Lane]:
    with ExitStack() as stack:
        nats_server = NatsServer(tmp / f"{name}-nats").start()
        stack.callback(nats_server.stop)
        pg = None
        if postgres:
            pg = PostgresServer(tmp / f"{name}-pg", durable=False).start()
            stack.callback(pg.stop)
        procs = [nats_server.proc, pg.proc if pg is not None else None]
        roots = [p.pid for p in procs if p is not None]
        yield Lane(name, tree.resolve(), nats_server, roots, tmp, pg)


def redelivered(url: str) -> int:
    """Messages its JetStream consumers delivered more than once."""

    async def count() -> int:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            total = 0
            for stream in await js.streams_info():
                for consumer in await js.consumers_info(stream.config.name or ""):
                    total += consumer.num_redelivered or 0
            return total
        finally:
            await nc.close()

    return asyncio.run(count())


# --- batch -------------------------------------------------------------------------------


@contextmanager
def batch_lane(name: str, tree: Path, tmp: Path) -> Iterator[Lane]:
    with servers(name, tree, tmp, postgres=True) as lane, ExitStack() as stack:
        worker = ["-m", "jetserve", "worker", "--model", MODEL, "--class", "echo"]
        port = free_port()
        lane.roots.append(lane.start(stack, worker, "worker").pid)
        bridge = ["-m", "jetserve", "bridge", "--port", str(port)]
        lane.roots.append(lane.start(stack, bridge, "bridge").pid)
        lane.url = f"http://127.0.0.1:{port}"
        _wait_ready(lane.url)
        yield lane


def _drive(client: httpx.Client, file_id: str, out: dict[str, Any]) -> None:
    """Create the batch and poll it until it ends (blocks while the lane is stopped)."""
    try:
        batch = client.post(
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ).json()
        while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(BATCH_POLL_S)
            batch = client.get(f"/batches/{batch['id']}").json()
        out["batch"] = batch
    except BaseException as exc:  # reported by the caller
        out["error"] = exc


async def _times(dsn: str, batch_id: str) -> tuple[float, float]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT extract(epoch FROM created_at) AS created, "
            "extract(epoch FROM completed_at) AS completed FROM batches WHERE id = $1",
            batch_id,
        )
    finally:
        await conn.close()
    return float(row["created"]), float(row["completed"])


def batch_round(lanes: list[Lane], path: Path, lines: int, first: int) -> list[float]:
    """One batch per lane, the lanes taking turns; each lane's items/s."""
    with ExitStack() as stack:
        schedulers = []
        for lane in lanes:
            port = free_port()
            args = ["-m", "jetserve", "scheduler", "--metrics-port", str(port)]
            schedulers.append((port, lane.start(stack, args, "scheduler")))
        clients = [
            stack.enter_context(httpx.Client(base_url=lane.url + "/v1", timeout=300))
            for lane in lanes
        ]
        for port, scheduler in schedulers:
            _wait_active(port, scheduler)
        files = []
        for client in clients:
            with path.open("rb") as f:
                sent = {"file": (path.name, f)}
                files.append(client.post("/files", data={"purpose": "batch"}, files=sent).json())
        roots = [[*lane.roots, s.pid] for lane, (_, s) in zip(lanes, schedulers, strict=True)]
        turns = Turns(roots)
        outs: list[dict[str, Any]] = [{}, {}]
        drivers = [
            threading.Thread(target=_drive, args=(clients[i], files[i]["id"], outs[i]))
            for i in (0, 1)
        ]

        def begin() -> None:  # with both lanes stopped: the batches are created in their turns
            for thread in drivers:
                thread.start()

        turns.run(lambda: not any(t.is_alive() for t in drivers), first, begin)
        rates = []
        for i, lane in enumerate(lanes):
            if "error" in outs[i]:
                raise outs[i]["error"]
            check_output(clients[i], outs[i]["batch"], lines)
            assert lane.pg is not None
            created, completed = asyncio.run(_times(lane.pg.dsn, outs[i]["batch"]["id"]))
            rates.append(lines / active_between(turns.slices[i], created, completed))
        return rates


def run_batch(trees: dict[str, Path], rounds: int, tmp: Path) -> list[dict[str, dict[str, float]]]:
    path, warm = tmp / "in.jsonl", tmp / "warm.jsonl"
    _write_input(path, LINES)
    _write_input(warm, WARM_LINES)
    with (
        batch_lane("old", trees["old"], tmp) as old,
        batch_lane("new", trees["new"], tmp) as new,
    ):
        batch_round([old, new], warm, WARM_LINES, 0)
        got = []
        for r in range(rounds):
            got.append(_round(r, "items_per_s", batch_round([old, new], path, LINES, r % 2)))
        print(f"  redelivered: old {redelivered(old.nats.url)}, new {redelivered(new.nats.url)}")
    return got


def _round(r: int, figure: str, rates: list[float]) -> dict[str, dict[str, float]]:
    """Round `r`'s rates (old, new) as `side_by_side` reports them, printed as they come."""
    unit = figure.removesuffix("_per_s") + "/s"
    print(
        f"  round {r + 1}: {unit} old {rates[0]:,.0f}  new {rates[1]:,.0f}  "
        f"new/old {rates[1] / rates[0]:.3f}",
        flush=True,
    )
    return {"old": {figure: rates[0]}, "new": {figure: rates[1]}}


# --- pipeline ----------------------------------------------------------------------------


@contextmanager
def pipeline_lane(name: str, tree: Path, tmp: Path) -> Iterator[Lane]:
    with servers(name, tree, tmp, postgres=False) as lane, ExitStack() as stack:
        model = "bench-echo"
        echo = ("--class", "echo", "--option", f"capacity={IN_FLIGHT}")
        worker = ["-m", "jetserve", "worker", "--model", model, *echo]
        lane.roots.append(lane.start(stack, worker, "worker").pid)
        lane.counter = tmp / f"{name}.counter"
        lane.counter.write_bytes(bytes(16))
        producer = [str(REPO / "loadtest" / "lane_producer.py"), lane.nats.url, model]
        producer += [str(IN_FLIGHT), str(lane.counter)]
        lane.roots.append(lane.start(stack, producer, "producer").pid)
        end = time.monotonic() + 60
        while _reading(lane, 0) != 1:
            if time.monotonic() > end:
                raise TimeoutError(f"lane {name}: the worker did not answer")
            time.sleep(0.1)
        yield lane


def _reading(lane: Lane, field: int) -> int:
    assert lane.counter is not None
    return int.from_bytes(lane.counter.read_bytes()[8 * field : 8 * field + 8], "little")


def run_pipeline(
    trees: dict[str, Path], rounds: int, duration_s: float, tmp: Path
) -> list[dict[str, dict[str, float]]]:
    with (
        pipeline_lane("old", trees["old"], tmp) as old,
        pipeline_lane("new", trees["new"], tmp) as new,
    ):
        lanes = [old, new]
        turns = Turns([old.roots, new.roots], read=lambda i: _reading(lanes[i], 1))
        warm, per_round = round(WARM_UP_S / turns.slice_s), round(duration_s / turns.slice_s)
        wanted = warm + rounds * per_round
        turns.run(lambda: min(len(s) for s in turns.slices) >= wanted)
        got = []
        for r in range(rounds):
            rates = []
            for i in (0, 1):
                answered, ran_s = turns.window(i, warm + r * per_round, per_round)
                rates.append(answered / ran_s)
            got.append(_round(r, "req_per_s", rates))
        print(f"  redelivered: old {redelivered(old.nats.url)}, new {redelivered(new.nats.url)}")
    return got


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`side_by_side`'s result for the `pipeline` / `batch` gate: the rounds, each new / old."""
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    print(
        f"gate {args.gate}: old {trees['old']}, new {trees['new']}, taking turns every 200 ms",
        flush=True,
    )
    if args.gate == "batch":
        rounds = run_batch(trees, args.rounds, tmp)
    else:
        rounds = run_pipeline(trees, args.rounds, args.duration_s, tmp)
    key = next(iter(rounds[0]["new"]))
    ratios = {key: [r["new"][key] / r["old"][key] for r in rounds]}
    return {
        "machine": machine(),
        "gate": args.gate,
        "method": "turns",
        "rounds": rounds,
        "ratios": ratios,
        "ratio": {key: statistics.median(ratios[key])},
    }
