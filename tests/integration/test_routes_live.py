"""The live route table against a real nats-server: checked writes, a watching table seeing
each change, the Python client resolving served names (stickiness, shadow traffic), and a
rollback with requests queued on the version rolled back from."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats
import pytest
from nats.js.kv import KeyValue

from jetserve.servers import NatsServer
from natsio.routes import RouteStore, RouteTable
from producer.client import Client, make_request
from schemas import names
from schemas.routes import InvalidRoute, Plan, Route, Shadow, Target, encode_route
from workers.config import ModelSpec, WorkerConfig
from workers.provision import provision_model
from workers.worker import queue_settings

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def until(check: Callable[[], bool], timeout_s: float = 1.0) -> float:
    """Seconds until `check()` holds; fails past `timeout_s`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, "not within the time allowed"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def provision(nats_url: str, *models: str) -> None:
    """Streams and consumers with no worker (requests queue there)."""
    nc = await nats.connect(nats_url)
    try:
        for model in models:
            settings = queue_settings(WorkerConfig(), ModelSpec(name=model))
            await provision_model(nc.jetstream(), model, settings)
    finally:
        await nc.close()


async def test_checked_writes_reach_a_watching_table_within_a_second(
    nats_server: NatsServer,
) -> None:
    v1, v2, served = unique("rv1"), unique("rv2"), unique("chat")
    await provision(nats_server.url, v1, v2)
    nc = await nats.connect(nats_server.url)
    store = await RouteStore.open(nc)
    table = await RouteTable.watch(nc.jetstream())
    try:
        await store.set(served, [Target(v1, 90), Target(v2, 10)])
        await until(lambda: table.plan(served) is not None)
        promoted = await store.promote(served, v2)
        assert promoted.targets == [Target(v1, 0), Target(v2, 100)]
        await until(lambda: table.routes()[served] == promoted)
        back = await store.rollback(served)
        assert back.targets == [Target(v1, 90), Target(v2, 10)]
        await until(lambda: table.routes()[served] == back)
        assert table.versions(served) == [v1, v2]
        # Refused, naming the problem; the table keeps the last good route.
        with pytest.raises(InvalidRoute, match="has no request stream"):
            await store.set(served, [Target(unique("ghost"), 1)])
        with pytest.raises(InvalidRoute, match="must sum to more than 0"):
            await store.set(served, [Target(v1, 0)])
        with pytest.raises(InvalidRoute, match="is a model's name"):
            await store.set(v1, [Target(v2, 1)])
        with pytest.raises(InvalidRoute, match="is a served name"):
            await store.set(unique("chat2"), [Target(served, 1)])
        assert (await store.get(served)) == back
        await store.delete(served)
        await until(lambda: table.plan(served) is None)
    finally:
        await table.close()
        await nc.close()


async def test_a_table_opened_later_holds_every_route_at_once_and_only_the_latest(
    nats_server: NatsServer,
) -> None:
    v1, v2, served, gone = unique("rv1"), unique("rv2"), unique("chat"), unique("chat")
    await provision(nats_server.url, v1, v2)
    nc = await nats.connect(nats_server.url)
    store = await RouteStore.open(nc)
    await store.set(served, [Target(v1, 90), Target(v2, 10)])
    latest = await store.promote(served, v2)
    await store.set(gone, [Target(v1, 1)])
    await store.delete(gone)
    table = await RouteTable.watch(nc.jetstream())
    try:
        # Loaded when watch() returns: no wait.
        assert table.routes()[served] == latest
        assert table.plan(gone) is None
        # An entry older than the one applied (a watch delivery after the direct read) is
        # ignored; a newer one is applied.
        first = Route(served, [Target(v1, 90), Target(v2, 10)])
        table._apply(
            KeyValue.Entry(names.ROUTES_BUCKET, served, encode_route(first), 1, None, None, None)
        )
        assert table.routes()[served] == latest
        await store.rollback(served)
        await until(lambda: table.routes()[served].targets == [Target(v1, 90), Target(v2, 10)])
    finally:
        await table.close()
        await nc.close()


async def test_client_routes_served_names_stickily(
    nats_server: NatsServer, inproc_worker: Any
) -> None:
    v1, v2, served = unique("cv1"), unique("cv2"), unique("chat")
    await inproc_worker(v1)
    await inproc_worker(v2)
    client = await Client.connect(nats_server.url)
    nc = await nats.connect(nats_server.url)
    try:
        route = await (await RouteStore.open(nc)).set(served, [Target(v1, 50), Target(v2, 50)])
        assert client.routes is not None
        await until(lambda: client.routes is not None and client.routes.plan(served) is not None)
        plan = Plan(route)
        users = [f"user-{i}" for i in range(20)]
        results = await asyncio.gather(
            *[
                client.request(served, "chat", CHAT, sticky=users[i % 20], timeout_s=20)
                for i in range(200)
            ]
        )
        seen: dict[str, set[str]] = {}
        for i, result in enumerate(results):
            seen.setdefault(users[i % 20], set()).add(result.model)
        # Each user one version, the one its key chooses; both versions served.
        assert all(versions == {plan.choose(u)} for u, versions in seen.items())
        assert {r.model for r in results} == {v1, v2}
        # Without a sticky key the request id decides (the same id, the same version).
        request = make_request(served, "chat", CHAT, request_id="fixed-id-1")
        routed = client.route(request)
        assert routed.model == plan.choose("fixed-id-1")
        assert routed.id == "fixed-id-1"
        # A version stays callable by its own name.
        direct = await client.request(v2, "chat", CHAT, timeout_s=20)
        assert direct.model == v2
    finally:
        await client.close()
        await nc.close()


async def test_shadow_traffic_is_mirrored_at_batch_priority(
    nats_server: NatsServer, inproc_worker: Any
) -> None:
    v1, mirror, served = unique("sv1"), unique("smirror"), unique("chat")
    await inproc_worker(v1)
    await provision(nats_server.url, mirror)  # no worker: the mirrors stay countable
    client = await Client.connect(nats_server.url)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        route = Route(served, [Target(v1, 1)], Shadow(mirror, 25))
        await (await RouteStore.open(nc)).put(route)
        await until(lambda: client.routes is not None and client.routes.plan(served) is not None)
        ids = [uuid.uuid4().hex for _ in range(400)]
        results = await asyncio.gather(
            *[client.request_obj(make_request(served, "chat", CHAT, request_id=i), 20) for i in ids]
        )
        assert {r.model for r in results} == {v1}  # the mirror's result is never returned
        expected = [i for i in ids if Plan(route).shadow(i) == mirror]
        assert 60 < len(expected) < 140  # about a quarter

        async def mirrored() -> int:
            info = await js.stream_info(names.stream_name(mirror))
            return int(info.state.messages)

        for _ in range(100):  # the mirrors are published in the background
            if await mirrored() >= len(expected):
                break
            await asyncio.sleep(0.05)
        assert await mirrored() == len(expected)
        first = await js.get_msg(names.stream_name(mirror), seq=1)
        assert first.subject == names.request_subject(mirror, names.Priority.BATCH)
        assert first.headers is not None
        assert names.Header.REPLY_TO.value not in first.headers
        assert client.routes is not None
        counted = client.routes.metrics.registry.get_sample_value(
            "jetserve_shadow_requests_total",
            {"served_name": served, "model": mirror, "outcome": "stored"},
        )
        assert counted == len(expected)
    finally:
        await client.close()
        await nc.close()


async def test_rollback_leaves_queued_requests_to_complete_on_their_version(
    nats_server: NatsServer, inproc_worker: Any
) -> None:
    old, new, served = unique("old"), unique("new"), unique("chat")
    await inproc_worker(old)
    await provision(nats_server.url, new)  # the new version's worker is not up yet
    client = await Client.connect(nats_server.url)
    nc = await nats.connect(nats_server.url)
    store = await RouteStore.open(nc)
    try:
        await store.set(served, [Target(old, 100)])
        await store.set(served, [Target(old, 0), Target(new, 100)])
        await until(
            lambda: client.routes is not None and client.routes.versions(served) == [old, new]
        )
        queued = [
            await client.start(make_request(served, "chat", CHAT, timeout_s=30), streaming=False)
            for _ in range(20)
        ]
        assert {p.request.model for p in queued} == {new}
        rolled = await store.rollback(served)
        assert rolled.targets == [Target(old, 100)]
        assert client.routes is not None
        routes = client.routes
        await until(lambda: routes.plan(served) is not None and routes.versions(served) == [old])
        after = await client.request(served, "chat", CHAT, timeout_s=20)
        assert after.model == old
        await inproc_worker(new)  # the queued requests are served where they wait
        replies = await asyncio.wait_for(asyncio.gather(*[p.done for p in queued]), 20)
        assert [getattr(r, "model", None) for r in replies] == [new] * 20
        for pending in queued:
            await client.finish(pending)
    finally:
        await client.close()
        await nc.close()
