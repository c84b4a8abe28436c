"""A worker process's HTTP port: the metrics Prometheus scrapes, and the probes Kubernetes
calls (real nats-server, real worker process)."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import free_port
from producer.client import Client, make_request

pytestmark = pytest.mark.integration


def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


async def _get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_fetch, url)


async def _until(check: Any, timeout_s: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > end:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


def _sample(body: str, name: str, **labels: str) -> float | None:
    for line in body.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    return None


async def test_metrics_and_probes_of_a_worker_process(
    nc: NATS, model_name: str, start_worker: Any
) -> None:
    port, drain_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        model_name,
        "tests.models:SlowModel",
        options={"capacity": 2},
        JETSERVE_WORKER_METRICS_PORT=str(port),
        JETSERVE_WORKER_DRAIN_PORT=str(drain_port),
        JETSERVE_QUEUE_POLL_S="0.2",
    )

    async def ready() -> bool:
        return await _get(f"{base}/readyz") == (200, "ready\n")

    await _until(ready)
    assert await _get(f"{base}/healthz") == (200, "ok\n")

    # 6 requests of 1.5 s on a worker that holds 2: 2 in flight, 4 waiting in the stream.
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 1.5}) for _ in range(6)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]

    async def queue_seen() -> str | None:
        _, body = await _get(f"{base}/metrics")
        q = {"model": model_name, "consumer": "online"}
        waiting = _sample(body, "jetserve_queue_pending", **q)
        held = _sample(body, "jetserve_queue_ack_pending", **q)
        return body if (waiting, held) == (4.0, 2.0) else None

    body = await _until(queue_seen)
    assert _sample(body, "jetserve_worker_capacity", model=model_name) == 2.0
    assert _sample(body, "jetserve_queue_pending", model=model_name, consumer="batch") == 0.0

    await asyncio.wait_for(asyncio.gather(*pending), 60)
    _, body = await _get(f"{base}/metrics")
    m = {"model": model_name}
    assert _sample(body, "jetserve_worker_requests_total", outcome="ok", **m) == 6.0
    assert _sample(body, "jetserve_worker_queue_time_seconds_count", **m) == 6.0
    assert _sample(body, "jetserve_worker_e2e_request_latency_seconds_count", **m) == 6.0
    assert _sample(body, "jetserve_worker_e2e_request_latency_seconds_sum", **m) >= 6 * 1.5  # type: ignore[operator]
    # Defined for the engine to set; an SDK model leaves them without samples.
    for name in (
        "jetserve_worker_num_requests_running",
        "jetserve_worker_num_requests_waiting",
        "jetserve_worker_kv_cache_usage_ratio",
        "jetserve_worker_time_to_first_token_seconds",
        "jetserve_worker_inter_token_latency_seconds",
        "jetserve_worker_prompt_tokens",
        "jetserve_worker_generation_tokens",
        "jetserve_worker_errors",
    ):
        assert f"# HELP {name}" in body, name

    # The preStop hook: /drain, on the loopback-only port (not on the port other pods reach),
    # stops pulling; the process exits cleanly.
    assert (await _get(f"{base}/drain"))[0] == 404
    assert await _get(f"http://127.0.0.1:{drain_port}/drain") == (202, "draining\n")
    assert await asyncio.to_thread(worker.wait, 30) == 0
    await client.close()
