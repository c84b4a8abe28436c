"""`natsio.pull.undelivered` reads nats-py's private queue of a pull subscription: this fails
if nats-py stops keeping a fetch's leftovers there."""

from __future__ import annotations

import json
import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from natsio.pull import fetch, undelivered
from schemas import names

pytestmark = pytest.mark.integration


async def test_messages_no_fetch_took_are_found(nc: NATS) -> None:
    js = nc.jetstream()
    name = f"pull-{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
    sub = await js.pull_subscribe_bind(durable="c", stream=name)
    assert await fetch(sub, 1, 0.2) == []  # nothing there
    for i in range(3):
        await js.publish(f"{name}.x", str(i).encode())
    # A pull request made outside `fetch` (as one outliving a fetch that gave up): the server
    # delivers to the subscription, and nothing takes the messages.
    inbox = sub._sub.subject
    await nc.publish(names.pull_subject(name, "c"), json.dumps({"batch": 2}).encode(), reply=inbox)
    await nc.flush()
    for _ in range(50):
        if sub._sub._pending_queue.qsize() >= 2:
            break
        await nc.flush()
    assert [m.data for m in undelivered(sub)] == [b"0", b"1"]
    assert undelivered(sub) == []
    (third,) = await fetch(sub, 1, 1.0)
    assert third.data == b"2"
    await sub.unsubscribe()
