"""A worker's replies (`workers.replies.ReplySink`) against a real nats-server: chunks then
the final result on a core reply subject; on a durable one (`jetserve.results.>`) only the
final result, stored once in the results stream however often the request runs."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetserve.servers import NatsServer
from scheduler.streams import provision
from schemas import names
from schemas.codec import decode_reply
from schemas.messages import FinalResult, StreamChunk
from schemas.names import Encoding, ResultKind
from workers.replies import DurablePublisher, ReplySink

pytestmark = pytest.mark.integration


async def _listen(nc: NATS, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def record(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=record)
    return got


@pytest.mark.parametrize("encoding", [Encoding.JSON, Encoding.MSGPACK])
async def test_chunks_then_the_result_on_a_core_subject(nc: NATS, encoding: Encoding) -> None:
    subject = f"_INBOX.test.{uuid.uuid4().hex}"
    got = await _listen(nc, subject)
    sink = ReplySink(nc, subject, encoding, "r1", 2, DurablePublisher(nc))
    await sink.chunk("a")
    await sink.chunk("b", token_ids=[7])
    await sink.final(FinalResult("r1", "m", {"text": "ab"}, "stop"))
    await nc.flush()
    await asyncio.sleep(0.05)
    replies = [decode_reply(m.data, encoding) for m in got]
    assert [(r.seq, r.delta, r.attempt) for r in replies[:2] if isinstance(r, StreamChunk)] == [
        (0, "a", 2),
        (1, "b", 2),
    ]
    assert isinstance(replies[2], FinalResult)
    assert all(not m.headers for m in got)  # core replies carry no headers (hot path)


async def test_no_reply_subject_publishes_nothing(nc: NATS) -> None:
    sink = ReplySink(nc, None, Encoding.JSON, "r1", 0, DurablePublisher(nc))
    await sink.chunk("a")
    await sink.final(FinalResult("r1", "m", {"text": "a"}, "stop"))  # no error either


async def test_a_durable_reply_is_stored_once(own_nats: NatsServer) -> None:
    """On a server of its own: nothing else consumes its results stream."""
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    await provision(js, duplicate_window_s=60)
    owner = f"b{uuid.uuid4().hex[:12]}"
    subject = names.results_subject(ResultKind.BATCH, owner)
    rid = f"{owner}-0"
    durable = DurablePublisher(nc, timeout_s=2.0)
    before = (await js.stream_info(names.RESULTS_STREAM)).state.messages
    for attempt in (0, 1):  # the request ran twice (redelivered): its result is stored once
        sink = ReplySink(nc, subject, Encoding.JSON, rid, attempt, durable)
        await sink.chunk("not relayed")
        await sink.final(FinalResult(rid, "m", {"text": "x"}, "stop"))
    assert (await js.stream_info(names.RESULTS_STREAM)).state.messages == before + 1
    stored = await js.get_last_msg(names.RESULTS_STREAM, subject)
    assert stored.headers is not None
    assert stored.headers[names.Header.MSG_ID] == f"result-{rid}"
    assert isinstance(decode_reply(stored.data or b"", Encoding.JSON), FinalResult)
    await nc.close()


async def test_an_event_log_keeps_every_chunk_and_one_result(own_nats: NatsServer) -> None:
    """A background response's reply subject keeps the chunks too, each attempt's once; the
    result once, whoever publishes it first."""
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    await provision(js, duplicate_window_s=60)
    rid = f"r{uuid.uuid4().hex[:12]}"
    subject = names.response_events_subject(rid)
    durable = DurablePublisher(nc, timeout_s=2.0)
    for attempt in (1, 2):  # the first attempt's worker died after two chunks
        sink = ReplySink(nc, subject, Encoding.JSON, rid, attempt, durable)
        await sink.chunk("He")
        await sink.chunk("llo")
        await sink.final(FinalResult(rid, "m", {"text": "Hello"}, "stop"))
    sub = await js.subscribe(subject, stream=names.EVENTS_STREAM, ordered_consumer=True)
    got = [decode_reply((await sub.next_msg(2)).data) for _ in range(5)]
    await sub.unsubscribe()
    assert [type(r).__name__ for r in got] == [
        "StreamChunk",
        "StreamChunk",
        "FinalResult",
        "StreamChunk",
        "StreamChunk",
    ]
    assert [(r.attempt, r.seq) for r in got if isinstance(r, StreamChunk)] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    info = await js.stream_info(names.EVENTS_STREAM)
    assert info.config.max_age  # kept for a while, then expired
    assert info.state.messages == 5  # limits retention: still there for the next replay
    await nc.close()
