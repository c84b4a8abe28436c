"""A served name through the batch API and async requests (real bridge, scheduler, workers):
each batch line is routed by its item id, and the output says which version served it."""

from __future__ import annotations

import asyncio
import io
import uuid

import httpx
import nats
import pytest

from natsio.routes import RouteStore
from schemas.routes import Plan, Route, Target

from ...conftest import wait_for_workers
from .conftest import ECHO, BatchStack, chat_line, jsonl, read_lines, wait_batch
from .test_async_requests import _poll

pytestmark = pytest.mark.integration


def test_batch_lines_and_async_requests_of_a_served_name(batch_stack: BatchStack) -> None:
    v2, served = f"b-echo-v2-{uuid.uuid4().hex[:6]}", f"b-chat-{uuid.uuid4().hex[:6]}"
    batch_stack.start_worker(v2, "echo")
    route = Route(served, [Target(ECHO, 50), Target(v2, 50)])

    async def setup() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            await wait_for_workers(nc, v2, 1)
            await (await RouteStore.open(nc)).put(route)
        finally:
            await nc.close()

    asyncio.run(setup())
    plan = Plan(route)
    client = batch_stack.sdk()
    lines = [chat_line(f"r-{i}", served, f"line {i}") for i in range(60)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done.errors
    out = read_lines(client, done.output_file_id)
    assert len(out) == 60
    served_by = {line["id"]: line["response"]["body"]["model"] for line in out}
    # Each line went to the version its item id chooses (the same on a republish).
    assert served_by == {rid: plan.choose(rid) for rid in served_by}
    assert set(served_by.values()) == {ECHO, v2}

    headers = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    for user in ("ann", "bob", "cy", "dee", "eve", "fay"):
        r = httpx.post(
            f"{batch_stack.v1}/async/chat/completions",
            json={"model": served, "user": user, "messages": [{"role": "user", "content": "x"}]},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        polled = _poll(batch_stack, r.json()["id"])
        assert polled["status"] == "completed", polled
        assert polled["response"]["body"]["model"] == plan.choose(user)
