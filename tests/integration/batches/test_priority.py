"""Batch work yields to online traffic.

The model (`SlowChatModel`, 8 slots) sleeps a fixed 50 ms per request, so latency here is
about scheduling, not CPU. Online requests (the synchronous HTTP endpoint, one at a time) are
timed alone, then again while a 2,000-item batch keeps every slot the online traffic leaves
free busy. The bound: the median with the batch running is at most the median alone plus
25 ms (half a service time), and the 90th percentile at most the 90th alone plus 50 ms (one
service time). Without priority an online request would wait behind the batch's queue: 64
items in flight over 8 slots, about 400 ms.
"""

from __future__ import annotations

import io
import statistics
import time

import httpx
import pytest

from .conftest import PRIO, BatchStack, chat_line, jsonl, wait_batch

pytestmark = pytest.mark.integration

SERVICE_S = 0.05
SAMPLES = 30


def _online_latencies(stack: BatchStack) -> list[float]:
    headers = {"authorization": f"Bearer {stack.keys['alpha']}"}
    body = {"model": PRIO, "messages": [{"role": "user", "content": f"sleep {SERVICE_S}"}]}
    out = []
    with httpx.Client(base_url=stack.v1, headers=headers, timeout=30) as client:
        client.post("/chat/completions", json=body).raise_for_status()  # warm
        for _ in range(SAMPLES):
            start = time.perf_counter()
            response = client.post("/chat/completions", json=body)
            out.append(time.perf_counter() - start)
            response.raise_for_status()
    return sorted(out)


def _p90(values: list[float]) -> float:
    return values[int(len(values) * 0.9) - 1]


def test_online_latency_with_a_large_batch_running(batch_stack: BatchStack) -> None:
    alone = _online_latencies(batch_stack)
    client = batch_stack.sdk()
    lines = [chat_line(f"p{i}", PRIO, f"sleep {SERVICE_S}") for i in range(2000)]
    uploaded = client.files.create(file=("p.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    try:
        end = time.monotonic() + 20
        while True:  # until the batch fills the worker
            counts = client.batches.retrieve(batch.id).request_counts
            if counts is not None and counts.completed >= 50:
                break
            assert time.monotonic() < end, "the batch did not start"
            time.sleep(0.05)
        busy = _online_latencies(batch_stack)
        counts = client.batches.retrieve(batch.id).request_counts
        assert counts is not None
        assert counts.completed < 2000, "the batch ended before the measurement"
    finally:
        client.batches.cancel(batch.id)
    median_alone, median_busy = statistics.median(alone), statistics.median(busy)
    report = (
        f"online alone: median {median_alone * 1000:.1f} ms p90 {_p90(alone) * 1000:.1f} ms; "
        f"with the batch: median {median_busy * 1000:.1f} ms p90 {_p90(busy) * 1000:.1f} ms"
    )
    print(report)
    assert median_busy <= median_alone + SERVICE_S / 2, report
    assert _p90(busy) <= _p90(alone) + SERVICE_S, report
    wait_batch(client, batch.id, {"cancelled"}, timeout_s=30)
