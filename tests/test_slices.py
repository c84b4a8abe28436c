"""The alternating-slices controller of the no-regression gates (`loadtest.slices`)."""

from __future__ import annotations

import os
import signal
import time

from prometheus_client import generate_latest

from loadtest.slices import _state, count_answered, start_stopped
from producer.http.metrics import BridgeMetrics


def test_a_lane_load_starts_stopped_and_runs_once_continued() -> None:
    proc = start_stopped(["sh", "-c", "echo ran"])
    try:
        time.sleep(0.2)
        assert _state(proc.pid) == "T"  # stopped before it did anything
        os.kill(proc.pid, signal.SIGCONT)
        out = proc.communicate(timeout=10)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == "ran\n"


def test_answered_counts_every_route_but_metrics_and_splits_failures() -> None:
    metrics = BridgeMetrics()
    metrics.requests.labels("/v1/chat/completions", "200").inc(5)
    metrics.requests.labels("other", "200").inc(2)  # /v1/responses
    metrics.requests.labels("/v1/chat/completions", "429").inc(1)
    metrics.requests.labels("/metrics", "200").inc(7)
    assert count_answered(generate_latest(metrics.registry).decode()) == (7, 1)
