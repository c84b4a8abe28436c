"""Provisioning applies the models file's per-stream byte limit (real nats-server)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from schemas import names
from workers.config import ModelSpec, WorkerConfig
from workers.provision import provision_model
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
