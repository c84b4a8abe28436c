"""Worker metrics, defined once. Label sets are fixed: `model`, plus `outcome`/`code`/`consumer`
where named. Names follow the Prometheus/vLLM style (`jetserve_worker_*`, base units).

Who sets what: the handler sets the request counters and latency histograms; the worker sets
in-flight, capacity and the queue gauges; the engine adapter sets the running/waiting/KV-cache
gauges (an SDK model has no such state and leaves them unset).

What the handler updates for every request is kept by `loop_metrics` (plain numbers, read at
scrape time): updated from the event loop thread only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from workers.loop_metrics import LoopCounter, LoopHistogram

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
#: Time per output token: finer, and lower, than the request latencies.
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r

        def latency(
            name: str, documentation: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS
        ) -> LoopHistogram:
            """Seconds, by model."""
            return LoopHistogram(name, documentation, ["model"], buckets=buckets, registry=r)

        self.requests = LoopCounter(
            "jetserve_worker_requests",
            "Requests finished, by outcome (ok, error, retry, dead_letter, handed_back)",
            ["model", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "jetserve_worker_errors", "Error results sent, by code", ["model", "code"], registry=r
        )
        self.queue_time = latency(
            "jetserve_worker_queue_time_seconds", "Stored in JetStream -> taken by a worker"
        )
        self.ttft = latency(
            "jetserve_worker_time_to_first_token_seconds", "Created -> first output token"
        )
        self.tpot = latency(
            "jetserve_worker_inter_token_latency_seconds",
            "Mean time per output token after the first",
            _TOKEN_BUCKETS,
        )
        self.e2e = latency(
            "jetserve_worker_e2e_request_latency_seconds", "Created -> final result sent"
        )
        self.prompt_tokens = LoopCounter(
            "jetserve_worker_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generation_tokens = LoopCounter(
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
        # Engine state, set by the engine adapter each step (vLLM's num_requests_running /
        # num_requests_waiting / kv_cache_usage_perc).
        self.num_running = Gauge(
            "jetserve_worker_num_requests_running",
            "Sequences in the engine's running batch",
            ["model"],
            registry=r,
        )
        self.num_waiting = Gauge(
            "jetserve_worker_num_requests_waiting",
            "Sequences held by the engine but not yet scheduled",
            ["model"],
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "jetserve_worker_kv_cache_usage_ratio",
            "Fraction of the KV-cache budget in use (0-1)",
            ["model"],
            registry=r,
        )
        self.kv_blocks_used = Gauge(
            "jetserve_worker_kv_cache_blocks_used",
            "KV-cache blocks held by running sequences",
            ["model"],
            registry=r,
        )
        self.kv_blocks_total = Gauge(
            "jetserve_worker_kv_cache_blocks_total",
            "KV-cache blocks of the engine",
            ["model"],
            registry=r,
        )
        # vLLM's prefix_cache_queries / prefix_cache_hits, in prompt tokens.
        self.prefix_cache_queries = Counter(
            "jetserve_worker_prefix_cache_queries_tokens",
            "Prompt tokens looked up in the prefix cache",
            ["model"],
            registry=r,
        )
        self.prefix_cache_hits = Counter(
            "jetserve_worker_prefix_cache_hits_tokens",
            "Prompt tokens found in the prefix cache",
            ["model"],
            registry=r,
        )
        # The model's JetStream consumers as the server reports them (consumer info), polled by
        # the worker. Every replica exports the same values: aggregate with max, not sum.
        # `pending + ack_pending` is exactly the lag KEDA's nats-jetstream scaler sees.
        self.queue_pending = Gauge(
            "jetserve_queue_pending",
            "Messages in the model's stream not yet delivered to any worker (consumer num_pending)",
            ["model", "consumer"],
            registry=r,
        )
        self.queue_ack_pending = Gauge(
            "jetserve_queue_ack_pending",
            "Messages delivered and not yet acknowledged (consumer num_ack_pending)",
            ["model", "consumer"],
            registry=r,
        )
