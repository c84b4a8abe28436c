"""`jetserve up`: the whole system on one machine, in the foreground.

Starts a real nats-server (JetStream, file storage) and PostgreSQL under the data directory
(or uses external ones from JETSERVE_NATS_URL / JETSERVE_DATABASE_URL), then the worker
processes of every model in the models file, the HTTP bridge and the batch scheduler.
Restarts a child that dies, with backoff.
SIGINT/SIGTERM stop the children first (workers drain), then the servers. Writes the URLs to
`<data dir>/stack.json` (mode 0600: the URLs carry the credentials).

Nothing is open to other users of the machine: nats-server requires a token made for this
run, and PostgreSQL a password made with its cluster (`<data dir>/postgres.password`, 0600);
both travel in the URLs given to the children and written to stack.json, and `jetserve keys`
reads the database URL from there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from jetserve.servers import NatsServer, PostgresServer, free_port, write_private
from schemas.routes import Route
from schemas.settings import DATABASE_URL, NATS_URL, get_int, get_str
from workers.config import ModelSpec, load_models_file, load_routes

log = logging.getLogger("jetserve.stack")


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    models_file: Path
    nats_url: str | None = None
    database_url: str | None = None
    nats_port: int = 0
    nats_monitor_port: int = 0
    postgres_port: int = 0
    #: The HTTP bridge's port (0: a free one).
    http_port: int = 0
    #: JETSERVE_AUTH for the bridge: "required" (API keys) or "off".
    auth: str = "required"
    #: Replicas per model; None: each model's `local_replicas`.
    workers: int | None = None
    #: Extra environment for every child process.
    child_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, models_file: Path, data_dir: str | None, workers: int | None
    ) -> StackOptions:
        return cls(
            data_dir=Path(data_dir or get_str(env, "JETSERVE_DATA_DIR", ".jetserve")).resolve(),
            models_file=models_file,
            nats_url=env.get(NATS_URL) or None,
            database_url=env.get(DATABASE_URL) or None,
            nats_port=get_int(env, "JETSERVE_NATS_PORT", 0, minimum=0),
            nats_monitor_port=get_int(env, "JETSERVE_NATS_MONITOR_PORT", 0, minimum=0),
            postgres_port=get_int(env, "JETSERVE_POSTGRES_PORT", 0, minimum=0),
            http_port=get_int(env, "JETSERVE_HTTP_PORT", 0, minimum=0),
            auth=get_str(env, "JETSERVE_AUTH", "required").lower(),
            workers=workers,
        )


class Child:
    """A supervised child process, restarted with exponential backoff when it dies."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_dir: Path,
        stop_timeout_s: float = 30.0,
        model: str | None = None,
    ) -> None:
        self.name = name
        #: The model a worker child serves; it touches `ready_file` once serving.
        self.model = model
        self.ready_file = log_dir / f"{name}.ready" if model else None
        self.started_at = 0.0
        self.started_wall = 0.0
        #: Exits since the child last became ready.
        self.failures = 0
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._next_start = 0.0

    def start(self) -> None:
        env = self.env
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
            env = dict(env, JETSERVE_READY_FILE=str(self.ready_file))
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def check(self) -> None:
        """Restart the child if it exited (not before its backoff has passed)."""
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if self._next_start == 0.0:
            if self.ready:
                self.failures = 0
            self.failures += 1
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)
            delay = min(30.0, 0.5 * 2 ** min(self.restarts, 6))
            log.warning(
                "%s exited with %s; restarting in %.1fs (see %s)",
                self.name,
                self.proc.returncode,
                delay,
                self.log_path,
            )
            self._next_start = now + delay
        elif now >= self._next_start:
            self.restarts += 1
            self._next_start = 0.0
            self.start()

    @property
    def ready(self) -> bool:
        return self.ready_file is not None and self.ready_file.exists()

    def state(self) -> dict[str, object]:
        """This worker child's state: loading, ready, or restarting (with the log's last line)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                assert self.ready_file is not None
                ready_in_s = self.ready_file.stat().st_mtime - self.started_wall
                return {"state": "ready", "ready_in_s": round(ready_in_s, 1)}
            except (AssertionError, OSError):
                pass  # not (yet) ready
            return {"state": "loading", "for_s": round(time.monotonic() - self.started_at, 1)}
        code = self.proc.returncode if self.proc is not None else None
        return {
            "state": "restarting",
            "exit_code": code,
            "failures": self.failures,
            "last_log_line": _last_line(self.log_path),
        }

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs: killing", self.name, self.stop_timeout_s)
            self.proc.kill()
            self.proc.wait()


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.nats: NatsServer | None = None
        self.postgres: PostgresServer | None = None
        self.children: list[Child] = []
        self.info: dict[str, object] = {}

    def start_servers(self) -> None:
        o = self.options
        o.data_dir.mkdir(parents=True, exist_ok=True)
        (o.data_dir / "logs").mkdir(exist_ok=True)
        if o.nats_url is None:
            self.nats = NatsServer(
                o.data_dir / "nats",
                port=o.nats_port or None,
                monitor_port=o.nats_monitor_port or None,
                token=secrets.token_urlsafe(24),
            ).start()
        if o.database_url is None:
            self.postgres = PostgresServer(
                o.data_dir / "postgres", port=o.postgres_port or None
            ).start()
        self.info = {
            "nats_url": o.nats_url or (self.nats.url if self.nats else None),
            "nats_monitor_url": self.nats.monitor_url if self.nats else None,
            "database_url": o.database_url or (self.postgres.dsn if self.postgres else None),
            "http_url": None,
            "data_dir": str(o.data_dir),
            "postgres_data_dir": str(self.postgres.data_dir) if self.postgres else None,
            "models": [],
            "pid": os.getpid(),
        }

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.options.child_env)
        env[NATS_URL] = str(self.info["nats_url"])
        if self.info["database_url"]:
            env[DATABASE_URL] = str(self.info["database_url"])
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start_children(self) -> None:
        specs = load_models_file(self.options.models_file)
        env = self.child_env()
        logs = self.options.data_dir / "logs"
        jetserve = [sys.executable, "-m", "jetserve"]
        for spec in specs:
            replicas = (
                self.options.workers if self.options.workers is not None else (spec.local_replicas)
            )
            for i in range(replicas):
                self.children.append(
                    Child(
                        f"worker-{spec.name}-{i}",
                        [
                            *jetserve,
                            "worker",
                            "--model",
                            spec.name,
                            "--models-file",
                            str(self.options.models_file),
                        ],
                        env,
                        logs,
                        model=spec.name,
                    )
                )
        self.info["models"] = [s.name for s in specs]
        # Every model's queue exists before "up": a request for a model still loading waits.
        routes = load_routes(self.options.models_file)
        self.info["routes"] = {r.name: [t.model for t in r.targets] for r in routes}
        asyncio.run(_provision(str(self.info["nats_url"]), specs, routes, env))
        port = self.options.http_port or free_port()
        # Local use: webhooks may target this machine (a receiver on localhost).
        env.setdefault("JETSERVE_WEBHOOKS_ALLOW_PRIVATE", "true")
        self.children.append(Child("scheduler", [*jetserve, "scheduler"], env, logs))
        bridge_env = dict(env, JETSERVE_AUTH=self.options.auth)
        self.children.append(
            Child("bridge", [*jetserve, "bridge", "--port", str(port)], bridge_env, logs)
        )
        self.info["http_url"] = f"http://127.0.0.1:{port}"
        self.info["auth"] = self.options.auth
        for child in self.children:
            child.start()

    def model_states(self) -> dict[str, dict[str, object]]:
        """Per model: ready once any of its workers serves; else loading, else restarting."""
        states: dict[str, dict[str, object]] = {}
        rank = {"ready": 0, "loading": 1, "restarting": 2}
        for child in self.children:
            if child.model is None:
                continue
            state = child.state()
            best = states.get(child.model)
            if best is None or rank[str(state["state"])] < rank[str(best["state"])]:
                states[child.model] = state
        return states

    def processes(self) -> dict[str, int]:
        procs = {c.name: c.proc.pid for c in self.children if c.proc is not None}
        if self.nats is not None and self.nats.proc is not None:
            procs["nats-server"] = self.nats.proc.pid
        if self.postgres is not None and self.postgres.proc is not None:
            procs["postgres"] = self.postgres.proc.pid
        return procs

    def write_info(self) -> Path:
        self.info["processes"] = self.processes()
        path = self.options.data_dir / "stack.json"
        write_private(path, json.dumps(self.info, indent=2) + "\n")
        return path

    def stop(self) -> None:
        for child in self.children:
            child.signal_stop()
        for child in self.children:
            child.wait_stopped()
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()


def run_stack(options: StackOptions) -> int:
    stack = Stack(options)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start_servers()
        stack.start_children()
        shown: dict[str, str] = {}
        stack.info["model_states"] = stack.model_states()
        path = stack.write_info()
        _announce(stack, path)
        while not stopping:
            for child in stack.children:
                child.check()
            states = stack.model_states()
            if _report_changes(states, shown):
                stack.info["model_states"] = states
                stack.write_info()
            time.sleep(0.2)
    finally:
        print("jetserve: stopping ...", file=sys.stderr, flush=True)
        stack.stop()
    print("jetserve: stopped", file=sys.stderr, flush=True)
    return 0


def _masked(url: object) -> str:
    """A URL with its credentials hidden (the full one is in stack.json, mode 0600)."""
    return re.sub(r"//[^@/]*@", "//***@", str(url))


def _announce(stack: Stack, path: Path) -> None:
    i = stack.info
    lines = [
        "jetserve is up",
        f"  NATS          {_masked(i['nats_url'])}   (monitoring {i['nats_monitor_url']})",
        f"  PostgreSQL    {_masked(i['database_url'])}",
    ]
    if i.get("http_url"):
        lines.append(f"  HTTP          {i['http_url']}/v1   (OpenAI-compatible; auth {i['auth']})")
    lines += [
        f"  models        {', '.join(map(str, i['models']))}",  # type: ignore[call-overload]
        f"  stack info    {path}",
        f"  logs          {stack.options.data_dir / 'logs'}",
    ]
    if i.get("http_url") and i.get("auth") != "off":
        lines += [
            "Get an API key (printed once) in another shell (the database URL, with its",
            f"password, is read from {path}):",
            f"  JETSERVE_DATA_DIR={stack.options.data_dir} .venv/bin/jetserve keys create "
            "--tenant me",
            "  (or run with JETSERVE_AUTH=off for local use without keys)",
        ]
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def _report_changes(states: dict[str, dict[str, object]], shown: dict[str, str]) -> bool:
    """Print each model whose state changed since last shown; True if any did."""
    changed = False
    for model, state in states.items():
        name = str(state["state"])
        key = f"{name}:{state.get('failures', '')}"
        if shown.get(model) == key:
            continue
        shown[model] = key
        changed = True
        if name == "ready":
            print(f"jetserve: {model} ready in {state['ready_in_s']} s", flush=True)
        elif name == "loading":
            print(f"jetserve: {model} loading", flush=True)
        else:
            print(
                f"jetserve: {model} failed (exit {state['exit_code']}), restarting: "
                f"{state['last_log_line']}",
                flush=True,
            )
    return changed


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


async def _provision(
    nats_url: str, specs: list[ModelSpec], routes: list[Route], env: Mapping[str, str]
) -> None:
    from natsio.connection import connect
    from natsio.routes import provision_routes
    from workers.config import WorkerConfig
    from workers.provision import provision_model
    from workers.worker import queue_settings

    config = WorkerConfig.from_env(env)
    nc = await connect(nats_url, name="jetserve-up")
    try:
        for spec in specs:
            await provision_model(nc.jetstream(), spec.name, queue_settings(config, spec))
        await provision_routes(nc, routes, config.queue.replicas)
    finally:
        await nc.close()
