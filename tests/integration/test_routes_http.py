"""Served names through two real bridge processes: every request answered by the version its
routing key chooses (`model` in the response is that version), `/v1/models` listing served
names and versions, and weights changed under a fixed-rate load (200 requests a second for
20 s, 90/10 -> 50/50 -> 0/100) with no request failing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import nats
import pytest

from jetserve.servers import NatsServer
from natsio.routes import RouteStore
from schemas.routes import Plan, Route, Target

from ..http_many import post_many

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def two_versions(
    nats_server: NatsServer, inproc_worker: Any, bridge_on: Callable[..., str]
) -> tuple[str, str, str, list[str]]:
    v1, v2, served = unique("hv1"), unique("hv2"), unique("chat")
    await inproc_worker(v1, capacity=256)
    await inproc_worker(v2, capacity=256)
    bridges = [bridge_on(nats_server.url), bridge_on(nats_server.url)]
    return v1, v2, served, bridges


async def put(nats_url: str, route: Route) -> None:
    nc = await nats.connect(nats_url)
    try:
        await (await RouteStore.open(nc)).put(route)
    finally:
        await nc.close()


async def test_each_bridge_sends_each_key_to_its_version_and_lists_served_names(
    nats_server: NatsServer, inproc_worker: Any, bridge_on: Callable[..., str]
) -> None:
    v1, v2, served, bridges = await two_versions(nats_server, inproc_worker, bridge_on)
    route = Route(served, [Target(v1, 90), Target(v2, 10)])
    await put(nats_server.url, route)
    plan = Plan(route)
    async with httpx.AsyncClient(timeout=30) as http:
        for url in bridges:
            listed = (await http.get(f"{url}/v1/models")).json()["data"]
            cards = {c["id"]: c for c in listed}
            assert cards[served]["versions"] == [v1, v2]
            assert {v1, v2} <= set(cards)
            assert "versions" not in cards[v1]
        limit = asyncio.Semaphore(32)

        async def one(url: str, key: str, **extra: Any) -> str:
            async with limit:
                r = await http.post(
                    f"{url}/v1/chat/completions",
                    json=chat_body(served, **extra),
                    headers={"X-Jetserve-Route-Key": key},
                )
            assert r.status_code == 200, r.text
            model: str = r.json()["model"]
            return model

        for url in bridges:
            keys = [uuid.uuid4().hex for _ in range(500)]
            keyed = await post_many(
                f"{url}/v1/chat/completions",
                [chat_body(served)] * len(keys),
                [{"X-Jetserve-Route-Key": k} for k in keys],
            )
            assert all(status == 200 for status, _ in keyed), keyed[:3]
            assert [body["model"] for _, body in keyed] == [plan.choose(k) for k in keys]

        for url in bridges:  # 10,000 requests with distinct ids on each bridge: 90/10 +- 1
            unkeyed = await post_many(f"{url}/v1/chat/completions", [chat_body(served)] * 10_000)
            assert all(status == 200 for status, _ in unkeyed), unkeyed[:3]
            # With no sticky key a request is routed by its id.
            answered = [(b["id"].removeprefix("chatcmpl-"), b["model"]) for _, b in unkeyed]
            assert len({rid for rid, _ in answered}) == 10_000
            assert all(model == plan.choose(rid) for rid, model in answered)
            share = Counter(model for _, model in answered)[v2] / len(answered)
            assert abs(share - 0.10) <= 0.01, share
        # The body's sticky keys come before the header.
        got = await one(bridges[0], "header-key", user="alice")
        assert got == plan.choose("alice")
        got = await one(bridges[1], "header-key", user="alice", safety_identifier="s-1")
        assert got == plan.choose("s-1")
        # Responses: a served name by its `user` (or the header); a concrete one unrouted.
        for model, extra, expected in (
            (served, {"user": "alice"}, plan.choose("alice")),
            (v2, {"user": "alice"}, v2),
        ):
            r = await http.post(
                f"{bridges[0]}/v1/responses",
                json={"model": model, "input": "hi", "store": False, **extra},
                headers={"X-Jetserve-Route-Key": "header-key"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"] == expected


async def test_weights_changed_under_load_reach_both_bridges_within_a_second(
    nats_server: NatsServer, inproc_worker: Any, bridge_on: Callable[..., str]
) -> None:
    v1, v2, served, bridges = await two_versions(nats_server, inproc_worker, bridge_on)
    steps = [
        Route(served, [Target(v1, 90), Target(v2, 10)]),
        Route(served, [Target(v1, 50), Target(v2, 50)]),
        Route(served, [Target(v1, 0), Target(v2, 100)]),
    ]
    await put(nats_server.url, steps[0])
    rate_per_s, step_s = 200, 20 / 3  # the load: 200 requests a second for 20 s
    #: (sent at, answered at, bridge, key, status, model)
    sent: list[tuple[float, float, str, str, int, str]] = []
    changed_at: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:

        async def one(url: str, key: str) -> None:
            at = time.monotonic()
            r = await http.post(
                f"{url}/v1/chat/completions",
                json=chat_body(served),
                headers={"X-Jetserve-Route-Key": key},
            )
            model = r.json().get("model", "") if r.status_code == 200 else ""
            sent.append((at, time.monotonic(), url, key, r.status_code, model))

        async def change() -> None:
            for route in steps[1:]:
                await asyncio.sleep(step_s)
                await put(nats_server.url, route)
                changed_at.append(time.monotonic())  # stored

        changer = asyncio.create_task(change())
        tasks = []
        start = time.monotonic()
        for i in range(int(rate_per_s * step_s * len(steps))):
            await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
            url = bridges[i % 2]
            tasks.append(asyncio.create_task(one(url, uuid.uuid4().hex)))
        await changer
        await asyncio.gather(*tasks)
    assert [s[4] for s in sent] == [200] * len(sent)  # no request failed
    plans = [Plan(r) for r in steps]
    bounds = [float("-inf"), *changed_at, float("inf")]
    for url in bridges:
        for step, plan in enumerate(plans):
            # Sent 1 s or more after this change was stored, answered before the next one.
            start_new = bounds[step] + (1.0 if step else 0.0)
            window = [
                s for s in sent if s[2] == url and s[0] >= start_new and s[1] < bounds[step + 1]
            ]
            assert len(window) > 20, (url, step, len(window))
            assert all(s[5] == plan.choose(s[3]) for s in window), (url, step)
