"""`service_tier` end to end: the queue each tier waits in, and the tier each response reports.

The model (`SlowChatModel`, 8 slots, its own worker) sleeps a fixed time per request, so
latency here is about scheduling, not CPU: 50 ms for the requests measured, 250 ms for the
background load. That load, 64 clients each sending its next request as soon as the last is
answered, keeps every slot its tier may use busy and a backlog of about 56 requests in that
tier's queue. Its longer service time keeps its rate low (about 30 requests a second), so the
backlog forms even on a busy 2-core machine: at 50 ms the load needed 160 requests a second
through the bridge, and under CPU contention the clients could not keep the queue full.

- `priority` under a `default` backlog: without its own queue a priority request would wait
  behind that backlog, about 56 / 7 x 250 ms = 2 s. Bound: median within 1.5x of the
  median on the idle model.
- `default` under a `flex` backlog: bounded as the batch priority test bounds online work
  under a batch (median + half a service time, p90 + one service time).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest

from schemas import names
from schemas.names import Priority

from ...conftest import wait_for_workers
from .conftest import BatchStack, bridge_gauge

pytestmark = [pytest.mark.integration, pytest.mark.serial]

TIERS = "b-tiers"
SERVICE_S = 0.05
LOAD_SERVICE_S = 0.25
SAMPLES = 30
LOAD_CLIENTS = 64


@pytest.fixture(scope="module")
def tiers(batch_stack: BatchStack) -> Iterator[BatchStack]:
    proc = batch_stack.start_worker(TIERS, "tests.models:SlowChatModel", "capacity=8")

    async def ready() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            await wait_for_workers(nc, TIERS, 1, timeout_s=60)
        finally:
            await nc.close()

    asyncio.run(ready())
    yield batch_stack
    proc.terminate()
    proc.wait(20)


def _body(tier: str | None, text: str = f"sleep {SERVICE_S}") -> dict[str, Any]:
    body: dict[str, Any] = {"model": TIERS, "messages": [{"role": "user", "content": text}]}
    if tier is not None:
        body["service_tier"] = tier
    return body


def _headers(stack: BatchStack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.keys['alpha']}"}


def _latencies(stack: BatchStack, tier: str | None, samples: int = SAMPLES) -> list[float]:
    out = []
    with httpx.Client(base_url=stack.v1, headers=_headers(stack), timeout=30) as client:
        client.post("/chat/completions", json=_body(tier)).raise_for_status()  # warm
        for _ in range(samples):
            start = time.perf_counter()
            response = client.post("/chat/completions", json=_body(tier))
            out.append(time.perf_counter() - start)
            response.raise_for_status()
            assert response.json()["service_tier"] == (tier or "default")
    return sorted(out)


class _Load:
    """`LOAD_CLIENTS` clients sending `tier` requests back to back, on their own thread."""

    def __init__(self, stack: BatchStack, tier: str) -> None:
        self.stack, self.tier = stack, tier
        self.done = 0
        self.reported: set[str] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            body = _body(self.tier, f"sleep {LOAD_SERVICE_S}")
            response = await http.post("/chat/completions", json=body)
            if response.status_code != 200:
                self.errors.append(response.text[:200])
                return
            self.reported.add(response.json()["service_tier"])
            self.done += 1

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=LOAD_CLIENTS)
        async with httpx.AsyncClient(
            base_url=self.stack.v1, headers=_headers(self.stack), timeout=60, limits=limits
        ) as http:
            await asyncio.gather(*[self._client(http) for _ in range(LOAD_CLIENTS)])

    def __enter__(self) -> _Load:
        self._thread.start()
        end = time.monotonic() + 30
        while self.done < 2 * LOAD_CLIENTS:  # the backlog has formed and is being served
            assert not self.errors, self.errors
            assert time.monotonic() < end, "the load did not start"
            time.sleep(0.05)
        return self

    def pending(self, priority: Priority) -> int:
        async def read() -> int:
            nc = await nats.connect(self.stack.nats_url)
            try:
                info = await nc.jetstream().consumer_info(
                    names.stream_name(TIERS), names.consumer_name(priority)
                )
                return int(info.num_pending)
            finally:
                await nc.close()

        return asyncio.run(read())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self.errors, self.errors


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9) - 1]


def _report(name: str, alone: list[float], busy: list[float]) -> str:
    return (
        f"{name} alone: median {statistics.median(alone) * 1000:.1f} ms "
        f"p90 {_p90(alone) * 1000:.1f} ms; busy: median {statistics.median(busy) * 1000:.1f} "
        f"ms p90 {_p90(busy) * 1000:.1f} ms"
    )


def test_priority_is_not_delayed_by_a_default_backlog(tiers: BatchStack) -> None:
    alone = _latencies(tiers, "priority")
    with _Load(tiers, "default") as load:
        busy = _latencies(tiers, "priority")
        # The control: a default request waits behind the backlog the priority ones skip.
        behind = _latencies(tiers, "default", samples=3)
        # The default backlog waits in the stream, or in the bridge's window (fair share).
        backlog = load.pending(Priority.ONLINE) + int(
            bridge_gauge(tiers.url, "jetserve_online_window_waiting", TIERS)
        )
    report = (
        _report("priority", alone, busy)
        + f"; default meanwhile: median {statistics.median(behind) * 1000:.1f} ms"
        + f"; default backlog at the end: {backlog}"
    )
    print(report)
    assert backlog >= LOAD_CLIENTS // 2, "the default backlog was gone: " + report
    assert statistics.median(behind) >= 3 * statistics.median(alone), report
    assert load.reported == {"default"}
    assert statistics.median(busy) <= 1.5 * statistics.median(alone), report


def test_flex_yields_to_default(tiers: BatchStack) -> None:
    alone = _latencies(tiers, None)
    with _Load(tiers, "flex") as load:
        busy = _latencies(tiers, None)
        backlog = load.pending(Priority.BATCH)
        served_during = load.done
    report = (
        _report("default", alone, busy)
        + f"; flex backlog at the end: {backlog}; load errors: {load.errors[:3]}"
    )
    print(report)
    assert backlog >= LOAD_CLIENTS // 2, "the flex backlog was gone: " + report
    assert load.reported == {"flex"}
    assert served_during > 2 * LOAD_CLIENTS  # flex work went on beside it
    assert statistics.median(busy) <= statistics.median(alone) + SERVICE_S / 2, report
    assert _p90(busy) <= _p90(alone) + SERVICE_S, report


# -- what each tier reports, through the official SDK --------------------------------------


@pytest.mark.parametrize(
    ("asked", "reported"),
    [
        (None, "default"),
        ("auto", "default"),
        ("default", "default"),
        ("flex", "flex"),
        ("priority", "priority"),
        ("scale", "default"),  # an OpenAI tier jetserve lacks: served as default
    ],
)
def test_the_sdk_reads_back_the_tier_that_served(
    tiers: BatchStack, asked: str | None, reported: str
) -> None:
    client = tiers.sdk()
    extra: dict[str, Any] = {} if asked is None else {"service_tier": asked}
    chat = client.chat.completions.create(
        model=TIERS, messages=[{"role": "user", "content": "hello"}], **extra
    )
    assert chat.service_tier == reported
    assert chat.choices[0].message.content == "hello"
    # The SDK's legacy completions have no `service_tier` argument: sent as an extra field.
    text = client.completions.create(model=TIERS, prompt="hi there", extra_body=extra)
    assert text.model_extra is not None
    assert text.model_extra["service_tier"] == reported
    assert text.choices[0].text == "hi there"
    chunks = list(
        client.chat.completions.create(
            model=TIERS, messages=[{"role": "user", "content": "streamed"}], stream=True, **extra
        )
    )
    assert chunks
    assert {c.service_tier for c in chunks} == {reported}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed"


@pytest.mark.parametrize("value", ["turbo", "", 5, ["priority"], {"tier": "flex"}])
def test_a_bad_service_tier_is_refused_naming_the_param(tiers: BatchStack, value: Any) -> None:
    with httpx.Client(base_url=tiers.v1, headers=_headers(tiers), timeout=30) as client:
        for path, body in (
            ("/chat/completions", {**_body(None, "x"), "service_tier": value}),
            ("/completions", {"model": TIERS, "prompt": "x", "service_tier": value}),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "service_tier", error
            assert error["type"] == "invalid_request_error"
