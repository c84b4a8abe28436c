"""`jetserve up` provisions every model before "up", prints and records each model's state,
and `jetserve wait` tells scripts when the stack serves (or which model never will); the CLIs
find the running stack from stack.json."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from schemas import names

from ..conftest import REPO, child_env

pytestmark = pytest.mark.integration

MODELS = """
[[models]]
name = "echo"
engine = "sdk"
class = "echo"
capacity = 8

[[models]]
name = "broken"
engine = "llm"
path = "/nonexistent/model-folder"
capacity = 4
"""


async def _has_stream(url: str, model: str) -> bool:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().stream_info(names.stream_name(model))
        return True
    finally:
        await nc.close()


def _run(
    args: list[str], env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetserve", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout_s,
    )


def test_wait_names_the_model_that_cannot_load_and_passes_once_all_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    env = child_env("")
    env.pop("JETSERVE_NATS_URL")
    env.pop("JETSERVE_DATABASE_URL", None)
    env["JETSERVE_DATA_DIR"] = str(data)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "jetserve", "up", "--models-file", str(models)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        end = time.monotonic() + 60
        while not (data / "stack.json").exists():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < end, "stack.json not written"
            time.sleep(0.1)
        info = json.loads((data / "stack.json").read_text())
        # Both models' queues exist when stack.json is written, the broken one's too.
        assert asyncio.run(_has_stream(info["nats_url"], "broken"))
        keys = _run(["keys", "list"], env, 60)  # finds the database from stack.json
        assert keys.returncode == 0, keys.stderr
        failed = _run(["wait", "--timeout-s", "90", "--max-failures", "2"], env, 120)
        assert failed.returncode == 1
        assert "broken not ready: its worker failed 2 times" in failed.stderr
        assert "echo" not in failed.stderr  # echo serves
        states = json.loads((data / "stack.json").read_text())["model_states"]
        assert states["echo"]["state"] == "ready"
        assert states["broken"]["state"] in {"restarting", "loading"}
        printed = log.read_text()
        assert "jetserve: echo ready in" in printed
        assert "jetserve: broken failed (exit" in printed
        assert info["models"] == ["echo", "broken"]
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
    # Only the model that serves: exit 0.
    models.write_text(MODELS.split('[[models]]\nname = "broken"')[0])
    with log.open("ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "jetserve", "up", "--models-file", str(models)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        end = time.monotonic() + 60
        while True:  # the previous run's stack.json names an exited pid until rewritten
            ok = _run(["wait", "--timeout-s", "60"], env, 90)
            if ok.returncode == 0 or time.monotonic() > end:
                break
            time.sleep(0.5)
        assert ok.returncode == 0, ok.stderr
        assert "1 models ready (echo)" in ok.stdout
        # `jetserve status` finds NATS and PostgreSQL from stack.json by itself.
        end = time.monotonic() + 30
        while True:
            shown = _run(["status", "--json"], env, 60)
            assert shown.returncode == 0, shown.stderr
            status = json.loads(shown.stdout)
            if status["scheduler"] == "active" or time.monotonic() > end:
                break
            time.sleep(0.5)
        assert status["scheduler"] == "active"
        assert status["batches"] == []
        assert status["models"]["echo"]["workers"] == 1
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
