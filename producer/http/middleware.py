"""Request counts and latencies of every HTTP request, as ASGI middleware."""

from __future__ import annotations

import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from producer.http.metrics import ROUTES, BridgeMetrics


class MetricsMiddleware:
    """Counts and times every HTTP request; label children bound once (hot path)."""

    def __init__(self, app: ASGIApp, metrics: BridgeMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._latency = {r: metrics.latency.labels(r) for r in (*ROUTES, "other")}
        self._in_flight = {r: metrics.in_flight.labels(r) for r in (*ROUTES, "other")}
        self._count: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self._latency else "other"
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        gauge = self._in_flight[route]
        gauge.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            gauge.dec()
            self._latency[route].observe(time.perf_counter() - start)
            counter = self._count.get((route, status))
            if counter is None:
                counter = self._count[(route, status)] = self.metrics.requests.labels(
                    route, str(status)
                )
            counter.inc()
