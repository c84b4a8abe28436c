"""The bridge's request calls (`producer.http.calls`) against a real nats-server and a
real worker, below HTTP."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from producer.client import Client, make_request
from producer.http.calls import Call, Calls
from producer.http.metrics import BridgeMetrics
from producer.http.presence import Presence
from producer.pending import Pending
from schemas.messages import FinalResult, StreamChunk

pytestmark = pytest.mark.integration


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """What the cyclic collector finds, kept for inspection instead of freed."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_served_calls_leave_no_reference_cycles(
    nc: NATS, model_name: str, inproc_worker: Any, saved_garbage: list[Any]
) -> None:
    """Every call is freed by reference counting alone: a cycle per request (the call's
    wake-up hook kept on its pending reply) left a dozen objects per request for the cyclic
    collector, whose runs cost the bridge CPU on every request under load."""
    await inproc_worker(model_name)
    client = Client(nc)
    calls = Calls(
        client,
        Presence(nc, ttl_s=1.0),
        BridgeMetrics(CollectorRegistry()),
        no_worker_timeout_s=5,
        retry_after_s=1,
    )
    messages = {"messages": [{"role": "user", "content": "no cycles here"}]}
    for stream in (False, True) * 5:
        request = make_request(model_name, "chat", messages, stream=stream, timeout_s=10)
        call = await calls.open(request, streaming=stream, timeout_s=10)
        items = [await call.next()]
        while not isinstance(items[-1], FinalResult):
            items.append(await call.next())
        await call.close()
        assert items[-1].output == {"text": "no cycles here"}
        assert all(isinstance(i, StreamChunk) for i in items[:-1])
        assert (len(items) > 1) == stream
    del call, items
    gc.collect()
    left = [o for o in saved_garbage if isinstance(o, Call | Pending)]
    assert left == []
    await client.close()
