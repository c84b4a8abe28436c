"""Bridge metrics, defined once. Label sets are fixed: `route` is one of `ROUTES`
(anything else counts as `other`), `status` the HTTP status code."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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
        #: (tenant, admitted) -> [requests, estimated tokens]: plain counts, exported when
        #: scraped (`_TenantCollector`): a Prometheus counter's lock costs more than the
        #: limits' whole check on a request that is not limited.
        self.tenant_counts: dict[tuple[str, bool], list[int]] = {}
        r.register(_TenantCollector(self.tenant_counts))
        self.cancels = Counter(
            "jetserve_http_cancels",
            "Requests cancelled upstream, by reason (disconnect, deadline, no_workers)",
            ["reason"],
            registry=r,
        )

    def tenant_decision(self, tenant: str, admitted: bool, tokens: int) -> None:
        counts = self.tenant_counts.get((tenant, admitted))
        if counts is None:
            counts = self.tenant_counts[(tenant, admitted)] = [0, 0]
        counts[0] += 1
        counts[1] += tokens

    def watch_windows(self, models: Callable[[], list[tuple[str, int, int]]]) -> None:
        """Export the online windows (`OnlineShare.models`) when scraped."""
        self.registry.register(_WindowCollector(models))


class _TenantCollector(Collector):
    def __init__(self, counts: dict[tuple[str, bool], list[int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily(
            "jetserve_tenant_requests",
            "Requests under tenant limits, by tenant and outcome (admitted, refused)",
            labels=["tenant", "outcome"],
        )
        tokens = CounterMetricFamily(
            "jetserve_tenant_estimated_tokens",
            "Tokens estimated at admission, by tenant and outcome (admitted, refused)",
            labels=["tenant", "outcome"],
        )
        for (tenant, admitted), (count, estimated) in list(self._counts.items()):
            outcome = ["admitted" if admitted else "refused"]
            requests.add_metric([tenant, *outcome], count)
            tokens.add_metric([tenant, *outcome], estimated)
        yield requests
        yield tokens


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
