"""Webhook delivery against hostile receivers (raw servers on 127.0.0.1) and hostile stored
URLs, with the real deliverer on a real PostgreSQL: whatever one tenant's endpoint does, the
pass ends in bounded time, that delivery is recorded, and another tenant's webhook in the same
pass is delivered."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from scheduler import urlguard
from scheduler.metrics import SchedulerMetrics
from scheduler.store import webhooks as wh
from scheduler.webhooks import DeliverySettings, RetryPolicy, WebhookDeliverer

from .batches.conftest import Receiver
from .hostile import RawReceiver, gzip_bomb, status, trickle

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0


@pytest.fixture
async def pool(store_pool: asyncpg.Pool) -> asyncpg.Pool:
    return store_pool


@pytest.fixture
def good() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def deliverer(pool: asyncpg.Pool, *, allow_private: bool = True) -> WebhookDeliverer:
    return WebhookDeliverer(
        pool,
        SchedulerMetrics(),
        DeliverySettings(
            RetryPolicy(period_s=3600, base_s=0.1, max_s=0.1),
            timeout_s=TIMEOUT_S,
            allow_private=allow_private,
        ),
    )


async def hook(pool: asyncpg.Pool, tenant: str, url: str) -> None:
    """A tenant's endpoint and one event for it (stored as given: rows written before URLs
    were normalised at registration look like this)."""
    await wh.create_endpoint(pool, tenant, url, ["batch.completed"])
    assert await wh.enqueue(pool, tenant, wh.EventType.BATCH_COMPLETED, {"id": tenant}) == 1


async def state(pool: asyncpg.Pool, tenant: str) -> dict[str, Any]:
    rows = await wh.deliveries(pool, tenant)
    assert len(rows) == 1
    return rows[0]


async def run_pass(d: WebhookDeliverer, bound_s: float) -> float:
    """Start the due attempts and wait until each is recorded."""
    started = time.monotonic()

    async def once() -> None:
        await d.run_once()
        await d.idle()

    await asyncio.wait_for(once(), bound_s)
    return time.monotonic() - started


async def test_a_trickling_receiver_cannot_stall_the_pass(
    pool: asyncpg.Pool, good: Receiver
) -> None:
    """One byte every 0.3 s never trips a per-read timeout of 1 s; the attempt's overall
    deadline ends it after 1 s, and the other tenant is delivered in the same pass."""
    slow = RawReceiver(trickle(0.3, for_s=30))
    try:
        await hook(pool, "hostile", slow.url())
        await hook(pool, "other", good.url)
        d = deliverer(pool)
        started = time.monotonic()
        await asyncio.wait_for(d.run_once(), 10)
        while not good.posts:  # the other tenant does not wait for the slow attempt
            assert time.monotonic() - started < TIMEOUT_S / 2
            await asyncio.sleep(0.01)
        await asyncio.wait_for(d.idle(), 10)
        assert time.monotonic() - started < 5
        hostile = await state(pool, "hostile")
        assert hostile["state"] == "pending"
        assert hostile["attempts"] == 1
        assert "no response within" in hostile["last_error"]
        assert (await state(pool, "other"))["state"] == "delivered"
        assert len(good.posts) == 1
        await d.close()
    finally:
        slow.close()


async def test_a_gzip_bomb_costs_no_memory(pool: asyncpg.Pool, good: Receiver) -> None:
    """A 200 whose gzip body expands to 256 MiB: acknowledged on its status alone, the body
    neither read nor decompressed (the peak of Python allocations stays far below it)."""
    bomb = RawReceiver(gzip_bomb(256 * 1024 * 1024))
    try:
        await hook(pool, "hostile", bomb.url())
        await hook(pool, "other", good.url)
        d = deliverer(pool)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            await run_pass(d, bound_s=30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
        assert (await state(pool, "hostile"))["state"] == "delivered"
        assert (await state(pool, "other"))["state"] == "delivered"
    finally:
        bomb.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a\tb", "http://127.0.0.1:9/\r\nx: y"])
async def test_a_stored_url_the_client_refuses_is_recorded_not_retried_forever(
    pool: asyncpg.Pool, good: Receiver, url: str
) -> None:
    """A URL with a tab or CR/LF (stored before registration refused them) makes the HTTP
    client raise: that attempt is recorded as failed, and the other tenant's delivery of the
    same pass is not rolled back with it."""
    await hook(pool, "hostile", url)
    await hook(pool, "other", good.url)
    d = deliverer(pool)
    await run_pass(d, bound_s=10)
    hostile = await state(pool, "hostile")
    assert hostile["attempts"] == 1
    assert hostile["state"] == "pending"
    assert hostile["last_error"]
    assert (await state(pool, "other"))["state"] == "delivered"
    assert len(good.posts) == 1


async def test_attempts_are_recorded_each_on_its_own(pool: asyncpg.Pool, good: Receiver) -> None:
    """A receiver answering 500 and one that is refused are recorded; a delivery whose
    recording happens later is not held by a transaction over the whole pass."""
    failing = RawReceiver(status(500))
    try:
        await hook(pool, "hostile", failing.url())
        await hook(pool, "other", good.url)
        await run_pass(deliverer(pool), bound_s=10)
        hostile = await state(pool, "hostile")
        assert (hostile["state"], hostile["last_status"], hostile["attempts"]) == (
            "pending",
            500,
            1,
        )
        assert (await state(pool, "other"))["state"] == "delivered"
    finally:
        failing.close()


async def test_the_connection_goes_to_the_address_that_was_checked(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name answers a permitted address when checked and an internal one
    after. The POST goes to the checked address (127.0.0.1 stands for a public one here,
    127.0.0.2 for the inside of the network)."""
    public = RawReceiver(status(200), host="127.0.0.1")
    inside = socket.create_server(("127.0.0.2", public.port))
    inside.settimeout(3)
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.2"])
    loop = asyncio.get_running_loop()

    async def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    monkeypatch.setattr(urlguard, "is_internal", lambda a: a == "127.0.0.2")
    accepted: list[bool] = []

    def watch_inside() -> None:
        try:
            conn, _ = inside.accept()
            conn.close()
            accepted.append(True)
        except OSError:
            pass

    watcher = asyncio.create_task(asyncio.to_thread(watch_inside))
    try:
        await hook(pool, "hostile", public.url(host="rebind.test"))
        await run_pass(deliverer(pool, allow_private=False), bound_s=10)
        await watcher
        assert accepted == []
        assert public.requests == 1
        assert (await state(pool, "hostile"))["state"] == "delivered"
    finally:
        public.close()
        inside.close()
