"""Tenants share a saturated model's online slots fairly (producer/online_share.py).

The model (`SlowChatModel`, 8 slots, its own worker) sleeps a fixed 200 ms a request (40 a
second). Tenant beta sends one request at a time; its median latency is measured alone, then
while tenant alpha sends open-loop at ten times beta's rate alone (more than the model
serves: its backlog grows for as long as it sends). In arrival order beta's request would wait
behind alpha's whole backlog in the stream; with the bridge's window, alpha's backlog waits in
the bridge, in alpha's own queue, and beta's request takes the next slot that frees. Bound (the
issue's): beta's median at most 2x its median alone. The control, through a second bridge with
fair share off, shows the starvation the window prevents.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import nats
import pytest

from ...conftest import wait_for_workers
from .conftest import BatchStack, bridge_gauge

pytestmark = pytest.mark.integration

FAIR = "b-fair"
SERVICE_S = 0.2
SAMPLES = 15


@pytest.fixture(scope="module")
def fair(batch_stack: BatchStack) -> Iterator[BatchStack]:
    proc = batch_stack.start_worker(FAIR, "tests.models:SlowChatModel", "capacity=8")

    async def ready() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            await wait_for_workers(nc, FAIR, 1, timeout_s=60)
        finally:
            await nc.close()

    asyncio.run(ready())
    yield batch_stack
    proc.terminate()
    proc.wait(20)


def _body() -> dict[str, Any]:
    return {"model": FAIR, "messages": [{"role": "user", "content": f"sleep {SERVICE_S}"}]}


def _latencies(url: str, key: str, samples: int) -> list[float]:
    out = []
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"{url}/v1", headers=headers, timeout=60) as client:
        client.post("/chat/completions", json=_body()).raise_for_status()  # warm
        for _ in range(samples):
            start = time.perf_counter()
            client.post("/chat/completions", json=_body()).raise_for_status()
            out.append(time.perf_counter() - start)
    return out


class _Flood:
    """Tenant alpha's requests, open loop at `rate_per_s`, on their own thread."""

    def __init__(self, url: str, key: str, rate_per_s: float) -> None:
        self.url, self.key, self.rate_per_s = url, key, rate_per_s
        self.sent = 0
        self.done = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _one(self, http: httpx.AsyncClient) -> None:
        try:
            response = await http.post("/chat/completions", json=_body())
        except httpx.HTTPError as exc:  # stopped: the client closed under it
            if not self._stop.is_set():
                self.errors.append(repr(exc))
            return
        if response.status_code != 200:
            self.errors.append(response.text[:200])
        self.done += 1

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        headers = {"authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(
            base_url=f"{self.url}/v1", headers=headers, timeout=120, limits=limits
        ) as http:
            tasks = set()
            start = time.monotonic()
            while not self._stop.is_set():
                task = asyncio.create_task(self._one(http))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                await asyncio.sleep(
                    max(0.0, start + self.sent / self.rate_per_s - time.monotonic())
                )
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> _Flood:
        self._thread.start()
        time.sleep(3.0)  # a backlog forms: the model serves 40 a second, alpha sends more
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self.errors, self.errors[:3]


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def test_a_flooding_tenant_does_not_starve_another(
    fair: BatchStack, bridge_on: Callable[..., str]
) -> None:
    beta = fair.keys["beta"]
    alone = _latencies(fair.url, beta, SAMPLES)
    # Ten times beta's rate, and at least 1.25x what the model serves (on a busy machine
    # beta's median grows, and alpha must still saturate the model).
    rate = max(10 / statistics.median(alone), 1.25 * 8 / SERVICE_S)
    with _Flood(fair.url, fair.keys["alpha"], rate) as flood:
        busy = _latencies(fair.url, beta, SAMPLES)
        served = flood.done
        waiting = bridge_gauge(fair.url, "jetserve_online_window_waiting", FAIR)
    report = (
        f"beta alone: median {_median_ms(alone):.0f} ms; beside alpha at {rate:.0f}/s: median "
        f"{_median_ms(busy):.0f} ms (max {max(busy) * 1000:.0f}); alpha served {served}, "
        f"waiting in the bridge at the end {waiting:.0f}"
    )
    print(report)
    assert waiting >= 8, "alpha's flood did not saturate the model: " + report
    assert statistics.median(busy) <= 2 * statistics.median(alone), report

    # The control: the same flood through a bridge without the window.
    unfair = bridge_on(fair.nats_url, **{**fair.bridge_env, "JETSERVE_ONLINE_FAIR_SHARE": "off"})
    with _Flood(unfair, fair.keys["alpha"], rate):
        starved = _latencies(unfair, beta, 3)
    control = f"without fair share: beta's median {_median_ms(starved):.0f} ms"
    print(control)
    assert statistics.median(starved) > 3 * statistics.median(alone), report + "; " + control
