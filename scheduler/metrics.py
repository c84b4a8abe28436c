"""Scheduler metrics, defined once, fixed label sets. Gauges of stored state (batches, items,
async requests, webhook deliveries) are read from Postgres by the active scheduler; standbys
export `jetserve_scheduler_active 0` and nothing else changes there."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.active = Gauge(
            "jetserve_scheduler_active", "1 while this replica holds the scheduler lock", registry=r
        )
        self.batches = Gauge(
            "jetserve_batches", "Batches by status (all stored batches)", ["status"], registry=r
        )
        self.batch_items = Gauge(
            "jetserve_batch_items",
            "Items of live batches by state (pending, in_flight, completed, failed)",
            ["state"],
            registry=r,
        )
        self.items_dispatched = Counter(
            "jetserve_batch_items_dispatched", "Batch items published to model streams", registry=r
        )
        self.results = Counter(
            "jetserve_scheduler_results",
            "Results stored, by kind (batch, async) and outcome (ok, error, duplicate)",
            ["kind", "outcome"],
            registry=r,
        )
        self.async_requests = Gauge(
            "jetserve_async_requests", "Async requests by status", ["status"], registry=r
        )
        self.webhook_deliveries = Counter(
            "jetserve_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, failed, dead, refused)",
            ["outcome"],
            registry=r,
        )
        self.webhook_outbox = Gauge(
            "jetserve_webhook_outbox", "Webhook deliveries by state", ["state"], registry=r
        )
        self.loop_duration = Histogram(
            "jetserve_scheduler_loop_duration_seconds",
            "Time of one pass of a scheduler loop",
            ["loop"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0),
            registry=r,
        )
