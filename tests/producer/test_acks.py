"""Acknowledgement tracking (`producer.acks.AckTracker`) against a real nats-server: each
publish ends in exactly one of `stored` / `refuse`, retried while it may not be stored."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, StreamConfig

from producer.acks import AckTracker, AwaitedAck
from producer.client import make_request
from producer.errors import (
    BacklogFull,
    JetserveError,
    ModelNotFound,
    RequestTooLarge,
    Unavailable,
)
from producer.pending import Accepted
from producer.timers import CoarseTimers
from schemas import names
from schemas.messages import InferenceRequest

pytestmark = pytest.mark.integration


class Recorder:
    """A `Publication` that records every outcome it is told."""

    def __init__(self, request: InferenceRequest) -> None:
        self.request = request
        self.live = True
        self.outcomes: list[Accepted | JetserveError] = []
        self.told = asyncio.Event()

    def stored(self, accepted: Accepted) -> None:
        self.outcomes.append(accepted)
        self.told.set()

    def refuse(self, error: JetserveError) -> None:
        self.outcomes.append(error)
        self.told.set()


async def _model(nc: NATS, **config: object) -> str:
    model = f"acks-{uuid.uuid4().hex[:8]}"
    stream = StreamConfig(
        name=names.stream_name(model),
        subjects=names.request_subjects(model),
        **config,  # type: ignore[arg-type]
    )
    await nc.jetstream().add_stream(stream)
    return model


async def _tracker(nc: NATS, timeout_s: float = 2.0) -> AckTracker:
    tracker = AckTracker(nc, CoarseTimers(), publish_timeout_s=timeout_s)
    await tracker.inbox.start()
    return tracker


async def _publish(tracker: AckTracker, model: str, data: bytes = b"{}") -> Recorder:
    owner = Recorder(make_request(model, "predict", {}))
    subject = names.request_subject(model)
    await tracker.publish(owner, subject, data, {"Nats-Msg-Id": owner.request.id})
    await asyncio.wait_for(owner.told.wait(), 10)
    await asyncio.sleep(0.1)  # nothing more comes
    return owner


async def test_stored_once_with_where(nc: NATS) -> None:
    model = await _model(nc)
    tracker = await _tracker(nc)
    owner = await _publish(tracker, model)
    (accepted,) = owner.outcomes
    assert isinstance(accepted, Accepted)
    assert (accepted.id, accepted.stream, accepted.seq) == (
        owner.request.id,
        names.stream_name(model),
        1,
    )
    assert not accepted.duplicate


async def test_refusals_map_to_the_client_errors(nc: NATS) -> None:
    tracker = await _tracker(nc)
    unknown = await _publish(tracker, f"nomodel-{uuid.uuid4().hex[:8]}")
    assert [type(o) for o in unknown.outcomes] == [ModelNotFound]
    full = await _model(nc, max_msgs=1, discard=DiscardPolicy.NEW)
    await _publish(tracker, full)
    assert [type(o) for o in (await _publish(tracker, full)).outcomes] == [BacklogFull]
    small = await _model(nc, max_msg_size=16)
    assert [type(o) for o in (await _publish(tracker, small, b"x" * 64)).outcomes] == [
        RequestTooLarge
    ]


async def test_a_publish_nobody_acknowledges_is_refused_at_the_timeout(nc: NATS) -> None:
    """A core subscriber on the subject swallows the publish (as a lost PubAck would)."""
    model = f"silent-{uuid.uuid4().hex[:8]}"
    sub = await nc.subscribe(names.request_subject(model))
    tracker = await _tracker(nc, timeout_s=0.5)
    started = time.monotonic()
    owner = await _publish(tracker, model)
    assert [type(o) for o in owner.outcomes] == [Unavailable]
    assert 0.45 < time.monotonic() - started < 3
    await sub.unsubscribe()


async def test_jetstream_unavailable_means_publish_again_with_the_same_id(nc: NATS) -> None:
    """A stand-in for JetStream answers the first publish "unavailable" (503), the second
    with a PubAck: the request is published twice, the same `Nats-Msg-Id`, and stored."""
    model = f"flaky-{uuid.uuid4().hex[:8]}"
    seen: list[Msg] = []

    async def answer(msg: Msg) -> None:
        seen.append(msg)
        if len(seen) == 1:
            await msg.respond(b'{"error":{"code":503,"err_code":10008,"description":"x"}}')
        else:
            await msg.respond(b'{"stream":"s","seq":9}')

    sub = await nc.subscribe(names.request_subject(model), cb=answer)
    tracker = await _tracker(nc, timeout_s=5.0)
    owner = await _publish(tracker, model)
    (accepted,) = owner.outcomes
    assert isinstance(accepted, Accepted)
    assert accepted.seq == 9
    assert len(seen) == 2
    assert {m.headers["Nats-Msg-Id"] for m in seen if m.headers} == {owner.request.id}
    await sub.unsubscribe()


async def test_a_publication_released_is_told_nothing(nc: NATS) -> None:
    model = f"silent-{uuid.uuid4().hex[:8]}"
    sub = await nc.subscribe(names.request_subject(model))
    tracker = await _tracker(nc, timeout_s=0.3)
    owner = Recorder(make_request(model, "predict", {}))
    await tracker.publish(owner, names.request_subject(model), b"{}", {})
    owner.live = False
    await asyncio.sleep(0.8)
    assert owner.outcomes == []
    await sub.unsubscribe()


async def test_an_awaited_ack_resolves_or_raises(nc: NATS) -> None:
    model = await _model(nc)
    tracker = await _tracker(nc)
    awaited = AwaitedAck(make_request(model, "predict", {}))
    await tracker.publish(awaited, names.request_subject(model), b"{}", {})
    assert (await awaited.future).seq == 1
    awaited = AwaitedAck(make_request("nomodel-x", "predict", {}))
    await tracker.publish(awaited, names.request_subject("nomodel-x"), b"{}", {})
    with pytest.raises(ModelNotFound):
        await awaited.future
