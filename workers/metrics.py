"""Worker metrics, defined once. Label sets are fixed: `model`, plus `outcome`/`code` where
named. Names follow the Prometheus/vLLM style (`jetserve_worker_*`, base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.requests = Counter(
            "jetserve_worker_requests",
            "Requests finished, by outcome (ok, error, retry, dead_letter, handed_back)",
            ["model", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "jetserve_worker_errors", "Error results sent, by code", ["model", "code"], registry=r
        )
        self.queue_time = Histogram(
            "jetserve_worker_queue_time_seconds",
            "Stored in JetStream -> taken by a worker",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "jetserve_worker_time_to_first_token_seconds",
            "Created -> first output token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "jetserve_worker_inter_token_latency_seconds",
            "Mean time per output token after the first",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
            registry=r,
        )
        self.e2e = Histogram(
            "jetserve_worker_e2e_request_latency_seconds",
            "Created -> final result sent",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "jetserve_worker_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "jetserve_worker_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "jetserve_worker_requests_in_flight",
            "Messages held by this worker",
            ["model"],
            registry=r,
        )
        self.capacity = Gauge(
            "jetserve_worker_capacity", "Requests this worker can hold", ["model"], registry=r
        )
