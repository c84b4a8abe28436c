"""`jetserve up` end to end: servers, workers, the documented contract, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from ..conftest import REPO, child_env
from .test_servers_lockdown import connect_without_token

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by its parent counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jetserve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def _wait_stack_json(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"jetserve up exited with {proc.returncode}")
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.1)
    raise AssertionError("stack.json not written")


def _openai_sdk_against_the_stack(info: dict[str, Any], env: dict[str, str], tmp: Path) -> None:
    """What `jetserve up` prints: create a key with the CLI, then the unchanged openai SDK."""
    import openai

    assert info["http_url"].startswith("http://127.0.0.1:")
    assert info["auth"] == "required"
    created = subprocess.run(  # the database URL (with its password) from stack.json
        [sys.executable, "-m", "jetserve", "keys", "create", "--tenant", "me"],
        env={**env, "JETSERVE_DATA_DIR": info["data_dir"]},
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("js-")
    client = openai.OpenAI(base_url=info["http_url"] + "/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 90
    while True:  # the bridge and the workers may still be starting
        try:
            if {"echo", "all-minilm-l6-v2"} <= {m.id for m in client.models.list()}:
                break
        except openai.APIConnectionError:
            pass
        assert time.monotonic() < deadline, "the bridge or the models did not come up"
        time.sleep(0.5)
    out = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "Hi"}])
    assert out.choices[0].message.content == "Hi"
    chunks = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "Hi there"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    text = client.completions.create(model="echo", prompt="abc")
    assert text.choices[0].text == "abc"
    emb = client.embeddings.create(model="all-minilm-l6-v2", input="hello", timeout=60)
    assert len(emb.data[0].embedding) == 384
    _batch_against_the_stack(client, info, env, key, tmp)
    client.close()


async def _smollm2_knows_the_capital_of_france(js: Any, sub: Any) -> None:
    """The default LLM (real SmolLM2-135M-Instruct on the engine), over the NATS contract."""
    body = {
        "type": "request.v1",
        "id": "capital-1",
        "model": "smollm2",
        "kind": "chat",
        "payload": {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        "parameters": {"temperature": 0, "max_tokens": 24},
    }
    deadline = time.monotonic() + 240  # the first start converts the GGUF file once
    while True:
        try:
            await js.publish(
                "jetserve.req.smollm2.online",
                json.dumps(body).encode(),
                headers={"Nats-Msg-Id": "capital-1", "Jetserve-Reply-To": "readme.replies"},
            )
            break
        except nats.js.errors.NoStreamResponseError:
            assert time.monotonic() < deadline, "the smollm2 worker did not start"
            await asyncio.sleep(0.5)
    reply = json.loads((await sub.next_msg(timeout=120)).data)
    assert reply["type"] == "result.v1", reply
    assert "Paris" in reply["output"]["text"]
    assert reply["usage"]["completion_tokens"] > 0


def _batch_against_the_stack(
    client: Any, info: dict[str, Any], env: dict[str, str], key: str, tmp: Path
) -> None:
    """The openai SDK's batch flow, unchanged, then `jetserve batch submit --wait`."""
    import io

    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "echo", "messages": [{"role": "user", "content": f"batch {i}"}]},
        }
        for i in range(20)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch.errors
    results = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    answers = {
        r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in results
    }
    assert answers == {f"q{i}": f"batch {i}" for i in range(20)}
    # The CLI: lines without a model, given one with --model.
    source = tmp / "cli.jsonl"
    for line in lines:
        del line["body"]["model"]  # type: ignore[attr-defined]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp / "cli-out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jetserve",
            "batch",
            "submit",
            str(source),
            "--model",
            "echo",
            "--wait",
            "-o",
            str(out),
        ],
        env={**env, "JETSERVE_URL": info["http_url"], "JETSERVE_API_KEY": key},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "20/20" in done.stderr.replace(",", "")
    assert len(out.read_text().splitlines()) == 20


async def test_up_serves_echo_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = child_env("")
    env.pop("JETSERVE_NATS_URL")
    env.pop("JETSERVE_DATABASE_URL", None)
    proc = _launch(["up", "--data-dir", str(data)], env, tmp_path / "up.log")
    try:
        info = await asyncio.to_thread(_wait_stack_json, data / "stack.json", proc, 60)
        # Closed to other local users: a NATS token and a database password, carried in
        # the URLs of stack.json (0600) and nowhere else.
        assert info["nats_url"].startswith("nats://")
        assert "@127.0.0.1:" in info["nats_url"]
        assert info["database_url"].startswith("postgresql://jetserve:")
        assert info["nats_monitor_url"].startswith("http://127.0.0.1:")
        for private in (data / "stack.json", data / "postgres.password"):
            assert not os.stat(private).st_mode & 0o077, private
        host, port = info["nats_url"].split("@", 1)[1].rsplit(":", 1)
        refused = await asyncio.to_thread(connect_without_token, host, int(port))
        assert refused == "-ERR 'Authorization Violation'"
        printed = (tmp_path / "up.log").read_text()
        assert info["nats_url"].split("@")[0].split("//")[1] not in printed
        nc = await nats.connect(info["nats_url"])
        js = nc.jetstream()
        sub = await nc.subscribe("readme.replies")
        body = {
            "type": "request.v1",
            "id": "hello-1",
            "model": "echo",
            "kind": "chat",
            "payload": {"messages": [{"role": "user", "content": "Hello!"}]},
        }
        deadline = time.monotonic() + 60
        while True:  # the worker creates the stream when it starts
            try:
                await js.publish(
                    "jetserve.req.echo.online",
                    json.dumps(body).encode(),
                    headers={"Nats-Msg-Id": "hello-1", "Jetserve-Reply-To": "readme.replies"},
                )
                break
            except nats.js.errors.NoStreamResponseError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        reply = json.loads((await sub.next_msg(timeout=30)).data)
        assert reply["type"] == "result.v1"
        assert reply["output"]["text"] == "Hello!"
        await _smollm2_knows_the_capital_of_france(js, sub)
        await nc.close()
        await asyncio.to_thread(_openai_sdk_against_the_stack, info, env, tmp_path)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    pg_data = Path(info["postgres_data_dir"])
    if pg_data.name.startswith("jetserve-postgres-"):  # the root fallback outside tmp_path
        shutil.rmtree(pg_data, ignore_errors=True)
    assert code == 0, (tmp_path / "up.log").read_text()
    for name, pid in info["processes"].items():
        assert not _alive(pid), f"{name} ({pid}) still running after Ctrl-C"
