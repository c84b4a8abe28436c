"""Webhooks end to end: registration (and refusals), Standard Webhooks signatures verified
with the `standardwebhooks` library, retries with one acknowledged delivery per event, and
dead-marking after the retry period (4 s in these tests; 72 h by default)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .conftest import (
    ECHO,
    WEBHOOK_RETRY_PERIOD_S,
    BatchStack,
    Receiver,
    chat_line,
    jsonl,
    wait_batch,
)

pytestmark = pytest.mark.integration


def register(stack: BatchStack, url: str, tenant: str = "alpha", **body: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{stack.v1}/webhooks",
        headers={"authorization": f"Bearer {stack.keys[tenant]}"},
        json={"url": url, **body},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def unregister(stack: BatchStack, endpoint_id: str, tenant: str = "alpha") -> None:
    httpx.delete(
        f"{stack.v1}/webhooks/{endpoint_id}",
        headers={"authorization": f"Bearer {stack.keys[tenant]}"},
        timeout=30,
    ).raise_for_status()


def run_batch(stack: BatchStack, tenant: str = "alpha", n: int = 5) -> str:
    client = stack.sdk(tenant)
    lines = [chat_line(f"w{i}", ECHO, "hook") for i in range(n)]
    uploaded = client.files.create(file=("w.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_batch(client, batch.id, {"completed"})
    return batch.id


def wait_for(condition: Any, timeout_s: float = 20) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_signed_delivery_retried_until_acknowledged_once(batch_stack: BatchStack) -> None:
    receiver = Receiver(fail_first=2)
    try:
        endpoint = register(batch_stack, receiver.url, events=["batch.completed"])
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["events"] == ["batch.completed"]
        batch_id = run_batch(batch_stack)
        wait_for(lambda: any(code == 200 for _, _, code in receiver.posts))
        time.sleep(1.0)  # no further delivery after the acknowledgement
        posts = list(receiver.posts)
        assert [code for _, _, code in posts] == [500, 500, 200]
        assert len({h["webhook-id"] for h, _, _ in posts}) == 1  # the same message, retried
        webhook = Webhook(endpoint["secret"])
        for headers, body, _ in posts:
            event = webhook.verify(body, headers)
            assert event["type"] == "batch.completed"
            assert event["data"] == {"id": batch_id}
            assert event["object"] == "event"
        tampered = dict(posts[-1][0])
        with pytest.raises(WebhookVerificationError):
            webhook.verify(posts[-1][1].replace(batch_id.encode(), b"batch_other"), tampered)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 43 + "=").verify(posts[-1][1], tampered)
        rows = batch_stack.query(
            "SELECT state, attempts, last_status FROM webhook_deliveries WHERE endpoint_id = $1",
            endpoint["id"],
        )
        assert rows == [{"state": "delivered", "attempts": 3, "last_status": 200}]
    finally:
        unregister(batch_stack, endpoint["id"])
        receiver.close()


def test_delivery_marked_dead_after_the_retry_period(batch_stack: BatchStack) -> None:
    receiver = Receiver(status=503)
    try:
        endpoint = register(batch_stack, receiver.url, tenant="beta")
        run_batch(batch_stack, tenant="beta", n=1)

        def dead() -> bool:
            rows = batch_stack.query(
                "SELECT state FROM webhook_deliveries WHERE endpoint_id = $1", endpoint["id"]
            )
            return bool(rows) and rows[0]["state"] == "dead"

        started = time.monotonic()
        wait_for(dead, timeout_s=WEBHOOK_RETRY_PERIOD_S + 15)
        row = batch_stack.query(
            "SELECT attempts, last_status, created_at, next_attempt_at FROM webhook_deliveries "
            "WHERE endpoint_id = $1",
            endpoint["id"],
        )[0]
        assert row["attempts"] == len(receiver.posts) >= 3
        assert row["last_status"] == 503
        assert time.monotonic() - started >= WEBHOOK_RETRY_PERIOD_S - 2
        count = len(receiver.posts)
        time.sleep(1.0)
        assert len(receiver.posts) == count  # nothing after dead
    finally:
        unregister(batch_stack, endpoint["id"], tenant="beta")
        receiver.close()


def test_registration_refusals(batch_stack: BatchStack) -> None:
    headers = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    for body, param in (
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "http://example.com/x", "events": ["batch.exploded"]}, "events"),
        ({"url": "http://example.com/x", "secret": "not-a-secret"}, "secret"),
        # `urlsplit` drops these, the HTTP client refuses them: refused, never stored.
        ({"url": "http://example.com/a\tb"}, "url"),
        ({"url": "http://example.com/\r\nx: y"}, "url"),
    ):
        response = httpx.post(f"{batch_stack.v1}/webhooks", headers=headers, json=body, timeout=30)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param
    listed = httpx.get(f"{batch_stack.v1}/webhooks", headers=headers, timeout=30).json()
    assert all("secret" not in e for e in listed["data"])
    assert all("\t" not in e["url"] and "\n" not in e["url"] for e in listed["data"])
    endpoint = register(batch_stack, "HTTP://LocalHost:8/a/../b")
    assert endpoint["url"] == "http://localhost:8/b"  # stored as the client sends it
    unregister(batch_stack, endpoint["id"])
    other = httpx.delete(f"{batch_stack.v1}/webhooks/we_nope", headers=headers, timeout=30)
    assert other.status_code == 404
    assert json.loads(other.content)["error"]["type"] == "not_found_error"
