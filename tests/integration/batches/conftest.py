"""Fixtures for batch work: a real bridge process and a real scheduler process (own database in
the session's PostgreSQL), real worker processes, and a webhook receiver on localhost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest

from jetserve.servers import free_port

from ...conftest import REPO, child_env

ECHO = "b-echo"
SLOW = "b-slow"
PRIO = "b-prio"
#: The tiny random LLM on the engine (structured output in batch lines).
LLM = "b-llm"
#: The webhook retry period of the test scheduler (the default is 72 h).
WEBHOOK_RETRY_PERIOD_S = 4.0
MAX_FILE_LINES = 5000
MAX_FILE_BYTES = 4 * 1024 * 1024


def _launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jetserve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


@dataclass
class BatchStack:
    url: str
    dsn: str
    nats_url: str
    keys: dict[str, str]
    logs: Path
    scheduler_env: dict[str, str]
    schedulers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    metrics_port: int = 0
    clients: list[openai.OpenAI] = field(default_factory=list)
    #: Worker processes (those started with the stack, then any `start_worker` added).
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)
    #: The environment the stack's bridge was started with (for a second bridge).
    bridge_env: dict[str, str] = field(default_factory=dict)
    bridge: subprocess.Popen[bytes] | None = None

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def sdk(self, tenant: str = "alpha") -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=self.v1, api_key=self.keys[tenant], max_retries=0, timeout=60
        )
        self.clients.append(client)
        return client

    def start_scheduler(self, **env: str) -> subprocess.Popen[bytes]:
        proc = _launch(["scheduler"], {**self.scheduler_env, **env}, self.logs / "scheduler.log")
        self.schedulers.append(proc)
        return proc

    def start_worker(self, model: str, cls: str, *options: str) -> subprocess.Popen[bytes]:
        proc = _launch(
            ["worker", "--model", model, "--class", cls, *[f"--option={o}" for o in options]],
            self.worker_env,
            self.logs / f"worker-{model}.log",
        )
        self.workers.append(proc)
        return proc

    def scheduler_log(self) -> str:
        return (self.logs / "scheduler.log").read_text(errors="replace")

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return [dict(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())


def bridge_gauge(url: str, name: str, model: str) -> float:
    """A bridge metric's value for `model` (`/metrics`)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_batch(
    client: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 60
) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < end, f"batch {batch_id} still {batch.status}"
        time.sleep(0.1)


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def chat_line(custom_id: str, model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **extra},
    }


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line]


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], models: list[str]) -> None:
    end = time.monotonic() + 90
    while time.monotonic() < end:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                body = r.read().decode()
                if all(f'"{m}":true' in body for m in models):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"bridge at {url} not ready with all workers")


#: The session stack's workers: (model, class, options).
SESSION_WORKERS: list[tuple[str, str, list[str]]] = [
    (ECHO, "echo", []),
    (SLOW, "tests.models:SlowChatModel", ["capacity=4"]),
    (PRIO, "tests.models:SlowChatModel", ["capacity=8"]),
]


@contextmanager
def launch_stack(
    nats_url: str,
    admin_dsn: str,
    logs: Path,
    workers: list[tuple[str, str, list[str]]],
    *,
    scheduler_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    llm_model_dir: Path | None = None,
) -> Iterator[BatchStack]:
    """A bridge, a scheduler and worker processes on the given servers, with a fresh database
    (keys for tenants `alpha` and `beta`) in the given PostgreSQL."""
    from scheduler.store.keys import create_key
    from scheduler.store.migrate import migrate_dsn

    database = f"batches_{uuid.uuid4().hex[:8]}"
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"

    async def prepare() -> dict[str, str]:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f"CREATE DATABASE {database}")
        finally:
            await admin.close()
        await migrate_dsn(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            return {t: (await create_key(conn, t)).secret for t in ("alpha", "beta")}
        finally:
            await conn.close()

    keys = asyncio.run(prepare())
    common = {
        "JETSERVE_DATABASE_URL": dsn,
        "JETSERVE_WEBHOOKS_ALLOW_PRIVATE": "true",
        "JETSERVE_ACK_WAIT_S": "5",
    }
    workers_env = child_env(nats_url, **{**common, **(worker_env or {})})
    procs = [
        _launch(
            ["worker", "--model", m, "--class", cls, *[f"--option={o}" for o in opts]],
            workers_env,
            logs / f"worker-{m}.log",
        )
        for m, cls, opts in workers
    ]
    if llm_model_dir is not None:
        llm_models = logs / "llm-models.toml"
        llm_models.write_text(
            f'[[models]]\nname = "{LLM}"\nengine = "llm"\npath = "{llm_model_dir}"\n'
            'dtype = "float32"\ncapacity = 16\n[models.options]\nkv_cache_mib = 32\n'
            "max_model_len = 1024\n"
        )
        procs.append(
            _launch(
                ["worker", "--model", LLM, "--models-file", str(llm_models)],
                workers_env,
                logs / f"worker-{LLM}.log",
            )
        )
    port = free_port()
    bridge_env = child_env(
        nats_url,
        **common,
        JETSERVE_AUTH="required",
        JETSERVE_KEY_CACHE_TTL_S="0",
        JETSERVE_FILES_MAX_LINES=str(MAX_FILE_LINES),
        JETSERVE_FILES_MAX_BYTES=str(MAX_FILE_BYTES),
    )
    procs.append(_launch(["bridge", "--port", str(port)], bridge_env, logs / "bridge.log"))
    metrics_port = free_port()
    stack = BatchStack(
        url=f"http://127.0.0.1:{port}",
        dsn=dsn,
        nats_url=nats_url,
        keys=keys,
        logs=logs,
        scheduler_env=child_env(
            nats_url,
            **{
                **common,
                "JETSERVE_SCHEDULER_POLL_S": "0.1",
                "JETSERVE_BATCH_IN_FLIGHT": "64",
                "JETSERVE_BATCH_CANCEL_GRACE_S": "3",
                "JETSERVE_WEBHOOK_RETRY_PERIOD_S": str(WEBHOOK_RETRY_PERIOD_S),
                "JETSERVE_WEBHOOK_BACKOFF_BASE_S": "0.2",
                "JETSERVE_WEBHOOK_BACKOFF_MAX_S": "1",
                "JETSERVE_SCHEDULER_LOCK_RETRY_S": "0.3",
                "JETSERVE_SCHEDULER_METRICS_PORT": str(metrics_port),
                **(scheduler_env or {}),
            },
        ),
        metrics_port=metrics_port,
        workers=procs[:-1],
        worker_env=workers_env,
        bridge_env=bridge_env,
        bridge=procs[-1],
    )
    stack.start_scheduler()
    try:
        models = [m for m, _, _ in workers] + ([LLM] if llm_model_dir else [])
        _wait_ready(stack.url, procs + stack.schedulers, models)
        yield stack
    finally:
        for client in stack.clients:
            client.close()
        every = [*procs, *stack.workers[len(procs) - 1 :], *stack.schedulers]
        for proc in every:
            if proc.poll() is None:
                proc.terminate()
        for proc in every:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST (headers, body); answers the first
    `fail_first` POSTs of each webhook-id with 500, the rest with `status`."""

    def __init__(
        self, *, fail_first: int = 0, status: int = 200, port: int = 0, path: str = ""
    ) -> None:
        self.fail_first = fail_first
        self.status = status
        self.posts: list[tuple[dict[str, str], bytes, int]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    seen = sum(
                        1
                        for h, _, _ in receiver.posts
                        if h["webhook-id"] == headers.get("webhook-id")
                    )
                    code = 500 if seen < receiver.fail_first else receiver.status
                    receiver.posts.append((headers, body, code))
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        path = path or f"/hook/{uuid.uuid4().hex[:6]}"
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()
