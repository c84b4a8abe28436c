"""Helpers shared by the benchmarks: servers, worker processes, percentiles."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from jetserve.servers import NatsServer

REPO = Path(__file__).resolve().parents[1]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextmanager
def nats_server() -> Iterator[str]:
    """A NATS URL: JETSERVE_NATS_URL if set, else a fresh local nats-server."""
    external = os.environ.get("JETSERVE_NATS_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="jetserve-bench-") as tmp:
        server = NatsServer(Path(tmp) / "store").start()
        try:
            yield server.url
        finally:
            server.stop()


def spawn(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    tree: Path = REPO,
    stderr: int | IO[bytes] = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Run `python args` from the source `tree` (this checkout, or another one's copy)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(tree)
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, *args],
        env=full_env,
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def echo_worker(model: str, env: dict[str, str], capacity: int = 256) -> subprocess.Popen[bytes]:
    """A worker for `model` that echoes (no model compute): what the benchmarks that use it
    measure is the bridge and the queue, not a model."""
    echo = ("--class", "echo", "--option", f"capacity={capacity}")
    return spawn(["-m", "jetserve", "worker", "--model", model, *echo], env=env)


def bridge(port: int, env: dict[str, str], tree: Path = REPO) -> subprocess.Popen[bytes]:
    """The HTTP bridge of source `tree` on `port`."""
    return spawn(["-m", "jetserve", "bridge", "--port", str(port)], env=env, tree=tree)


def wrk_parser(
    doc: str | None, *, rounds: int = 7, duration_s: float = 5.0
) -> argparse.ArgumentParser:
    """The options every wrk benchmark takes (its docstring's first line as description)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=duration_s)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--json", help="also write the figures to this file")
    return parser
