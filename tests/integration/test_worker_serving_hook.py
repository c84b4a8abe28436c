"""`Worker(on_serving=...)`: called once, when the model is loaded and requests are pulled
(the worker command settles the collector there)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import Client
from workers.config import ModelSpec, WorkerConfig
from workers.probes import Readiness
from workers.worker import Worker, build_backend

pytestmark = pytest.mark.integration


async def test_on_serving_runs_once_the_worker_is_ready(
    nats_server: NatsServer, nc: NATS, model_name: str
) -> None:
    spec = ModelSpec(name=model_name, model_class="echo")
    states: list[Readiness] = []
    serving = asyncio.Event()
    worker: Worker | None = None

    def on_serving() -> None:
        assert worker is not None
        states.append(worker.readiness())
        serving.set()

    worker = Worker(
        spec, WorkerConfig(nats_url=nats_server.url), build_backend(spec), on_serving=on_serving
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(serving.wait(), 20)
        assert states == [Readiness(True, "ready")]
        result = await Client(nc).request(model_name, "predict", {"x": 1}, timeout_s=10)
        assert result.output == {"x": 1}
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    assert len(states) == 1
