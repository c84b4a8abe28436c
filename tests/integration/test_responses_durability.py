"""Background responses survive a SIGKILL of the bridge and of the worker: every one ends
`completed`, once, and is polled from a second bridge process.

On a NATS server of its own: with the session's server, the session stack's scheduler (another
database) shared the results consumer and acked away about half of this test's results (the
reason it timed out in full runs); schedulers now claim that consumer for their installation
(test_installations.py)."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from jetserve.servers import NatsServer, PostgresServer, free_port

from .batches.conftest import _launch, launch_stack

pytestmark = pytest.mark.integration

MODEL = "r-durable"


def _start_bridge(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = _launch(["bridge", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        assert time.monotonic() < end, "the second bridge did not start"
        time.sleep(0.1)


def test_background_responses_survive_killed_bridge_and_worker(
    own_nats: NatsServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    record = tmp_path / "runs.txt"
    workers = [(MODEL, "tests.models:SlowChatModel", ["capacity=4", f"record={record}"])]
    with launch_stack(own_nats.url, postgres.dsn, tmp_path, workers) as stack:
        client: Any = stack.sdk()
        ids = [
            client.responses.create(model=MODEL, input="sleep 1", background=True).id
            for _ in range(20)
        ]
        time.sleep(1.5)  # some finished, some running, the rest queued
        before = stack.query("SELECT count(*) AS n FROM async_requests WHERE status = 'completed'")
        assert before[0]["n"] < len(ids)
        stack.workers[0].send_signal(signal.SIGKILL)
        stack.workers[0].wait(10)
        assert stack.bridge is not None
        stack.bridge.send_signal(signal.SIGKILL)
        stack.bridge.wait(10)
        new_worker = stack.start_worker(
            MODEL, "tests.models:SlowChatModel", "capacity=4", f"record={record}"
        )
        second, url = _start_bridge(stack.bridge_env, tmp_path / "bridge2.log")
        try:
            other = openai.OpenAI(base_url=f"{url}/v1", api_key=stack.keys["alpha"], max_retries=0)
            end = time.monotonic() + 120
            done: dict[str, Any] = {}
            while len(done) < len(ids):
                assert time.monotonic() < end, f"{len(done)} of {len(ids)} finished"
                for rid in ids:
                    if rid not in done:
                        got = other.responses.retrieve(rid)
                        if got.status not in ("queued", "in_progress"):
                            done[rid] = got
                time.sleep(0.2)
            assert {r.status for r in done.values()} == {"completed"}
            assert {r.output_text for r in done.values()} == {"slept 1"}
            # Completed once: one stored outcome each, whatever the redeliveries ran.
            rows = stack.query("SELECT id, status FROM responses WHERE id = ANY($1::text[])", ids)
            assert sorted(r["id"] for r in rows) == sorted(ids)
            assert {r["status"] for r in rows} == {"completed"}
            # Each one's events replay from the second bridge, numbered without a gap, the
            # text of the attempt that finished sent once.
            for rid in ids[:3]:
                events = list(other.responses.retrieve(rid, stream=True))
                numbers = [e.sequence_number for e in events]
                assert numbers == list(range(len(numbers)))
                deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
                assert "".join(deltas) == "slept 1"
                assert events[-1].type == "response.completed"
            other.close()
            pids = {line.split()[1] for line in record.read_text().splitlines() if line}
            assert str(new_worker.pid) in pids  # the new worker ran what was left
        finally:
            second.terminate()
            second.wait(20)
