"""Reply routing (`producer.routing.ReplyRouter`): each reply to the `Pending` of its request."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from producer.client import make_request
from producer.errors import InvalidRequest
from producer.pending import Pending
from producer.routing import ReplyRouter
from schemas.codec import encode
from schemas.messages import FinalResult, StreamChunk
from schemas.names import Encoding


def _reply(data: bytes) -> Msg:
    return Msg(None, subject="_INBOX.jetserve.x.r", data=data)  # type: ignore[arg-type]


def _final(request_id: str) -> bytes:
    return encode(FinalResult(request_id, "m", {"text": "ok"}, "stop"))


async def test_replies_reach_their_own_request_only() -> None:
    router = ReplyRouter(None, Encoding.JSON)  # type: ignore[arg-type]
    a = Pending(make_request("m", "predict", {}, request_id="a"), streaming=True)
    b = Pending(make_request("m", "predict", {}, request_id="b"), streaming=False)
    router.add(a)
    router.add(b)
    woken: list[str] = []
    a.notify = lambda: woken.append("a")
    router.on_reply("a", _reply(encode(StreamChunk(id="a", seq=0, delta="x"))))
    router.on_reply("b", _reply(_final("b")))
    router.on_reply("c", _reply(_final("c")))  # nobody waits: dropped
    router.on_reply("a", _reply(b"not a reply"))  # undecodable: dropped
    assert a.chunks is not None
    assert a.chunks.get_nowait().delta == "x"
    assert not a.done.done()
    assert woken == ["a"]
    assert b.done.result().id == "b"


async def test_one_request_id_in_flight_at_a_time() -> None:
    router = ReplyRouter(None, Encoding.JSON)  # type: ignore[arg-type]
    first = Pending(make_request("m", "predict", {}, request_id="same"), streaming=False)
    router.add(first)
    with pytest.raises(InvalidRequest, match="already in flight"):
        router.add(Pending(make_request("m", "predict", {}, request_id="same"), streaming=False))
    await router.release(first)
    assert not first.live
    assert first.notify is None
    router.on_reply("same", _reply(_final("same")))
    assert not first.done.done()  # released: no longer routed
    router.add(Pending(make_request("m", "predict", {}, request_id="same"), streaming=False))


@pytest.mark.integration
async def test_a_subject_of_the_callers_choosing_gets_a_subscription(nc: NATS) -> None:
    router = ReplyRouter(nc, Encoding.JSON)
    pending = Pending(make_request("m", "predict", {}, request_id="mine"), streaming=False)
    await router.subscribe(pending, "my.replies")
    await nc.publish("my.replies", _final("other"))  # another request sharing the subject
    await nc.publish("my.replies", _final("mine"))
    assert (await asyncio.wait_for(pending.done, 5)).id == "mine"
    await router.release(pending)
    assert pending.subscription is None
