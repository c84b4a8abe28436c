"""The credit-based pull consumer against a real nats-server: withdrawing credit loses no
message the server had already sent (it would wait unacked for the consumer's ack_wait), and
the withdrawn requests deliver nothing once they have expired."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from workers.puller import PullConsumer

pytestmark = pytest.mark.integration


async def test_withdraw_hands_over_what_was_already_on_its_way(nc: NATS) -> None:
    js = nc.jetstream()
    name = f"pull-{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
    await js.add_consumer(
        name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=60)
    )
    got: list[Msg] = []
    consumer = PullConsumer(nc, name, "c", got.append)
    await consumer.start()
    published = 0
    for round_ in range(6):
        for i in range(8):
            await js.publish(f"{name}.x", f"{round_}-{i}".encode())
            published += 1
        # Ask for more than is there and take it back at once: the server is still filling
        # the request when it is withdrawn.
        await consumer.pull(16, 0.3)
        assert consumer.outstanding == 16
        await consumer.withdraw()
        assert consumer.outstanding == 0
        await consumer.retired()
        info = await js.consumer_info(name, "c")
        # Everything the server counts as delivered (nothing is acked here) was handed over,
        # once; the rest is still waiting in the stream.
        assert info.num_ack_pending == len(got) == len({m.data for m in got})
        assert info.num_pending == published - len(got)
    assert len(got) == published  # each request could take all 8 before it expired
    # The withdrawn inboxes are closed: new messages wait for a new pull.
    await js.publish(f"{name}.x", b"later")
    await asyncio.sleep(0.2)
    assert len(got) == published
    assert (await js.consumer_info(name, "c")).num_pending == 1
    await consumer.stop()
