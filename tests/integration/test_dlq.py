"""`jetserve dlq`: a request dead-lettered by a failing model is listed, shown, replayed once
the model is fixed, and answered on its original reply subject; purge empties the stream
(real nats-server, real worker processes, the CLI as a user runs it)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import make_request
from schemas import names
from schemas.codec import decode_reply, encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult

from ..conftest import REPO, child_env, wait_for_workers

pytestmark = pytest.mark.integration


def _dlq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jetserve", "dlq", *args, "--nats-url", url],
        env=child_env(url),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


async def _publish(nc: NATS, model: str, payload: Any, reply_to: str) -> str:
    request = make_request(model, "predict", payload)
    await nc.jetstream().publish(
        names.request_subject(model, names.Priority.ONLINE),
        encode(request),
        headers={names.Header.MSG_ID.value: request.id, names.Header.REPLY_TO.value: reply_to},
    )
    return request.id


async def test_dead_letter_listed_shown_replayed_and_answered(
    nc: NATS, nats_server: NatsServer, model_name: str, start_worker: Any
) -> None:
    nats_url = nats_server.url
    env = {"JETSERVE_MAX_ATTEMPTS": "1"}
    broken = start_worker(model_name, "tests.models:FailingModel", **env)
    await wait_for_workers(nc, model_name, 1)
    replies = await nc.subscribe(f"dlqtest.{model_name}")
    request_id = await _publish(nc, model_name, {"fail": True}, f"dlqtest.{model_name}")
    first = decode_reply((await replies.next_msg(timeout=30)).data)
    assert isinstance(first, ErrorResult)
    assert first.code is ErrorCode.DEAD_LETTERED

    listed = json.loads(_dlq(nats_url, "list", "--model", model_name, "--json").stdout)
    assert [(d["request_id"], d["attempts"]) for d in listed] == [(request_id, "1")]
    seq = listed[0]["id"]
    shown = json.loads(_dlq(nats_url, "show", str(seq)).stdout)
    assert shown["request"]["id"] == request_id
    assert shown["headers"]["Jetserve-Error-Code"] == "dead_lettered"
    assert "model failed" in shown["headers"]["Jetserve-Error-Message"]
    assert shown["subject"] == names.request_subject(model_name, names.Priority.ONLINE)

    # The model is fixed (a worker that echoes), then the dead letter is replayed.
    broken.terminate()
    assert await asyncio.to_thread(broken.wait, 30) == 0
    start_worker(model_name, "tests.models:SlowModel")
    replayed = _dlq(nats_url, "replay", str(seq))
    assert f"replayed {seq} as {request_id}-replay-" in replayed.stdout
    answer = decode_reply((await replies.next_msg(timeout=30)).data)
    assert isinstance(answer, FinalResult)
    assert (answer.id, answer.output) == (request_id, {"fail": True})
    assert json.loads(_dlq(nats_url, "list", "--model", model_name, "--json").stdout) == []


async def test_purge_deletes_one_models_dead_letters(
    nc: NATS, nats_server: NatsServer, model_name: str, start_worker: Any
) -> None:
    nats_url = nats_server.url
    start_worker(model_name, "tests.models:FailingModel", JETSERVE_MAX_ATTEMPTS="1")
    await wait_for_workers(nc, model_name, 1)
    replies = await nc.subscribe(f"dlqtest.{model_name}")
    for _ in range(3):
        await _publish(nc, model_name, {"fail": True}, f"dlqtest.{model_name}")
    for _ in range(3):
        await replies.next_msg(timeout=30)
    assert "3 dead letters" in _dlq(nats_url, "list", "--model", model_name).stdout
    assert "3 dead letters purged" in _dlq(nats_url, "purge", "--model", model_name, "--yes").stdout
    assert json.loads(_dlq(nats_url, "list", "--model", model_name, "--json").stdout) == []
