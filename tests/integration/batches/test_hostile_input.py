"""No input of one tenant can crash, stall or crash-loop a shared process (docs/RELIABILITY.md,
"One tenant cannot stop the others"): each case here sends the hostile input to the real
bridge and scheduler processes, then checks that another tenant is still served (a batch of
tenant `beta` completes and its webhook is delivered) and that the processes still run."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import asyncpg
import httpx
import pytest

from scheduler.store import batches as bs
from scheduler.store.files import FileWriter
from scheduler.store.pool import NOTIFY_CHANNEL
from scheduler.validate import MAX_VALIDATION_ATTEMPTS

from ..hostile import RawReceiver, gzip_bomb, trickle
from .conftest import ECHO, MAX_FILE_BYTES, BatchStack, Receiver, chat_line, jsonl, wait_batch

pytestmark = pytest.mark.integration

#: The batch limit on a line (scheduler/store/files.py: MAX_LINE_BYTES).
LINE_LIMIT = 2 * 1024 * 1024


def other_tenant_is_served(stack: BatchStack, hook: Receiver | None = None) -> None:
    """Tenant beta's batch completes (and, given a receiver, its webhook arrives); every
    process of the stack is still running."""
    client = stack.sdk("beta")
    lines = [chat_line(f"b{i}", ECHO, f"still served {i}") for i in range(3)]
    uploaded = client.files.create(file=("b.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_batch(client, batch.id, {"completed", "failed"}, 30).status == "completed"
    if hook is not None:
        end = time.monotonic() + 15
        while not any(b'"batch.completed"' in body for _, body, _ in hook.posts):
            assert time.monotonic() < end, "the other tenant's webhook was not delivered"
            time.sleep(0.05)
    assert all(p.poll() is None for p in stack.schedulers[-1:])


def post_file(stack: BatchStack, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(
        f"{stack.v1}/files",
        headers={"authorization": f"Bearer {stack.keys['alpha']}", "content-type": content_type},
        content=body,
        timeout=60,
    )


def multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "hostile0boundary"
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_line_over_the_limit_is_refused_while_uploading(batch_stack: BatchStack) -> None:
    """One line of 3 MiB (the file is within the 4 MiB size limit of this stack): 400 naming
    the line, before the rest is stored."""
    good = jsonl([chat_line("a", ECHO, "x")])
    content = good + b'{"custom_id": "' + b"x" * (LINE_LIMIT + 1024) + b'"}\n' + good
    assert len(content) < MAX_FILE_BYTES
    body, content_type = multipart([("purpose", b"batch", None), ("file", content, "big.jsonl")])
    response = post_file(batch_stack, body, content_type)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("line_too_long", "file")
    assert "Line 2 " in error["message"]
    other_tenant_is_served(batch_stack)


def test_form_fields_other_than_file_and_purpose_are_refused(batch_stack: BatchStack) -> None:
    """Before, each field (up to 1 KiB) was kept with no total: 80 MB of fields in memory."""
    fields = [(f"f{i}", b"v" * 1000, None) for i in range(200)]
    body, content_type = multipart([("purpose", b"batch", None), *fields])
    response = post_file(batch_stack, body, content_type)
    assert response.status_code == 400, response.text
    assert "Unknown form field `f0`" in response.json()["error"]["message"]
    other_tenant_is_served(batch_stack)


async def _store_file(dsn: str, tenant: str, content: bytes) -> str:
    """A file written straight to the store (as uploads before the line limit were)."""
    conn = await asyncpg.connect(dsn)
    try:
        writer = await FileWriter.create(conn, tenant, "batch", "old.jsonl")
        for i in range(0, len(content), 1 << 20):
            await writer.write(content[i : i + (1 << 20)])
        await writer.close()
        return writer.file_id
    finally:
        await conn.close()


def test_a_stored_file_with_a_huge_line_fails_its_batch_naming_the_line(
    batch_stack: BatchStack,
) -> None:
    """A 24 MiB line stored before the limit existed: the scheduler reads it in pieces (no
    quadratic rebuild, never whole) and fails the batch with `line_too_long` on that line."""
    good = jsonl([chat_line("a", ECHO, "x")])
    content = good + b"y" * (24 << 20) + b"\n" + good
    file_id = asyncio.run(_store_file(batch_stack.dsn, "alpha", content))
    client = batch_stack.sdk()
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_batch(client, batch.id, {"failed", "completed"}, 60)
    assert failed.status == "failed"
    errors = [(e.code, e.line) for e in failed.errors.data]
    assert ("line_too_long", 2) in errors
    other_tenant_is_served(batch_stack)


def test_a_batch_whose_validation_keeps_dying_is_failed(batch_stack: BatchStack) -> None:
    """A batch whose validation was attempted MAX_VALIDATION_ATTEMPTS times already (each
    attempt is counted before it starts: the process died during each) is failed by the
    scheduler, not validated again."""
    content = jsonl([chat_line("a", ECHO, "x")])

    async def prepare() -> str:
        file_id = await _store_file(batch_stack.dsn, "alpha", content)
        conn = await asyncpg.connect(batch_stack.dsn)
        try:
            async with conn.transaction():  # seen by the scheduler only as a whole
                row = await bs.create_batch(
                    conn,
                    tenant="alpha",
                    endpoint="/v1/chat/completions",
                    input_file_id=file_id,
                    completion_window="24h",
                    window_s=86400,
                    metadata=None,
                )
                await conn.execute(
                    "UPDATE batches SET validation_attempts = $2 WHERE id = $1",
                    row.id,
                    MAX_VALIDATION_ATTEMPTS,
                )
            await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            return row.id
        finally:
            await conn.close()

    batch_id = asyncio.run(prepare())
    failed = wait_batch(batch_stack.sdk(), batch_id, {"failed", "completed"}, 30)
    assert failed.status == "failed"
    assert [e.code for e in failed.errors.data] == ["validation_error"]
    assert f"in {MAX_VALIDATION_ATTEMPTS} attempts" in failed.errors.data[0].message
    other_tenant_is_served(batch_stack)


def test_hostile_webhook_receivers_do_not_stop_other_tenants_webhooks(
    batch_stack: BatchStack,
) -> None:
    """Alpha's endpoints: one trickling its status line a byte every 0.5 s, one answering a
    gzip bomb (256 MiB expanded). Beta's batch completes and its webhook arrives meanwhile;
    the bomb's delivery is acknowledged without its body being read."""
    slow = RawReceiver(trickle(0.5, for_s=60))
    bomb = RawReceiver(gzip_bomb(256 * 1024 * 1024))
    good = Receiver()
    created: list[tuple[str, str]] = []
    try:
        for tenant, url in (("alpha", slow.url()), ("alpha", bomb.url()), ("beta", good.url)):
            response = httpx.post(
                f"{batch_stack.v1}/webhooks",
                headers={"authorization": f"Bearer {batch_stack.keys[tenant]}"},
                json={"url": url, "events": ["batch.completed"]},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            created.append((tenant, response.json()["id"]))
        client = batch_stack.sdk()
        lines = [chat_line("h", ECHO, "hook")]
        uploaded = client.files.create(file=("h.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_batch(client, batch.id, {"completed"})
        other_tenant_is_served(batch_stack, hook=good)
        end = time.monotonic() + 15
        while True:
            deliveries: list[dict[str, Any]] = batch_stack.query(
                "SELECT state FROM webhook_deliveries WHERE tenant = 'alpha' AND url = $1",
                bomb.url(),
            )
            if deliveries and {d["state"] for d in deliveries} == {"delivered"}:
                break
            assert time.monotonic() < end, deliveries
            time.sleep(0.1)
    finally:
        for tenant, endpoint_id in created:
            httpx.delete(
                f"{batch_stack.v1}/webhooks/{endpoint_id}",
                headers={"authorization": f"Bearer {batch_stack.keys[tenant]}"},
                timeout=30,
            )
        slow.close()
        bomb.close()
        good.close()
