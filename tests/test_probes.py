"""The worker's probe endpoint (workers/probes.py), on a real socket, without NATS."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from workers.metrics import WorkerMetrics
from workers.probes import ProbeServer, Readiness


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


async def test_routes_and_readiness() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.capacity.labels("m").set(8)
    state = Readiness(False, "loading model")
    drained: list[bool] = []
    server = ProbeServer(metrics.registry, lambda: state, on_drain=lambda: drained.append(True))
    await server.start("127.0.0.1", 0)
    try:
        assert await _get(server.port, "/healthz") == (200, "ok\n")
        assert await _get(server.port, "/readyz") == (503, "loading model\n")
        state = Readiness(True, "ready")
        assert await _get(server.port, "/readyz?verbose=1") == (200, "ready\n")
        status, body = await _get(server.port, "/metrics")
        assert status == 200
        assert 'jetserve_worker_capacity{model="m"} 8.0' in body
        assert "# TYPE jetserve_queue_pending gauge" in body
        assert await _get(server.port, "/nope") == (404, "not found\n")
        assert (await _get(server.port, "/metrics", "POST"))[0] == 405
        assert drained == []
        assert await _get(server.port, "/drain") == (202, "draining\n")
        assert drained == [True]
    finally:
        await server.close()


async def test_drain_is_served_only_where_asked() -> None:
    """The worker's public port (Prometheus, probes, other pods) has no /drain."""
    server = ProbeServer(CollectorRegistry(), lambda: Readiness(True, "ready"))
    await server.start("127.0.0.1", 0)
    try:
        assert await _get(server.port, "/drain") == (404, "not found\n")
    finally:
        await server.close()


async def test_garbage_and_oversized_requests_are_dropped() -> None:
    server = ProbeServer(CollectorRegistry(), lambda: Readiness(True, "ready"), lambda: None)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
        await writer.drain()
        assert await reader.read() == b""  # closed without an answer
        writer.close()
        # The server still answers afterwards.
        assert await _get(server.port, "/healthz") == (200, "ok\n")
    finally:
        await server.close()
