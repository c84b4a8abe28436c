"""`jetserve status`: what the system is doing, from NATS (and PostgreSQL when given).

Per model: its workers (presence pings: capacity, load, state), requests queued per
consumer (online, batch, ...) and in flight (the consumers' `num_pending` and
`num_ack_pending`), the age of the oldest request in its stream, and its dead letters. From
PostgreSQL: batches in progress (a progress bar each) and whether a scheduler holds the
scheduler lock. The local stack is found from stack.json; `--nats-url` / `--database-url`
point it at any deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

from nats.aio.client import Client as NATS

from jetserve.local_stack import stack_value
from natsio.connection import connect
from natsio.directory import list_models
from natsio.ping import ping_workers
from schemas import names
from schemas.names import Priority
from schemas.settings import DATABASE_URL, NATS_URL, ConfigError

#: How long pings collect answers.
PING_WINDOW_S = 0.3


async def model_status(nc: NATS, model: str) -> dict[str, Any]:
    js = nc.jetstream()
    queued: dict[str, int] = {}
    in_flight = 0
    for priority in Priority:
        try:
            info = await js.consumer_info(names.stream_name(model), names.consumer_name(priority))
        except Exception:
            continue
        queued[str(priority)] = int(info.num_pending or 0)
        in_flight += int(info.num_ack_pending or 0)
    stream = await js.stream_info(names.stream_name(model))
    # A work-queue stream keeps only unacknowledged requests: its first is the oldest one
    # waiting or running.
    oldest_s = None
    if stream.state.messages:
        with contextlib.suppress(Exception):  # taken meanwhile
            first = await js.get_msg(names.stream_name(model), seq=stream.state.first_seq)
            if first.time is not None:
                oldest_s = round(max(0.0, time.time() - first.time.timestamp()), 1)
    workers = await _ping(nc, model)
    return {
        "workers": len(workers),
        "loading": sum(1 for w in workers if w["state"] == "loading"),
        "capacity": sum(w["capacity"] for w in workers),
        "load": sum(w["in_flight"] for w in workers),
        "queued": queued,
        "in_flight": in_flight,
        "oldest_request_age_s": oldest_s,
    }


async def _ping(nc: NATS, model: str) -> list[dict[str, Any]]:
    workers = await ping_workers(nc, model, window_s=PING_WINDOW_S)
    return [{"state": w.state, "capacity": w.capacity, "in_flight": w.in_flight} for w in workers]


async def dead_letters(nc: NATS) -> dict[str, int]:
    try:
        info = await nc.jetstream().stream_info(
            names.DLQ_STREAM, subjects_filter=names.DLQ_SUBJECTS
        )
    except Exception:
        return {}
    return {s.rsplit(".", 1)[-1]: int(n) for s, n in (info.state.subjects or {}).items()}


async def database_status(dsn: str) -> dict[str, Any]:
    import asyncpg

    from scheduler.service import LOCK_KEY

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, status, model, total, completed, failed FROM batches "
            "WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling') "
            "ORDER BY created_at LIMIT 50"
        )
        holders = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND ((classid::bigint << 32) | objid::bigint) = $1",
            LOCK_KEY,
        )
    finally:
        await conn.close()
    return {
        "batches": [dict(r) for r in rows],
        "scheduler": "active" if holders else "none active",
    }


async def gather(
    nats_url: str, database_url: str | None, only: list[str] | None = None
) -> dict[str, Any]:
    """The report; `only`: these models alone (else every model with a request stream)."""
    nc = await connect(nats_url, name="jetserve-status")
    try:
        models = await list_models(nc)
        if only:
            models = [m for m in models if m in only]
        per = await asyncio.gather(*(model_status(nc, m) for m in models))
        dead = await dead_letters(nc)
    finally:
        await nc.close()
    report: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {
            m: {**s, "dead_letters": dead.get(m, 0)} for m, s in zip(models, per, strict=True)
        },
    }
    if database_url:
        report.update(await database_status(database_url))
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"jetserve status  {report['time']}", ""]
    lines.append(
        f"{'MODEL':<22}{'WORKERS':>8}{'LOAD':>10}{'ONLINE':>8}{'BATCH':>8}{'IN FLIGHT':>10}"
        f"{'OLDEST':>9}{'DLQ':>6}"
    )
    for model, s in report["models"].items():
        workers = f"{s['workers']}" + (f" ({s['loading']} loading)" if s["loading"] else "")
        oldest = "-" if s["oldest_request_age_s"] is None else f"{s['oldest_request_age_s']:.0f}s"
        lines.append(
            f"{model:<22}{workers:>8}{s['load']:>5}/{s['capacity']:<4}"
            f"{s['queued'].get('online', 0):>8}{s['queued'].get('batch', 0):>8}"
            f"{s['in_flight']:>10}{oldest:>9}{s['dead_letters']:>6}"
        )
    if "batches" in report:
        lines += [
            "",
            f"scheduler: {report['scheduler']}",
            f"batches in progress: {len(report['batches'])}",
        ]
        for b in report["batches"]:
            done = b["completed"] + b["failed"]
            total = max(1, b["total"])
            bar = "#" * int(30 * done / total)
            lines.append(f"  {b['id']:<30} [{bar:<30}] {done:>7,}/{b['total']:<7,} {b['status']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    nats_url = args.nats_url or os.environ.get(NATS_URL) or stack_value("nats_url")
    if not nats_url:
        raise ConfigError(f"no NATS: pass --nats-url, set {NATS_URL}, or run `jetserve up`")
    dsn = args.database_url or os.environ.get(DATABASE_URL) or stack_value("database_url")
    while True:
        report = asyncio.run(gather(nats_url, dsn, args.model))
        if args.json:
            print(json.dumps(report, indent=2, default=str), flush=True)
        elif args.watch:
            # Redraw in place: cursor home, clear the screen below.
            sys.stdout.write("\x1b[H\x1b[J" + render(report) + "\n")
            sys.stdout.flush()
        else:
            print(render(report))
        if not args.watch:
            return 0
        time.sleep(args.interval_s)
