"""Fixtures: real nats-server and PostgreSQL processes on free ports in temporary dirs, and
worker processes/in-process workers against them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer, PostgresServer
from schemas import names
from schemas.codec import decode_worker_info

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    # Every model stream reserves its max_bytes (256 MiB by default) when it is made, and the
    # suite makes hundreds that stay: the server's default bound (75% of the disk free at its
    # start) ran out partway through a run on a fuller disk. The suite writes little.
    with tempfile.TemporaryDirectory(prefix="jetserve-nats-") as tmp:
        server = NatsServer(Path(tmp) / "store", max_file_store="1T").start()
        yield server
        server.stop()


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    """A server of the test's own, for tests that restart or kill it."""
    with tempfile.TemporaryDirectory(prefix="jetserve-nats-") as tmp:
        server = NatsServer(Path(tmp) / "store").start()
        yield server
        server.stop()


def _postgres() -> Iterator[PostgresServer]:
    tmp = tempfile.mkdtemp(prefix="jetserve-pg-", dir="/var/tmp" if os.geteuid() == 0 else None)
    server = PostgresServer(Path(tmp) / "data", durable=False).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    yield from _postgres()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    yield from _postgres()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama + tokenizer that `jetserve make-tiny-model` writes."""
    from workers.engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Idefics3 + processor that `jetserve make-tiny-model --vision` writes."""
    from workers.engine.tiny_vision import make_tiny_vision_model

    return make_tiny_vision_model(tmp_path_factory.mktemp("models") / "tiny-vlm")


@pytest.fixture
def model_name() -> str:
    """A fresh model name, so each test has its own stream."""
    return f"t-{uuid.uuid4().hex[:10]}"


def child_env(nats_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "JETSERVE_NATS_URL": nats_url,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "JETSERVE_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 30) -> int:
        return self.proc.wait(timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def wait_for_workers(nc: NATS, model: str, count: int, timeout_s: float = 30) -> None:
    """Until `count` workers of `model` answer a ping."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(names.ping_subject(model), b"", reply=inbox)
        seen = set()
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                if msg.data:  # not a "no responders" status
                    seen.add(decode_worker_info(msg.data).worker_id)
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        finally:
            await sub.unsubscribe()
        if len(seen) >= count:
            return
    raise TimeoutError(f"{count} workers of {model} did not come up in {timeout_s}s")


@pytest.fixture
def start_worker(nats_server: NatsServer, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `jetserve worker` processes: start_worker(model, cls, nats_url=..., **env)."""
    started: list[WorkerProcess] = []

    def start(
        model: str,
        model_class: str = "echo",
        *,
        nats_url: str | None = None,
        options: dict[str, object] | None = None,
        **env: str,
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{model}-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jetserve",
                    "worker",
                    "--model",
                    model,
                    "--class",
                    model_class,
                    *[f"--option={k}={json.dumps(v)}" for k, v in (options or {}).items()],
                ],
                env=child_env(nats_url or nats_server.url, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        worker = WorkerProcess(proc, log)
        started.append(worker)
        return worker

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


class InProcessWorker:
    def __init__(self, worker: Any, task: asyncio.Task[int]) -> None:
        self.worker = worker
        self.task = task

    async def stop(self) -> int:
        self.worker.request_stop()
        return await asyncio.wait_for(self.task, 60)


@pytest.fixture
async def inproc_worker(nats_server: NatsServer) -> AsyncIterator[Callable[..., Any]]:
    """Run a Worker in the test's event loop: `await inproc_worker(model, "echo", **config)`."""
    from workers.config import ModelSpec, QueueSettings, WorkerConfig
    from workers.worker import Worker, build_backend

    running: list[InProcessWorker] = []

    async def start(
        model: str,
        model_class: str = "echo",
        *,
        options: dict[str, Any] | None = None,
        capacity: int | None = None,
        nats_url: str | None = None,
        **config: Any,
    ) -> InProcessWorker:
        spec = ModelSpec(
            name=model, model_class=model_class, options=options or {}, capacity=capacity
        )
        queue_fields = {f.name for f in dataclasses.fields(QueueSettings)}
        queue = QueueSettings(**{k: v for k, v in config.items() if k in queue_fields})
        others = {k: v for k, v in config.items() if k not in queue_fields}
        cfg = WorkerConfig(nats_url=nats_url or nats_server.url, queue=queue, **others)
        worker = Worker(spec, cfg, build_backend(spec))
        task = asyncio.create_task(worker.run())
        handle = InProcessWorker(worker, task)
        running.append(handle)
        conn = await nats.connect(cfg.nats_url)
        try:
            await wait_for_workers(conn, model, 1, timeout_s=10)
        finally:
            await conn.close()
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.stop()
