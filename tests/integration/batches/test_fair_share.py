"""Tenants' batches share a saturated model fairly.

The model (`SlowChatModel`, 8 slots) sleeps a fixed 50 ms per request (160 a second); the
scheduler keeps at most 64 items in flight for it. Tenant beta's 100-line batch is timed alone,
then again when it is created a second after tenant alpha's 1,000-line batch: with the window
split max-min fairly between the tenants, beta's items get the slots that free until the two
hold equal shares, so beta finishes within 3x its time alone (in arrival order it would wait
behind alpha's whole batch: about 6 s). Alpha's batch still completes.
"""

from __future__ import annotations

import io
import time

import openai
import pytest

from .conftest import PRIO, BatchStack, chat_line, jsonl, wait_batch

pytestmark = pytest.mark.integration

SLEEP = "sleep 0.05"


def _create(client: openai.OpenAI, prefix: str, lines: int) -> str:
    body = jsonl([chat_line(f"{prefix}{i}", PRIO, SLEEP) for i in range(lines)])
    uploaded = client.files.create(file=(f"{prefix}.jsonl", io.BytesIO(body)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def _run(client: openai.OpenAI, lines: int) -> float:
    start = time.monotonic()
    batch = wait_batch(client, _create(client, "b", lines), {"completed"}, timeout_s=60)
    assert batch.request_counts.completed == lines
    return time.monotonic() - start


def test_a_small_batch_is_not_stuck_behind_a_large_one(batch_stack: BatchStack) -> None:
    alpha, beta = batch_stack.sdk("alpha"), batch_stack.sdk("beta")
    alone = _run(beta, 100)
    big = _create(alpha, "a", 1000)
    time.sleep(1.0)
    beside = _run(beta, 100)
    report = f"beta's 100 lines: {alone:.2f} s alone, {beside:.2f} s beside alpha's 1,000"
    print(report)
    assert beside <= 3 * alone, report
    assert alpha.batches.retrieve(big).status == "in_progress", "alpha's ended too soon"
    done = wait_batch(alpha, big, {"completed"}, timeout_s=60)
    assert done.request_counts.completed == 1000
