"""The per-request metrics expose exactly what prometheus_client's own types would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from workers.loop_metrics import LoopCounter, LoopHistogram
from workers.metrics import WorkerMetrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
VALUES = (0.0, 0.001, 0.0015, 0.01, 0.5, 1.0, 3.0, 10.0, 11.0, 1e9)


def _samples(registry: CollectorRegistry) -> list[str]:
    """Exposition lines, without prometheus_client's `_created` timestamps."""
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_same_exposition_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("t_requests", "Requests", ["model", "outcome"], ours)
    histogram = LoopHistogram("t_latency_seconds", "Latency", ["model"], ours, BUCKETS)
    ref_counter = Counter("t_requests", "Requests", ["model", "outcome"], registry=theirs)
    ref_histogram = Histogram(
        "t_latency_seconds", "Latency", ["model"], buckets=BUCKETS, registry=theirs
    )
    for model in ("a", "b"):
        for value in VALUES:
            histogram.labels(model).observe(value)
            ref_histogram.labels(model).observe(value)
        counter.labels(model, "ok").inc()
        counter.labels(model, "ok").inc(2.5)
        ref_counter.labels(model, "ok").inc()
        ref_counter.labels(model, "ok").inc(2.5)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("t_latency_seconds_bucket", {"model": "a", "le": "0.01"}) == 4


def test_wrong_labels_and_negative_increments_are_refused() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("t_requests", "Requests", ["model", "outcome"], registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("m", "ok").inc(-1)


def test_worker_metrics_register_once_per_registry() -> None:
    metrics = WorkerMetrics()
    metrics.requests.labels("m", "ok").inc()
    metrics.e2e.labels("m").observe(0.02)
    assert (
        metrics.registry.get_sample_value(
            "jetserve_worker_requests_total", {"model": "m", "outcome": "ok"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "jetserve_worker_e2e_request_latency_seconds_count", {"model": "m"}
        )
        == 1
    )
