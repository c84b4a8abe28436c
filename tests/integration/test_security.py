"""Security of the surfaces, against the real processes: API keys are stored hashed and never
logged; prompts are never logged (ids and sizes only), on every path and on the error paths
that echo input; keys are compared in constant time; nothing a caller sends becomes a NATS
subject (see also the bad-input catalog and `tests/test_handler.py` for reply subjects)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import itertools
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest

from producer.client import Client
from scheduler.store import keys

from ..conftest import REPO
from .batches.conftest import ECHO as B_ECHO
from .batches.conftest import BatchStack
from .conftest import ECHO, MINILM, SLOW, BridgeStack

pytestmark = pytest.mark.integration


def _create_key_with_the_cli(dsn: str, tenant: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "jetserve", "keys", "create", "--tenant", tenant],
        env={"JETSERVE_DATABASE_URL": dsn, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    secret = out.stdout.strip().splitlines()[-1]
    assert secret.startswith(keys.KEY_PREFIX)
    return secret


def _logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log")))


def test_keys_are_stored_hashed_and_nothing_secret_or_prompted_is_logged(
    bridge_stack: BridgeStack, batch_stack: BatchStack, tmp_path: Path
) -> None:
    secret = _create_key_with_the_cli(bridge_stack.dsn, "sec")
    marker = f"PROMPT-{uuid.uuid4().hex}"
    v1 = bridge_stack.v1
    headers = {"Authorization": f"Bearer {secret}"}
    chat = {"model": ECHO, "messages": [{"role": "user", "content": f"say {marker}"}]}
    with httpx.Client(base_url=v1, headers=headers, timeout=60) as http:
        assert http.post("/chat/completions", json=chat).status_code == 200
        with http.stream("POST", "/chat/completions", json={**chat, "stream": True}) as r:
            assert marker in r.read().decode()
        completion = {"model": ECHO, "prompt": f"complete {marker}"}
        assert http.post("/completions", json=completion).status_code == 200
        embed = {"model": MINILM, "input": [marker], "encoding_format": "float"}
        assert http.post("/embeddings", json=embed).status_code == 200
        # Error paths that see the input: refused parameters, an unknown model, and a model
        # that raises on it (its exception message quotes the prompt; retried, dead-lettered).
        assert http.post("/chat/completions", json={**chat, "temperature": 9}).status_code == 400
        assert http.post("/chat/completions", json={**chat, "model": marker}).status_code == 404
        failing = {"model": SLOW, "messages": [{"role": "user", "content": f"sleep {marker}"}]}
        assert http.post("/chat/completions", json=failing).status_code == 500
        # A refused key: neither it nor its hash is logged either.
        wrong = f"{keys.KEY_PREFIX}{uuid.uuid4().hex}"
        refused = http.post(
            "/chat/completions", json=chat, headers={"Authorization": f"Bearer {wrong}"}
        )
        assert refused.status_code == 401

    async def over_nats() -> None:
        client = await Client.connect(bridge_stack.nats_url)
        try:
            payload = {"messages": [{"role": "user", "content": f"nats {marker}"}]}
            await client.request(ECHO, "chat", payload, timeout_s=20)
        finally:
            await client.close()

    asyncio.run(over_nats())
    # The batch path: a file whose lines carry the marker, through the scheduler.
    sdk = batch_stack.sdk()
    line = {
        "custom_id": "s1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": B_ECHO, "messages": [{"role": "user", "content": f"batch {marker}"}]},
    }
    uploaded = sdk.files.create(
        file=("s.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch"
    )
    batch = sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    end = time.monotonic() + 60
    while sdk.batches.retrieve(batch.id).status != "completed":
        assert time.monotonic() < end
        time.sleep(0.1)
    time.sleep(0.5)  # let the last log lines be written

    logs = _logs(bridge_stack.logs) + _logs(batch_stack.logs)
    assert "will retry" in logs  # the logs did record the events
    assert "dead-lettered" in logs
    for needle in (secret, secret[len(keys.KEY_PREFIX) :], wrong, marker):
        assert needle not in logs, f"{needle[:12]}... found in the logs"
    digest = keys.hash_key(secret)
    assert digest.hex() not in logs

    # Stored: the SHA-256 of the key and a 7-character prefix to recognise it; no column
    # holds the key.
    async def row() -> dict[str, Any]:
        conn = await asyncpg.connect(bridge_stack.dsn)
        try:
            found = await conn.fetchrow("SELECT * FROM api_keys WHERE key_hash = $1", digest)
            assert found is not None
            return dict(found)
        finally:
            await conn.close()

    stored = asyncio.run(row())
    assert bytes(stored["key_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert stored["key_prefix"] == secret[:7]
    assert all(secret not in str(v) for v in stored.values())


async def test_keys_are_compared_in_constant_time(
    bridge_stack: BridgeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup finds the row by the key's SHA-256 (an attacker cannot steer a digest's
    prefix, so index timing says nothing), then compares digests with hmac.compare_digest."""
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    conn = await asyncpg.connect(bridge_stack.dsn)
    try:
        found = await keys.lookup_key(conn, bridge_stack.key)
        missing = await keys.lookup_key(conn, bridge_stack.key + "x")
    finally:
        await conn.close()
    assert found is not None
    assert found.tenant == bridge_stack.tenant
    assert missing is None
    assert compared == [(keys.hash_key(bridge_stack.key), keys.hash_key(bridge_stack.key))]


@pytest.mark.parametrize("key", ["a.*.>", "jetserve.req.x.online", "$JS.API.>", "_INBOX.x"])
def test_idempotency_keys_never_become_subjects(bridge_stack: BridgeStack, key: str) -> None:
    """The request id and reply subject of an idempotent request are a hash of (tenant,
    key): subject syntax in the key is inert."""
    headers = {"Authorization": f"Bearer {bridge_stack.key}", "Idempotency-Key": key}
    body = {"model": ECHO, "messages": [{"role": "user", "content": f"idem {key}"}]}
    first = httpx.post(
        f"{bridge_stack.v1}/chat/completions", json=body, headers=headers, timeout=30
    )
    again = httpx.post(
        f"{bridge_stack.v1}/chat/completions", json=body, headers=headers, timeout=30
    )
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == f"idem {key}"
    assert again.text == first.text


async def test_the_worker_publishes_no_reply_to_a_subject_it_must_not(
    bridge_stack: BridgeStack,
) -> None:
    """A direct publisher's `Jetserve-Reply-To` pointing at a JetStream API subject or
    another model's request subject: the worker publishes nothing there and runs nothing."""
    nc = await nats.connect(bridge_stack.nats_url)
    try:
        spy = await nc.subscribe("jetserve.req.victim.online")
        js = nc.jetstream()
        for reply_to in ("jetserve.req.victim.online", "$JS.API.STREAM.PURGE.x", "x.*"):
            request_id = f"inj-{uuid.uuid4().hex[:8]}"
            body = {"type": "request.v1", "id": request_id, "model": ECHO, "kind": "predict"}
            await js.publish(
                f"jetserve.req.{ECHO}.online",
                json.dumps({**body, "payload": 1}).encode(),
                headers={"Jetserve-Reply-To": reply_to, "Nats-Msg-Id": request_id},
            )
        with pytest.raises(nats.errors.TimeoutError):
            await spy.next_msg(timeout=1.0)
        info = await js.consumer_info(f"jetserve-req-{ECHO}", "online")
        assert info.num_ack_pending == 0  # terminated, not left to be redelivered
    finally:
        await nc.close()


def test_request_ids_are_unpredictable(bridge_stack: BridgeStack) -> None:
    """Ids are in every response and are the NATS de-duplication id. Before, they were a
    per-process prefix and a counter: a tenant that can also publish to NATS could compute
    the next ids and cancel, or pre-empt under their `Nats-Msg-Id`, other tenants' requests."""
    headers = {"Authorization": f"Bearer {bridge_stack.key}"}
    chat = {"model": ECHO, "messages": [{"role": "user", "content": "id"}]}
    with httpx.Client(base_url=bridge_stack.v1, headers=headers, timeout=30) as http:
        ids = [http.post("/chat/completions", json=chat).json()["id"] for _ in range(40)]
    tails = [i.removeprefix("chatcmpl-") for i in ids]
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tails)  # 128 bits, hex
    assert len(set(tails)) == len(tails)
    # Consecutive ids share no prefix beyond chance (a prefix-and-counter scheme shares 16).
    shared = [
        next((n for n, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        for a, b in itertools.pairwise(tails)
    ]
    assert max(shared) < 8, shared


def test_a_model_exception_reaches_the_client_summarised(bridge_stack: BridgeStack) -> None:
    """The model's exception text (here it quotes the prompt) is the model's internals: the
    client is told the kind of failure, not the text."""
    marker = f"SECRET-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {bridge_stack.key}"}
    failing = {"model": SLOW, "messages": [{"role": "user", "content": f"sleep {marker}"}]}
    response = httpx.post(
        f"{bridge_stack.v1}/chat/completions", json=failing, headers=headers, timeout=60
    )
    assert response.status_code == 500
    assert marker not in response.text
    assert "ValueError" in response.json()["error"]["message"]
