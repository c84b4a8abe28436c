"""Async single requests: over HTTP (202 + id, then poll, with a callback webhook) and over
NATS (`jetserve.async.submit` with a `callback_url`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import nats
import pytest
from standardwebhooks.webhooks import Webhook

from producer.client import make_request
from schemas import names
from schemas.codec import encode

from .conftest import ECHO, BatchStack, Receiver
from .test_webhooks import register, unregister, wait_for

pytestmark = pytest.mark.integration


def _poll(stack: BatchStack, request_id: str, tenant: str = "alpha") -> dict[str, Any]:
    headers = {"authorization": f"Bearer {stack.keys[tenant]}"}
    end = time.monotonic() + 30
    while True:
        body = httpx.get(
            f"{stack.v1}/async/requests/{request_id}", headers=headers, timeout=30
        ).json()
        if body.get("status") in ("completed", "failed"):
            return dict(body)
        assert time.monotonic() < end, body
        time.sleep(0.05)


def test_http_submit_poll_and_callback(batch_stack: BatchStack, receiver: Receiver) -> None:
    endpoint = register(batch_stack, receiver.url, events=["batch.failed"])
    headers = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    try:
        body = {"model": ECHO, "messages": [{"role": "user", "content": "later, please"}]}
        accepted = httpx.post(
            f"{batch_stack.v1}/async/chat/completions",
            headers={**headers, "x-jetserve-callback-url": receiver.url},
            json=body,
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["id"]
        assert accepted.json()["status"] in ("queued", "in_progress", "completed")
        done = _poll(batch_stack, request_id)
        assert done["status"] == "completed"
        assert done["expires_at"] > done["completed_at"]
        response = done["response"]
        assert response["status_code"] == 200
        sync = httpx.post(
            f"{batch_stack.v1}/chat/completions", headers=headers, json=body, timeout=30
        ).json()
        assert response["body"]["object"] == sync["object"] == "chat.completion"
        assert response["body"]["choices"] == sync["choices"]
        assert response["body"]["usage"] == sync["usage"]
        # The callback: the registered endpoint gets the event, whatever it subscribed to.
        wait_for(lambda: len(receiver.posts) >= 1)
        headers_in, payload, _ = receiver.posts[0]
        event = Webhook(endpoint["secret"]).verify(payload, headers_in)
        assert event["type"] == "request.completed"
        assert event["data"]["id"] == request_id
        # Another tenant cannot see it.
        other = httpx.get(
            f"{batch_stack.v1}/async/requests/{request_id}",
            headers={"authorization": f"Bearer {batch_stack.keys['beta']}"},
            timeout=30,
        )
        assert other.status_code == 404
    finally:
        unregister(batch_stack, endpoint["id"])


def test_http_refusals(batch_stack: BatchStack) -> None:
    headers = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    unknown = httpx.post(
        f"{batch_stack.v1}/async/chat/completions",
        headers=headers,
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    bad = httpx.post(
        f"{batch_stack.v1}/async/chat/completions",
        headers=headers,
        json={"model": ECHO, "messages": [], "temperature": 9},
        timeout=30,
    )
    assert bad.status_code == 400
    unregistered = httpx.post(
        f"{batch_stack.v1}/async/chat/completions",
        headers={**headers, "x-jetserve-callback-url": "http://127.0.0.1:9/nowhere"},
        json={"model": ECHO, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert unregistered.status_code == 400
    assert unregistered.json()["error"]["code"] == "callback_url_not_registered"
    # The refused request left nothing stored (other tests store requests for other models).
    stored = batch_stack.query(
        "SELECT count(*) AS n FROM async_requests WHERE model = $1", "no-such-model"
    )
    assert stored[0]["n"] == 0


def test_nats_submit_with_callback(batch_stack: BatchStack, receiver: Receiver) -> None:
    endpoint = register(batch_stack, receiver.url, events=["request.completed"])
    request_id = f"nats-{uuid.uuid4().hex[:12]}"
    try:

        async def submit() -> None:
            nc = await nats.connect(batch_stack.nats_url)
            try:
                request = make_request(
                    ECHO,
                    "predict",
                    {"x": 1},
                    request_id=request_id,
                    tenant="alpha",
                    metadata={names.CALLBACK_URL_METADATA: receiver.url},
                )
                ack = await nc.jetstream().publish(
                    names.ASYNC_SUBMIT_SUBJECT,
                    encode(request),
                    headers={"Nats-Msg-Id": request_id},
                )
                assert ack.stream == names.ASYNC_STREAM
            finally:
                await nc.close()

        asyncio.run(submit())
        done = _poll(batch_stack, request_id)
        assert done["status"] == "completed"
        assert done["endpoint"] == "nats"
        result = done["response"]["body"]
        assert result["type"] == "result.v1"
        assert result["output"] == {"x": 1}
        wait_for(lambda: len(receiver.posts) >= 1)
        event = Webhook(endpoint["secret"]).verify(receiver.posts[0][1], receiver.posts[0][0])
        assert event["data"]["id"] == request_id
        assert json.loads(receiver.posts[0][1])["type"] == "request.completed"
    finally:
        unregister(batch_stack, endpoint["id"])


def test_nats_submit_on_a_tenant_subject_is_that_tenants(batch_stack: BatchStack) -> None:
    """On `jetserve.async.submit.<tenant>` the subject says whose request it is: one naming
    no tenant is beta's (beta polls it, alpha gets 404); one claiming alpha is not recorded."""
    own, claiming = (f"nats-{uuid.uuid4().hex[:12]}" for _ in range(2))

    async def submit() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            js = nc.jetstream()
            subject = names.tenant_async_submit_subject("beta")
            for request_id, tenant in ((claiming, "alpha"), (own, "default")):
                request = make_request(
                    ECHO, "predict", {"x": 2}, request_id=request_id, tenant=tenant
                )
                await js.publish(subject, encode(request), headers={"Nats-Msg-Id": request_id})
        finally:
            await nc.close()

    asyncio.run(submit())
    done = _poll(batch_stack, own, tenant="beta")
    assert done["status"] == "completed"
    assert done["response"]["body"]["output"] == {"x": 2}
    alpha = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    assert (
        httpx.get(f"{batch_stack.v1}/async/requests/{own}", headers=alpha, timeout=30).status_code
        == 404
    )
    # Submitted before `own`, so taken (and refused) before it was recorded.
    for tenant in ("alpha", "beta"):
        headers = {"authorization": f"Bearer {batch_stack.keys[tenant]}"}
        r = httpx.get(f"{batch_stack.v1}/async/requests/{claiming}", headers=headers, timeout=30)
        assert r.status_code == 404, r.text


def test_nats_submissions_over_the_tenants_rate_fail(batch_stack: BatchStack) -> None:
    """A tenant's own NATS user submits more than its requests per minute allow: the rest are
    recorded failed, `rate_limit_exceeded` with a retry-after; another tenant's run."""
    from scheduler.store.keys import create_key
    from scheduler.store.limits import set_limits
    from scheduler.store.pool import create_pool
    from schemas.limits import TenantLimits

    tenant = f"asynclim-{uuid.uuid4().hex[:8]}"

    async def prepare() -> str:
        pool = await create_pool(batch_stack.dsn)
        try:
            await set_limits(pool, tenant, TenantLimits(rpm=60), "*")  # a bucket of 10
            return (await create_key(pool, tenant, "async limits")).secret
        finally:
            await pool.close()

    batch_stack.keys[tenant] = asyncio.run(prepare())
    ids = [f"asynclim-{uuid.uuid4().hex[:10]}" for _ in range(20)]
    others = [f"asyncfree-{uuid.uuid4().hex[:10]}" for _ in range(3)]

    async def submit() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            js = nc.jetstream()
            for who, batch in ((tenant, ids), ("beta", others)):
                for request_id in batch:
                    request = make_request(ECHO, "predict", {"x": 1}, request_id=request_id)
                    await js.publish(
                        names.tenant_async_submit_subject(who),
                        encode(request),
                        headers={"Nats-Msg-Id": request_id},
                    )
        finally:
            await nc.close()

    start = time.monotonic()
    asyncio.run(submit())
    answers = [_poll(batch_stack, request_id, tenant=tenant) for request_id in ids]
    elapsed = time.monotonic() - start
    completed = [a for a in answers if a["status"] == "completed"]
    failed = [a for a in answers if a["status"] == "failed"]
    assert 10 <= len(completed) <= 10 + elapsed + 2, (len(completed), elapsed)
    assert len(failed) == len(ids) - len(completed)
    assert failed
    for answer in failed:
        assert answer["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= answer["error"]["retry_after_ms"] <= 60_000
    assert all(_poll(batch_stack, i, tenant="beta")["status"] == "completed" for i in others)
