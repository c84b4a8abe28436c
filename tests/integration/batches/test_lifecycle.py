"""Cancel, expiry, and the scheduler's own restart (and a standby taking over) mid-batch."""

from __future__ import annotations

import io
import signal
import time
from collections import Counter

import httpx
import pytest

from .conftest import ECHO, SLOW, BatchStack, chat_line, jsonl, read_lines, wait_batch

pytestmark = [pytest.mark.integration, pytest.mark.serial]


def _submit(stack: BatchStack, lines: list[dict[str, object]], window: str = "24h") -> str:
    client = stack.sdk()
    uploaded = client.files.create(file=("b.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    ).id


def _wait_completed_at_least(stack: BatchStack, batch_id: str, n: int) -> None:
    client = stack.sdk()
    end = time.monotonic() + 30
    while True:
        counts = client.batches.retrieve(batch_id).request_counts
        if counts is not None and counts.completed >= n:
            return
        assert time.monotonic() < end, "the batch made no progress"
        time.sleep(0.05)


def test_cancel_stops_dispatch_and_keeps_partial_results(batch_stack: BatchStack) -> None:
    # 4 slots, 0.2 s each: 150 items would take 7.5 s; 64 (the window) are in flight at once.
    lines = [chat_line(f"c{i}", SLOW, "sleep 0.2") for i in range(150)]
    batch_id = _submit(batch_stack, lines)
    client = batch_stack.sdk()
    _wait_completed_at_least(batch_stack, batch_id, 4)
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    done = wait_batch(client, batch_id, {"cancelled"}, timeout_s=30)
    assert done.cancelled_at is not None
    counts = done.request_counts
    assert counts is not None
    assert counts.total == 150
    assert 4 <= counts.completed < 150
    out = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    assert len(out) == counts.completed
    assert all(
        line["response"]["body"]["choices"][0]["message"]["content"] == "slept 0.2" for line in out
    )
    # Every item is accounted for once: a result, a cancelled-in-flight error, or never run.
    ids = Counter(line["custom_id"] for line in out + errors)
    assert set(ids) == {f"c{i}" for i in range(150)}
    assert set(ids.values()) == {1}
    never_ran = [e for e in errors if e["response"] is None]
    assert never_ran
    assert all(e["error"]["code"] == "batch_cancelled" for e in never_ran)
    # Cancelling again is a no-op; an ended batch cannot be cancelled.
    assert client.batches.cancel(batch_id).status == "cancelled"


def test_expiry_keeps_completed_work(batch_stack: BatchStack) -> None:
    lines = [chat_line(f"e{i}", SLOW, "sleep 0.2") for i in range(80)]
    batch_id = _submit(batch_stack, lines, window="2s")
    client = batch_stack.sdk()
    done = wait_batch(client, batch_id, {"expired", "completed"}, timeout_s=30)
    assert done.status == "expired"
    assert done.expired_at is not None
    counts = done.request_counts
    assert counts is not None
    assert 0 < counts.completed < 80
    out = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    assert len(out) == counts.completed
    expired = [e for e in errors if e["error"] and e["error"]["code"] == "batch_expired"]
    assert expired
    assert expired[0]["response"] is None
    assert len({line["custom_id"] for line in out + errors}) == 80


def test_scheduler_restart_mid_batch_completes_every_item_once(batch_stack: BatchStack) -> None:
    """SIGKILL the active scheduler mid-batch with a standby waiting: the standby takes the
    lock, resumes at the cursor, re-collects results; every item is completed exactly once."""
    active = batch_stack.schedulers[-1]
    metrics = f"http://127.0.0.1:{batch_stack.metrics_port}"
    assert httpx.get(f"{metrics}/readyz", timeout=30).text.strip() == "active"
    waiting = batch_stack.scheduler_log().count("standing by")
    standby = batch_stack.start_scheduler(JETSERVE_SCHEDULER_METRICS_PORT="0")
    end = time.monotonic() + 30
    while batch_stack.scheduler_log().count("standing by") == waiting:
        assert standby.poll() is None, "the standby exited"
        assert time.monotonic() < end, "the standby did not start"
        time.sleep(0.1)
    lines = [chat_line(f"r{i}", ECHO, f"item {i}") for i in range(3000)]
    batch_id = _submit(batch_stack, lines)
    _wait_completed_at_least(batch_stack, batch_id, 300)
    exported = httpx.get(f"{metrics}/metrics", timeout=30).text
    assert "jetserve_scheduler_active 1.0" in exported
    for name in (
        "jetserve_batch_items",
        "jetserve_batches",
        "jetserve_scheduler_results_total",
        "jetserve_webhook_deliveries_total",
        "jetserve_batch_items_dispatched_total",
    ):
        assert name in exported, name
    active.send_signal(signal.SIGKILL)
    active.wait(10)
    killed = time.monotonic()
    client = batch_stack.sdk()
    done = wait_batch(client, batch_id, {"completed", "failed"}, timeout_s=90)
    assert done.status == "completed"
    # The results the killed scheduler had been sent and not stored come back after the
    # consumers' ack_wait (10 s by default; 30 s before, and this took 30 s).
    recovered_s = time.monotonic() - killed
    assert recovered_s < 25, recovered_s
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (3000, 3000, 0)
    out = read_lines(client, done.output_file_id)
    ids = Counter(line["custom_id"] for line in out)
    assert len(ids) == 3000
    assert set(ids.values()) == {1}
    for line in out:
        i = line["custom_id"][1:]
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"item {i}"
    assert standby.poll() is None
    assert "holding the scheduler lock: active" in batch_stack.scheduler_log()
