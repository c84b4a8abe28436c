"""`AckInbox`, `ensure_stream` and `ModelDirectory` against a real nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StreamConfig

from natsio.acks import Outcome
from natsio.directory import ModelDirectory, list_models
from natsio.inbox import AckInbox, Message
from natsio.streams import ensure_stream
from schemas import names
from workers.replies import DurablePublisher, DurableReplyFailed

pytestmark = pytest.mark.integration


async def _stream(nc: NATS, **config: object) -> str:
    name = f"ack-{uuid.uuid4().hex[:8]}"
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], **config))  # type: ignore[arg-type]
    return name


async def test_each_publish_gets_the_outcome_of_its_own_puback(nc: NATS) -> None:
    name = await _stream(nc, max_msgs=2, discard=DiscardPolicy.NEW, max_msg_size=64)
    inbox = AckInbox(nc, names.SCHEDULER_INBOX)
    results = await inbox.publish_many(
        [
            Message(f"{name}.a", b"1", {"Nats-Msg-Id": "m1"}),
            Message(f"{name}.a", b"1", {"Nats-Msg-Id": "m1"}),  # a duplicate: stored once
            Message(f"{name}.a", b"x" * 100, {}),
            Message(f"{name}.a", b"2", {}),
            Message(f"{name}.a", b"3", {}),
            Message(f"nobody-{name}.a", b"4", {}),
        ],
        timeout_s=5.0,
    )
    outcomes = [o for o, _ in results]
    assert outcomes == [
        Outcome.STORED,
        Outcome.STORED,
        Outcome.TOO_LARGE,
        Outcome.STORED,
        Outcome.FULL,
        Outcome.NO_STREAM,
    ]
    first, second = results[0][1], results[1][1]
    assert first is not None
    assert second is not None
    assert (first.seq, first.duplicate, second.seq, second.duplicate) == (1, False, 1, True)
    await inbox.close()


async def test_a_publish_not_acknowledged_in_time_is_retry(nc: NATS) -> None:
    inbox = AckInbox(nc, names.SCHEDULER_INBOX)
    # A core subscriber that never answers stands in for a lost PubAck.
    subject = f"silent-{uuid.uuid4().hex[:8]}"
    sub = await nc.subscribe(subject)
    started = time.monotonic()
    outcome, ack = await inbox.publish(subject, b"x", {}, timeout_s=0.3)
    assert (outcome, ack) == (Outcome.RETRY, None)
    assert 0.25 < time.monotonic() - started < 2
    assert inbox.forget("0") is None  # nothing left waiting
    await sub.unsubscribe()
    await inbox.close()


async def test_a_durable_reply_refused_for_good_is_not_published_again(nc: NATS) -> None:
    """The worker used to publish a reply the results stream refuses three times; a refusal
    that no retry can change (too large) now fails at once."""
    name = await _stream(nc, max_msg_size=64)
    publisher = DurablePublisher(nc, timeout_s=2.0, attempts=3)
    published: list[bytes] = []

    async def record(msg: Msg) -> None:
        published.append(msg.data)

    watch = await nc.subscribe(f"{name}.>", cb=record)
    with pytest.raises(DurableReplyFailed, match="too_large"):
        await publisher.publish(f"{name}.r", b"x" * 100, {"Nats-Msg-Id": "r1"})
    await nc.flush()
    assert len(published) == 1
    await publisher.publish(f"{name}.r", b"small", {"Nats-Msg-Id": "r2"})
    await watch.unsubscribe()


async def test_ensure_stream_creates_then_updates_and_tolerates_a_race(nc: NATS) -> None:
    js = nc.jetstream()
    name = f"ensure-{uuid.uuid4().hex[:8]}"
    config = StreamConfig(name=name, subjects=[f"{name}.>"], max_msgs=10)
    await asyncio.gather(*[ensure_stream(js, config) for _ in range(4)])
    await ensure_stream(js, StreamConfig(name=name, subjects=[f"{name}.>"], max_msgs=20))
    assert (await js.stream_info(name)).config.max_msgs == 20


async def test_models_are_the_request_streams_over_every_page(nc: NATS) -> None:
    js = nc.jetstream()
    prefix = f"dir{uuid.uuid4().hex[:6]}"
    made = [f"{prefix}-{i}" for i in range(260)]  # the stream names API pages by 256
    for model in made:
        await js.add_stream(
            StreamConfig(name=names.stream_name(model), subjects=names.request_subjects(model))
        )
    await _stream(nc)  # not a request stream
    try:
        found = await list_models(nc)
        assert [m for m in found if m.startswith(prefix)] == sorted(made)
        directory = ModelDirectory(nc, ttl_s=60)
        assert prefix + "-0" in await directory.models()
        await js.delete_stream(names.stream_name(made[0]))
        assert prefix + "-0" in await directory.models()  # cached
    finally:
        for model in made[1:]:
            await js.delete_stream(names.stream_name(model))
