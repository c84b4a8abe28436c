"""Fixtures for the HTTP bridge: a real `jetserve bridge` process on a free port (auth on,
keys in the session's PostgreSQL) in front of real worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
import pytest

from jetserve.servers import NatsServer, PostgresServer, free_port

from ..conftest import REPO, child_env, wait_for_workers
from .batches.conftest import SESSION_WORKERS, BatchStack, launch_stack


@pytest.fixture
def bridge_on(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a bridge process (auth off, no database) on a NATS URL: `bridge_on(url, **env)`
    returns its URL once it answers /healthz."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(nats_url: str, **extra: str) -> str:
        port = free_port()
        env = child_env(
            nats_url,
            **{
                "JETSERVE_AUTH": "off",
                "JETSERVE_NO_WORKER_TIMEOUT_S": "2",
                "JETSERVE_HTTP_TIMEOUT_S": "20",
                **extra,
            },
        )
        with (tmp_path / "bridge.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jetserve", "bridge", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "bridge.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return url
            except OSError:
                pass
            assert time.monotonic() < end, "the bridge did not start"
            time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ECHO = "bridge-echo"
#: The tiny random Llama with a small context (`llm_worker`), for prompts too long for it.
LLM = f"small-llm-{uuid.uuid4().hex[:6]}"
LLM_CONTEXT = 64
LONG_PROMPT = "many words " * 200
SLOW = "bridge-slow"
MINILM = "bridge-minilm"


@dataclass
class BridgeStack:
    url: str
    key: str
    key_id: str
    tenant: str
    dsn: str
    nats_url: str
    #: One line per completed request of the SLOW model: "<request id> <pid>".
    slow_record: Path
    slow_log: Path
    logs: Path

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def slow_runs(self) -> list[str]:
        if not self.slow_record.exists():
            return []
        return [line.split()[0] for line in self.slow_record.read_text().splitlines() if line]


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                body = r.read().decode()
                if r.status == 200 and all(f'"{m}":true' in body for m in (ECHO, SLOW, MINILM)):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"bridge at {url} not ready with all workers in {timeout_s}s")


def _worker(
    model: str, cls: str, nats_url: str, log: Path, *options: str, **env: str
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jetserve",
                "worker",
                "--model",
                model,
                "--class",
                cls,
                *[f"--option={o}" for o in options],
            ],
            env=child_env(nats_url, JETSERVE_ACK_WAIT_S="5", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


@pytest.fixture(scope="session")
def batch_stack(
    nats_server: NatsServer,
    postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
) -> Iterator[BatchStack]:
    """A bridge, a scheduler and the batch tests' workers (`tests/integration/batches/`), with
    their own database in the session's PostgreSQL."""
    logs = tmp_path_factory.mktemp("batches")
    with launch_stack(
        nats_server.url, postgres.dsn, logs, SESSION_WORKERS, llm_model_dir=tiny_model_dir
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def bridge_stack(
    nats_server: NatsServer, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BridgeStack]:
    from scheduler.store.keys import create_key
    from scheduler.store.migrate import migrate_dsn
    from scheduler.store.pool import create_pool

    logs = tmp_path_factory.mktemp("bridge")
    record = logs / "slow-runs.txt"

    async def make_key() -> tuple[str, str]:
        await migrate_dsn(postgres.dsn)
        pool = await create_pool(postgres.dsn)
        try:
            new = await create_key(pool, "acme", "tests")
        finally:
            await pool.close()
        return new.secret, new.info.id

    secret, key_id = asyncio.run(make_key())
    procs = [
        # With the database: it applies tenants' limits to their own subjects' requests.
        _worker(
            ECHO, "echo", nats_server.url, logs / "echo.log", JETSERVE_DATABASE_URL=postgres.dsn
        ),
        _worker(
            SLOW,
            "tests.models:SlowChatModel",
            nats_server.url,
            logs / "slow.log",
            f"record={record}",
            "capacity=1",
        ),
        _worker(MINILM, "minilm", nats_server.url, logs / "minilm.log", "threads=1"),
    ]
    port = free_port()
    env = child_env(
        nats_server.url,
        JETSERVE_DATABASE_URL=postgres.dsn,
        JETSERVE_AUTH="required",
        JETSERVE_KEY_CACHE_TTL_S="0",
        JETSERVE_NO_WORKER_TIMEOUT_S="1",
        JETSERVE_HTTP_MAX_BODY_BYTES="65536",
        JETSERVE_HTTP_TIMEOUT_S="30",
    )
    with (logs / "bridge.log").open("wb") as out:
        bridge = subprocess.Popen(
            [sys.executable, "-m", "jetserve", "bridge", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    procs.append(bridge)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, procs, 90)
        yield BridgeStack(
            url=url,
            key=secret,
            key_id=key_id,
            tenant="acme",
            dsn=postgres.dsn,
            nats_url=nats_server.url,
            slow_record=record,
            slow_log=logs / "slow.log",
            logs=logs,
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def worker_process(
    nats_url: str, model: str, args: list[str], log: Path, ready_s: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """`jetserve worker --model MODEL ARGS` as a process, once it serves; stopped (SIGTERM,
    then waited for) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetserve", "worker", "--model", model, *args],
            env=child_env(nats_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    async def ready() -> None:
        nc = await nats.connect(nats_url)
        try:
            await wait_for_workers(nc, model, 1, timeout_s=ready_s)
        finally:
            await nc.close()

    try:
        asyncio.run(ready())
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="session")
def llm_worker(
    nats_server: NatsServer, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A worker process serving the tiny random Llama with a 64-token context, on the session
    nats-server (so `bridge_stack` and `batch_stack` reach it)."""
    folder = tmp_path_factory.mktemp("small-context-llm")
    models = folder / "models.toml"
    models.write_text(
        f'[[models]]\nname = "{LLM}"\nengine = "llm"\npath = "{tiny_model_dir}"\n'
        f'dtype = "float32"\ncapacity = 4\n\n[models.options]\nkv_cache_mib = 4\n'
        f"max_model_len = {LLM_CONTEXT}\n"
    )
    with worker_process(
        nats_server.url, LLM, ["--models-file", str(models)], folder / "worker.log", 90
    ) as proc:
        yield LLM
        alive = proc.poll() is None
    assert alive, "the LLM worker died during the session"


@pytest.fixture
async def store_pool(postgres: PostgresServer) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh, migrated database of its own in the session's PostgreSQL."""
    from scheduler.store.migrate import migrate_dsn

    database = f"store_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await admin.execute(f"CREATE DATABASE {database}")
    finally:
        await admin.close()
    dsn = postgres.dsn.rsplit("/", 1)[0] + f"/{database}"
    await migrate_dsn(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
    yield pool
    await pool.close()
