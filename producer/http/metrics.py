"""Bridge metrics, defined once. Label sets are fixed: `route` is one of `ROUTES`
(anything else counts as `other`), `status` the HTTP status code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/bench/echo",
    "/bench/chat",
)

_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_BUCKETS += (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.registry = r
        self.requests = Counter(
            "jetserve_http_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "jetserve_http_request_duration_seconds",
            "Request received -> response finished (streams: until the last chunk)",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "jetserve_http_requests_in_flight", "Requests being answered", ["route"], registry=r
        )
        self._tenant_children: dict[tuple[str, bool], tuple[Any, Any]] = {}
        self.tenant_requests = Counter(
            "jetserve_tenant_requests",
            "Requests under tenant limits, by tenant and outcome (admitted, refused)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "jetserve_tenant_estimated_tokens",
            "Tokens estimated at admission, by tenant and outcome (admitted, refused)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.cancels = Counter(
            "jetserve_http_cancels",
            "Requests cancelled upstream, by reason (disconnect, deadline, no_workers)",
            ["reason"],
            registry=r,
        )

    def tenant_decision(self, tenant: str, admitted: bool, tokens: int) -> None:
        children = self._tenant_children.get((tenant, admitted))
        if children is None:
            outcome = "admitted" if admitted else "refused"
            children = (
                self.tenant_requests.labels(tenant, outcome),
                self.tenant_tokens.labels(tenant, outcome),
            )
            self._tenant_children[(tenant, admitted)] = children
        children[0].inc()
        children[1].inc(tokens)

    def watch_windows(self, models: Callable[[], list[tuple[str, int, int]]]) -> None:
        """Export the online windows (`OnlineShare.models`) when scraped."""
        self.registry.register(_WindowCollector(models))


class _WindowCollector(Collector):
    def __init__(self, models: Callable[[], list[tuple[str, int, int]]]) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "jetserve_online_window_in_flight",
            "Online requests of this bridge in flight to the model (its fair-share window)",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "jetserve_online_window_waiting",
            "Online requests waiting in this bridge for a slot in the model's window",
            labels=["model"],
        )
        for model, held, queued in self._models():
            in_flight.add_metric([model], held)
            waiting.add_metric([model], queued)
        yield in_flight
        yield waiting
