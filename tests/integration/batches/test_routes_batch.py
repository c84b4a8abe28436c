"""A served name through the batch API and async requests (real bridge, scheduler, workers):
each batch line is routed by its sticky key (`user`, ...) or else its item id, the output says
which version served it, and the route's shadow mirrors batch lines and NATS async requests."""

from __future__ import annotations

import asyncio
import io
import uuid

import httpx
import nats
import pytest

from natsio.routes import RouteStore
from producer.client import make_request
from schemas import names
from schemas.codec import encode
from schemas.routes import Plan, Route, Shadow, Target
from workers.config import ModelSpec, WorkerConfig
from workers.provision import provision_model
from workers.worker import queue_settings

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
            timeout=30,
        )
        assert r.status_code == 202, r.text
        polled = _poll(batch_stack, r.json()["id"])
        assert polled["status"] == "completed", polled
        assert polled["response"]["body"]["model"] == plan.choose(user)


def test_sticky_batch_lines_shadow_and_nats_async_of_a_served_name(
    batch_stack: BatchStack,
) -> None:
    v2, mirror = f"b-echo-v2-{uuid.uuid4().hex[:6]}", f"b-mirror-{uuid.uuid4().hex[:6]}"
    served = f"b-chat-{uuid.uuid4().hex[:6]}"
    batch_stack.start_worker(v2, "echo")
    route = Route(served, [Target(ECHO, 50), Target(v2, 50)], Shadow(mirror, 30))
    plan = Plan(route)
    users = [f"user-{i}" for i in range(6)]
    nats_ids = [f"nats-{uuid.uuid4().hex[:12]}" for _ in range(20)]

    async def setup() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            await wait_for_workers(nc, v2, 1)
            # the mirror: a stream and consumers with no worker, so its requests stay countable
            settings = queue_settings(WorkerConfig(), ModelSpec(name=mirror))
            await provision_model(nc.jetstream(), mirror, settings)
            await (await RouteStore.open(nc)).put(route)
        finally:
            await nc.close()

    asyncio.run(setup())
    client = batch_stack.sdk()
    # 30 lines with a `user` (five each of six users) and 30 without
    lines = [chat_line(f"u-{i}", served, f"line {i}", user=users[i % 6]) for i in range(30)]
    lines += [chat_line(f"n-{i}", served, f"line {i}") for i in range(30)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done.errors
    out = read_lines(client, done.output_file_id)
    assert len(out) == 60
    by_custom = {line["custom_id"]: line for line in out}
    keys = {f"u-{i}": users[i % 6] for i in range(30)}
    keys |= {f"n-{i}": by_custom[f"n-{i}"]["id"] for i in range(30)}  # the item id
    served_by = {c: line["response"]["body"]["model"] for c, line in by_custom.items()}
    assert served_by == {c: plan.choose(keys[c]) for c in served_by}
    for user in users:  # each user saw one version
        assert len({served_by[c] for c in served_by if keys[c] == user}) == 1
    assert set(served_by.values()) == {ECHO, v2}

    async def submit_and_count() -> tuple[int, list[str]]:
        nc = await nats.connect(batch_stack.nats_url)
        js = nc.jetstream()
        try:
            for i, request_id in enumerate(nats_ids):  # NATS async: the key in its metadata
                request = make_request(
                    served,
                    "predict",
                    {"x": i},
                    request_id=request_id,
                    tenant="alpha",
                    metadata={names.ROUTE_KEY_METADATA: users[i % 6]},
                )
                await js.publish(
                    names.ASYNC_SUBMIT_SUBJECT,
                    encode(request),
                    headers={"Nats-Msg-Id": request_id},
                )
            expected = sum(1 for k in keys.values() if plan.shadow(k) == mirror)
            expected += sum(1 for i in range(20) if plan.shadow(users[i % 6]) == mirror)
            stream = names.stream_name(mirror)
            count = 0
            for _ in range(200):  # the mirrors of the async requests follow their dispatch
                count = int((await js.stream_info(stream)).state.messages)
                if count >= expected:
                    break
                await asyncio.sleep(0.05)
            subjects: list[str] = []
            for seq in range(1, count + 1):
                msg = await js.get_msg(stream, seq=seq)
                assert msg.headers is not None
                assert names.Header.REPLY_TO.value not in msg.headers  # result discarded
                subjects.append(str(msg.subject))
            assert count == expected, (count, expected)
            return count, subjects
        finally:
            await nc.close()

    count, subjects = asyncio.run(submit_and_count())
    assert 0 < count < 80
    assert set(subjects) == {names.request_subject(mirror, names.Priority.BATCH)}
    for i, request_id in enumerate(nats_ids):
        polled = _poll(batch_stack, request_id)
        assert polled["status"] == "completed", polled
        assert polled["response"]["body"]["model"] == plan.choose(users[i % 6])
