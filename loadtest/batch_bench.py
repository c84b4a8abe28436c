"""Benchmark: batches end to end against the echo model, and the scheduler's memory.

    python -m loadtest.batch_bench [--lines 50000] [--small 5000] [--json out.json]

Starts a nats-server, a PostgreSQL, one echo worker process, one bridge process (auth off)
and, for each batch, a fresh `jetserve scheduler` process. For a batch of `--small` lines and
then one of `--lines` lines: upload the JSONL file (`POST /v1/files`), create the batch, poll
`GET /v1/batches/{id}` every 50 ms until it is completed, download the output and check every
`custom_id` came back once. Prints, from this one run:

- items/s end to end for each batch: lines / (completed - created), i.e. validation, dispatch,
  the worker, result collection and writing the output file (the upload is timed apart);
- the scheduler process's peak RSS (VmHWM) for each batch, and the growth from the small to
  the large batch.

Targets: >= 2,000 items/s for the large batch; RSS growth <= 50 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from jetserve.servers import PostgresServer, free_port
from loadtest.common import nats_server, spawn

MODEL = "bench-echo"
TARGET_ITEMS_S = 2000.0
TARGET_RSS_GROWTH_MB = 50.0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _write_input(path: Path, lines: int) -> None:
    with path.open("w") as f:
        for i in range(lines):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Request number {i}: say it back."}],
                "max_tokens": 16,
            }
            item = {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**item, "body": body}) + "\n")


def _wait_ready(url: str) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if f'"{MODEL}":true' in httpx.get(f"{url}/readyz", timeout=2).text:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("bridge or worker did not come up")


def _wait_active(port: int, scheduler: Any) -> None:
    """Until the scheduler holds its lock (its start is not part of the measurement)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if scheduler.poll() is not None:
            raise RuntimeError(f"the scheduler exited with {scheduler.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).text.strip() == "active":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the scheduler did not become active")


def _phases(dsn: str, batch_id: str) -> dict[str, float]:
    """Seconds spent validating, running (in progress) and finalizing, from the batch's own
    timestamps (microsecond precision in Postgres)."""
    import asyncio

    import asyncpg

    async def fetch() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchrow(
                "SELECT extract(epoch FROM in_progress_at - created_at) AS validate_s, "
                "extract(epoch FROM finalizing_at - in_progress_at) AS run_s, "
                "extract(epoch FROM completed_at - finalizing_at) AS finalize_s "
                "FROM batches WHERE id = $1",
                batch_id,
            )
        finally:
            await conn.close()

    row = asyncio.run(fetch())
    return {k: float(row[k]) for k in ("validate_s", "run_s", "finalize_s")}


def check_output(client: httpx.Client, batch: dict[str, Any], lines: int) -> None:
    """The batch completed and every custom_id came back once."""
    if batch["status"] != "completed":
        raise RuntimeError(f"batch ended {batch['status']}: {batch.get('errors')}")
    seen: set[str] = set()
    with client.stream("GET", f"/files/{batch['output_file_id']}/content") as response:
        for line in response.iter_lines():
            if line:
                seen.add(json.loads(line)["custom_id"])
    if len(seen) != lines or batch["request_counts"]["completed"] != lines:
        raise RuntimeError(f"{len(seen)} distinct results for {lines} lines")


def run_batch(
    client: httpx.Client, path: Path, lines: int, scheduler: Any, dsn: str
) -> dict[str, float]:
    started = time.perf_counter()
    with path.open("rb") as f:
        uploaded = client.post(
            "/files", data={"purpose": "batch"}, files={"file": (path.name, f)}
        ).json()
    upload_s = time.perf_counter() - started
    created_at = time.perf_counter()
    batch = client.post(
        "/batches",
        json={
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    ).json()
    while True:
        batch = client.get(f"/batches/{batch['id']}").json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        if scheduler.poll() is not None:
            raise RuntimeError(f"the scheduler exited with {scheduler.returncode}")
        time.sleep(0.05)
    elapsed_s = time.perf_counter() - created_at
    check_output(client, batch, lines)
    return {
        "lines": lines,
        "upload_s": upload_s,
        "elapsed_s": elapsed_s,
        "items_per_s": lines / elapsed_s,
        "scheduler_peak_rss_mb": _peak_rss_mb(scheduler.pid),
        **_phases(dsn, batch["id"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jetserve-batch-bench-", dir="/var/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    results = []
    try:
        with nats_server() as nats_url:
            postgres = PostgresServer(tmp / "pg", durable=False).start()
            try:
                env = {
                    "JETSERVE_NATS_URL": nats_url,
                    "JETSERVE_DATABASE_URL": postgres.dsn,
                    "JETSERVE_AUTH": "off",
                    "JETSERVE_LOG_LEVEL": "WARNING",
                }
                procs.append(
                    spawn(["-m", "jetserve", "worker", "--model", MODEL, "--class", "echo"], env)
                )
                port = free_port()
                procs.append(spawn(["-m", "jetserve", "bridge", "--port", str(port)], env))
                url = f"http://127.0.0.1:{port}"
                _wait_ready(url)
                with httpx.Client(base_url=url + "/v1", timeout=300) as client:
                    for lines in (args.small, args.lines):
                        path = tmp / f"in-{lines}.jsonl"
                        _write_input(path, lines)
                        metrics_port = free_port()
                        scheduler = spawn(
                            ["-m", "jetserve", "scheduler", "--metrics-port", str(metrics_port)],
                            env,
                        )
                        try:
                            _wait_active(metrics_port, scheduler)
                            results.append(run_batch(client, path, lines, scheduler, postgres.dsn))
                        finally:
                            scheduler.terminate()
                            scheduler.wait(30)
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(30)
                postgres.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    small, large = results
    growth = large["scheduler_peak_rss_mb"] - small["scheduler_peak_rss_mb"]
    print(f"batch benchmark (echo model, one worker process), {os.cpu_count()} CPUs")
    for r in results:
        print(
            f"  {int(r['lines']):>6,} lines: upload {r['upload_s']:.2f} s, created -> completed "
            f"{r['elapsed_s']:.2f} s = {r['items_per_s']:,.0f} items/s (validate "
            f"{r['validate_s']:.2f} s, run {r['run_s']:.2f} s, finalize {r['finalize_s']:.2f} s); "
            f"scheduler peak RSS {r['scheduler_peak_rss_mb']:.1f} MB"
        )
    ok_rate = large["items_per_s"] >= TARGET_ITEMS_S
    ok_rss = growth <= TARGET_RSS_GROWTH_MB
    print(
        f"  items/s ({int(large['lines']):,} lines): {large['items_per_s']:,.0f} "
        f"(target >= {TARGET_ITEMS_S:,.0f}: {'met' if ok_rate else 'NOT met'})"
    )
    print(
        f"  scheduler RSS growth {int(small['lines']):,} -> {int(large['lines']):,} lines: "
        f"{growth:+.1f} MB (target <= {TARGET_RSS_GROWTH_MB:.0f} MB: "
        f"{'met' if ok_rss else 'NOT met'})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "rss_growth_mb": growth}))
    sys.stdout.flush()
    return 0 if ok_rate and ok_rss else 1


if __name__ == "__main__":
    raise SystemExit(main())
