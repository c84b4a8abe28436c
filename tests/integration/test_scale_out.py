"""Local scale-out: `jetserve up --workers N` runs N workers sharing the model's consumers,
and throughput rises with N. The model's capacity is small and its service time fixed (it
sleeps), so the limit is each worker's capacity, not the machine's CPU."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer, PostgresServer
from producer.client import Client, make_request

from ..conftest import REPO, child_env, wait_for_workers

pytestmark = pytest.mark.integration

CAPACITY = 2  # one slot kept for priority requests: one online request at a time a worker
SERVICE_S = 0.25
REQUESTS = 24  # 1 worker: 24 rounds of 0.25 s = 6 s; 2: 3 s; 3: 2 s


def _launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jetserve", *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _throughput(
    nc: NATS, tmp_path: Path, nats_url: str, database_url: str, model: str, workers: int
) -> float:
    models = tmp_path / f"{model}.toml"
    models.write_text(
        f'[[models]]\nname = "{model}"\nclass = "tests.models:SlowModel"\n'
        f"capacity = {CAPACITY}\noptions = {{ capacity = {CAPACITY} }}\n"
    )
    env = child_env(nats_url, JETSERVE_DATABASE_URL=database_url)
    log = tmp_path / f"up-{workers}.log"
    args = ["up", "--workers", str(workers), "--models-file", str(models)]
    proc = _launch([*args, "--data-dir", str(tmp_path / f"data-{workers}")], env, log)
    try:
        await wait_for_workers(nc, model, workers, timeout_s=60)
        client = Client(nc)
        requests = [make_request(model, "predict", {"sleep_s": SERVICE_S}) for _ in range(REQUESTS)]
        start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(client.request_obj(r, 120) for r in requests)), 120)
        elapsed = time.monotonic() - start
        await client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log.read_text()
    return REQUESTS / elapsed


async def test_throughput_rises_with_workers(
    nats_server: NatsServer, postgres: PostgresServer, nc: NATS, model_name: str, tmp_path: Path
) -> None:
    rates = {
        n: await _throughput(nc, tmp_path, nats_server.url, postgres.dsn, f"{model_name}-{n}", n)
        for n in (1, 2, 3)
    }
    ideal = (CAPACITY - 1) / SERVICE_S  # online requests/s of one worker
    assert rates[1] <= ideal * 1.1, rates  # one worker is bound by its capacity
    assert rates[2] > 1.5 * rates[1], rates  # ideal 2x
    assert rates[3] > 2.0 * rates[1], rates  # ideal 3x
    assert rates[3] > 1.15 * rates[2], rates  # ideal 1.5x
