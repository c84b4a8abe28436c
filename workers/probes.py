"""The worker's small HTTP endpoint, for Kubernetes and Prometheus.

    GET /metrics   Prometheus text format (the worker's registry)
    GET /healthz   200 while the worker's event loop answers (liveness)
    GET /readyz    200 once the model is loaded and NATS is connected, 503 otherwise (readiness)
    GET /drain     start draining, as SIGTERM does (the pod's preStop hook); 202. Only where
                   the server was given `on_drain`: the worker serves it on a second listener
                   bound to 127.0.0.1 (JETSERVE_WORKER_DRAIN_PORT), which only the pod's own
                   containers reach, never on the port other pods and Prometheus reach.

Why a hand-written asyncio server rather than prometheus-client's `start_http_server`: that
one answers from its own thread, so it would keep saying "alive" while the worker's event loop
is stuck. Served from the event loop itself, a liveness probe that gets an answer proves the
loop that pulls and acks is running. Four GET routes, one response per connection, no request
bodies: a few dozen lines, and no web framework in the worker's dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

_MAX_HEADER_BYTES = 16 * 1024
_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    #: Why not (or "ready"): shown in the probe's body and in `kubectl describe pod`.
    reason: str


class ProbeServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Callable[[], Readiness],
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._readiness = readiness
        self._on_drain = on_drain
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        # `limit` bounds the request head: a longer one fails readuntil (LimitOverrunError).
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_HEADER_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        status, content_type, body = self._route(method, target.split("?", 1)[0])
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method != "GET":
            return "405 Method Not Allowed", text, b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", text, b"ok\n"
        if path == "/readyz":
            state = self._readiness()
            status = "200 OK" if state.ready else "503 Service Unavailable"
            return status, text, f"{state.reason}\n".encode()
        if path == "/drain" and self._on_drain is not None:
            log.info("drain requested over HTTP")
            self._on_drain()
            return "202 Accepted", text, b"draining\n"
        return "404 Not Found", text, b"not found\n"
