"""Provisioning applies the models file's per-stream byte limit (real nats-server)."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from schemas import names
from workers.config import ModelSpec, WorkerConfig
from workers.provision import StorageRefused, provision_model
from workers.worker import queue_settings

pytestmark = pytest.mark.integration


async def test_max_stream_mib_becomes_the_streams_max_bytes(nc: NATS, model_name: str) -> None:
    js = nc.jetstream()
    spec = ModelSpec(name=model_name, capacity=1, max_stream_mib=3)
    await provision_model(js, model_name, queue_settings(WorkerConfig(), spec))
    info = await js.stream_info(names.stream_name(model_name))
    assert info.config.max_bytes == 3 * 1024 * 1024
    # Changed in the models file: applied again on the next provisioning.
    spec = ModelSpec(name=model_name, capacity=1, max_stream_mib=5)
    await provision_model(js, model_name, queue_settings(WorkerConfig(), spec))
    info = await js.stream_info(names.stream_name(model_name))
    assert info.config.max_bytes == 5 * 1024 * 1024
    # The hand-back bucket exists for the workers.
    await js.key_value(names.HANDBACK_BUCKET)


async def test_a_stream_the_server_cannot_reserve_is_refused_naming_the_setting(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "store", max_file_store="300M").start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        spec = ModelSpec(name="first", capacity=1, max_stream_mib=200)
        await provision_model(js, "first", queue_settings(WorkerConfig(), spec))
        spec = ModelSpec(name="second", capacity=1, max_stream_mib=200)
        with pytest.raises(StorageRefused, match="lower the model's max_stream_mib") as refused:
            await provision_model(js, "second", queue_settings(WorkerConfig(), spec))
        assert "200 MiB" in str(refused.value)
        assert "'second'" in str(refused.value)
        # What fits is still made.
        spec = ModelSpec(name="second", capacity=1, max_stream_mib=50)
        await provision_model(js, "second", queue_settings(WorkerConfig(), spec))
        await nc.close()
    finally:
        server.stop()
