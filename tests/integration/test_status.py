"""`jetserve status` against a real nats-server with a backlog: its numbers are the server's
(the monitoring endpoint's /jsz), and `--watch` redraws in place in a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import Client, make_request
from schemas import names

from ..conftest import REPO, child_env, wait_for_workers

pytestmark = pytest.mark.integration


def _jsz(server: NatsServer, model: str) -> dict[str, tuple[int, int]]:
    """consumer -> (num_pending, num_ack_pending), from the monitoring endpoint."""
    url = f"{server.monitor_url}/jsz?consumers=true&accounts=true"
    with urllib.request.urlopen(url, timeout=5) as r:
        jsz = json.load(r)
    found = {}
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == names.stream_name(model):
                for c in stream.get("consumer_detail", []):
                    found[c["name"]] = (c["num_pending"], c["num_ack_pending"])
    return found


def _env(server: NatsServer, tmp: Path) -> dict[str, str]:
    env = child_env(server.url, JETSERVE_DATA_DIR=str(tmp / "no-stack"))
    env.pop("JETSERVE_DATABASE_URL", None)
    return env


async def test_status_json_matches_the_monitoring_endpoint(
    nc: NATS, nats_server: NatsServer, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    # Capacity 5: one slot of credit stays on the priority consumer, 4 hold online requests.
    start_worker(model_name, "tests.models:SlowModel", options={"capacity": 5})
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 20.0}) for _ in range(10)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    end = time.monotonic() + 15
    while _jsz(nats_server, model_name).get("online") != (6, 4):
        assert time.monotonic() < end, _jsz(nats_server, model_name)
        await asyncio.sleep(0.1)
    done = await asyncio.to_thread(_status_json, _env(nats_server, tmp_path))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)["models"][model_name]
    server = _jsz(nats_server, model_name)
    assert status["queued"] == {name: pending for name, (pending, _) in server.items()}
    assert status["in_flight"] == sum(acked for _, acked in server.values()) == 4
    assert (status["workers"], status["capacity"], status["load"]) == (1, 5, 4)
    assert status["oldest_request_age_s"] is not None
    assert status["dead_letters"] == 0
    for task in pending:
        task.cancel()
    await client.close()


def _status_json(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetserve", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def _watch_in_tmux(session: str, env: dict[str, str], model: str) -> str:
    """The screen of `jetserve status --watch --model MODEL` in a 120x30 tmux pane after a few
    redraws (one model: the suite's shared server holds more streams than the pane has rows)."""
    command = f"{sys.executable} -m jetserve status --watch --interval-s 0.3 --model {model}"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command],
        env=env,
        cwd=REPO,
        check=True,
    )
    try:
        time.sleep(4)
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
async def test_status_watch_redraws_in_place_in_a_terminal(
    nc: NATS, nats_server: NatsServer, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    start_worker(model_name, "tests.models:SlowModel")
    await wait_for_workers(nc, model_name, 1)
    env = _env(nats_server, tmp_path)
    screen = await asyncio.to_thread(_watch_in_tmux, f"status-{model_name}", env, model_name)
    assert screen.count("jetserve status") == 1, screen  # redrawn, not scrolled
    row = next(line for line in screen.splitlines() if line.startswith(model_name))
    assert row.split()[1] == "1"  # one worker
