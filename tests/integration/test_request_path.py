"""Requests through a real nats-server and a real worker: producer -> JetStream -> worker ->
reply subject."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import Client, make_request
from producer.errors import (
    BacklogFull,
    InvalidRequest,
    ModelNotFound,
    RequestFailed,
    Unavailable,
)
from schemas import names
from schemas.errors import ErrorCode
from schemas.messages import FinalResult, StreamChunk

pytestmark = pytest.mark.integration


async def test_round_trip(nc: NATS, model_name: str, inproc_worker: Any) -> None:
    await inproc_worker(model_name)
    client = Client(nc)
    result = await client.request(model_name, "predict", {"hello": [1, 2]}, timeout_s=10)
    assert result.output == {"hello": [1, 2]}
    assert result.model == model_name
    assert result.timings.queue_ms >= 0
    assert result.timings.e2e_ms >= result.timings.queue_ms
    chat = await client.request(
        model_name, "chat", {"messages": [{"role": "user", "content": "ping pong"}]}
    )
    assert chat.output == {"text": "ping pong"}
    assert chat.usage.prompt_tokens == 2
    await client.close()


async def test_many_in_flight(nc: NATS, model_name: str, inproc_worker: Any) -> None:
    await inproc_worker(model_name)
    client = Client(nc)
    results = await asyncio.gather(
        *[client.request(model_name, "predict", i, timeout_s=20) for i in range(500)]
    )
    assert [r.output for r in results] == list(range(500))
    await client.close()


async def test_stream_yields_chunks_then_result(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name)
    client = Client(nc)
    items = [
        item
        async for item in client.stream(
            model_name, "completion", {"prompt": "stream me"}, timeout_s=10
        )
    ]
    assert isinstance(items[-1], FinalResult)
    chunks = [i for i in items if isinstance(i, StreamChunk)]
    assert "".join(c.delta for c in chunks) == "stream me"
    await client.close()


async def test_plain_nats_client_with_the_documented_json_contract(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    """What the README tells a user of any NATS client to do, done with bare nats-py."""
    await inproc_worker(model_name)
    js = nc.jetstream()
    inbox = f"my.replies.{uuid.uuid4().hex}"
    sub = await nc.subscribe(inbox)
    body = {
        "type": "request.v1",
        "id": "req-1",
        "model": model_name,
        "kind": "predict",
        "payload": {"text": "hi"},
    }
    ack = await js.publish(
        f"jetserve.req.{model_name}.online",
        json.dumps(body).encode(),
        headers={"Nats-Msg-Id": "req-1", "Jetserve-Reply-To": inbox},
    )
    assert ack.stream == f"jetserve-req-{model_name}"
    reply = json.loads((await sub.next_msg(timeout=10)).data)
    assert reply["type"] == "result.v1"
    assert reply["id"] == "req-1"
    assert reply["output"] == {"text": "hi"}


async def test_msgpack_encoding(nc: NATS, model_name: str, inproc_worker: Any) -> None:
    await inproc_worker(model_name)
    from schemas.names import Encoding

    client = Client(nc, encoding=Encoding.MSGPACK)
    result = await client.request(model_name, "predict", {"b": 2}, timeout_s=10)
    assert result.output == {"b": 2}
    await client.close()


async def test_malformed_json_gets_an_error_reply(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name)
    js = nc.jetstream()
    sub = await nc.subscribe("bad.replies")
    await js.publish(
        names.request_subject(model_name),
        b'{"type": "request.v1", "id": ',
        headers={"Jetserve-Reply-To": "bad.replies"},
    )
    reply = json.loads((await sub.next_msg(timeout=10)).data)
    assert reply["type"] == "error.v1"
    assert reply["code"] == "invalid_request"
    # ... and the worker keeps serving.
    ok = await Client(nc).request(model_name, "predict", 1, timeout_s=10)
    assert ok.output == 1


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "\uff45cho"])
async def test_wildcard_model_names_are_refused(nc: NATS, bad: str) -> None:
    client = Client(nc)
    with pytest.raises(InvalidRequest, match="model"):
        await client.request(bad, "predict", 1, timeout_s=1)
    with pytest.raises(names.InvalidName):
        names.request_subject(bad)


async def test_wildcard_subject_is_refused_by_the_server(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name)
    js = nc.jetstream(timeout=2)
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish("jetserve.req.*.online", b"{}")


async def test_unknown_model(nc: NATS) -> None:
    with pytest.raises(ModelNotFound):
        await Client(nc).request("no-such-model", "predict", 1, timeout_s=2)


async def test_unsupported_kind_is_an_error_result(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name, "tests.models:SlowModel")
    with pytest.raises(RequestFailed) as info:
        await Client(nc).request(
            model_name, "chat", {"messages": [{"role": "user", "content": "x"}]}, timeout_s=5
        )
    assert info.value.code is ErrorCode.UNSUPPORTED_KIND


async def test_duplicate_publish_runs_once(
    nc: NATS, model_name: str, inproc_worker: Any, tmp_path: Any
) -> None:
    record = tmp_path / "runs.txt"
    client = Client(nc)
    # Provision the stream by starting a worker, then stop it so the duplicates queue up.
    w = await inproc_worker(model_name, "tests.models:SlowModel", options={"record": str(record)})
    await w.stop()
    request = make_request(model_name, "predict", {"sleep_s": 0}, request_id="dup-1")
    first = await client.submit(request, reply_to="dup.replies")
    second = await client.submit(request, reply_to="dup.replies")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.seq == second.seq
    # Same idempotency key, different ids: also once.
    a = make_request(model_name, "predict", {"sleep_s": 0}, idempotency_key="k1")
    b = make_request(model_name, "predict", {"sleep_s": 0}, idempotency_key="k1")
    assert not (await client.submit(a)).duplicate
    assert (await client.submit(b)).duplicate
    sub = await nc.subscribe("dup.replies")
    await inproc_worker(model_name, "tests.models:SlowModel", options={"record": str(record)})
    await sub.next_msg(timeout=10)
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=1.0)
    runs = record.read_text().split("\n")
    assert sorted(line.split()[0] for line in runs if line) == sorted(["dup-1", a.id])


async def test_backlog_bound_refuses_new_publishes(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    w = await inproc_worker(model_name, max_backlog=3)
    await w.stop()
    client = Client(nc)
    for _ in range(3):
        await client.submit(make_request(model_name, "predict", 1))
    with pytest.raises(BacklogFull):
        await client.submit(make_request(model_name, "predict", 1))


async def test_cancel_of_a_queued_request(nc: NATS, model_name: str, inproc_worker: Any) -> None:
    await inproc_worker(model_name, "tests.models:SlowModel", capacity=1)
    client = Client(nc)
    blocker = asyncio.create_task(
        client.request(model_name, "predict", {"sleep_s": 1.0}, timeout_s=10)
    )
    await asyncio.sleep(0.2)
    queued = make_request(model_name, "predict", {"sleep_s": 0})
    replies = await nc.subscribe("cancel.replies")
    await client.submit(queued, reply_to="cancel.replies")
    await client.cancel(model_name, queued.id)
    reply = json.loads((await replies.next_msg(timeout=10)).data)
    assert (reply["type"], reply["code"]) == ("error.v1", "cancelled")
    await blocker


async def test_worker_never_holds_more_than_its_capacity(
    nats_server: NatsServer, nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name, "tests.models:SlowModel", capacity=4)
    client = Client(nc)
    for _ in range(20):
        await client.submit(make_request(model_name, "predict", {"sleep_s": 0.5}))
    await asyncio.sleep(0.3)
    js = nc.jetstream()
    info = await js.consumer_info(names.stream_name(model_name), "online")
    # Capacity 4 less the one credit kept on the priority consumer.
    assert info.num_ack_pending == 3
    assert info.num_pending == 17


async def test_begin_returns_before_the_ack_and_records_it(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name)
    client = Client(nc)
    pending = await client.begin(make_request(model_name, "predict", 7), streaming=False)
    result = await asyncio.wait_for(pending.done, 10)
    assert isinstance(result, FinalResult)
    assert result.output == 7
    assert pending.accepted is not None
    assert pending.accepted.stream == names.stream_name(model_name)
    assert pending.refused is None
    await client.finish(pending)
    await client.close()


async def test_begin_reports_refusals_on_the_pending(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    w = await inproc_worker(model_name, max_backlog=1)
    await w.stop()
    client = Client(nc)

    async def refusal(request: Any) -> Exception | None:
        woke = asyncio.Event()
        pending = await client.begin(request, streaming=False)
        pending.notify = woke.set
        await asyncio.wait_for(woke.wait(), 10)
        await client.finish(pending)
        return pending.refused

    assert isinstance(await refusal(make_request("no-such-model", "predict", 1)), ModelNotFound)
    first = await client.begin(make_request(model_name, "predict", 1), streaming=False)
    # The server takes one connection's publishes in order: the first fills the backlog.
    assert isinstance(await refusal(make_request(model_name, "predict", 2)), BacklogFull)
    assert first.accepted is not None  # its PubAck came first
    await client.finish(first, cancel=False)
    await client.close()


async def test_begin_refuses_a_request_never_acknowledged_at_the_publish_timeout(
    nc: NATS,
) -> None:
    """Something listens on the subject but no stream stores it: no PubAck ever comes. The
    request is refused as unavailable once the publish timeout has passed, not before."""
    seen: list[str] = []

    async def swallow(msg: Any) -> None:
        seen.append((msg.headers or {}).get("Nats-Msg-Id", ""))

    sub = await nc.subscribe(names.request_subject("ghost"), cb=swallow)
    client = Client(nc, publish_timeout_s=0.6)
    woke = asyncio.Event()
    started = asyncio.get_running_loop().time()
    pending = await client.begin(make_request("ghost", "predict", 1), streaming=False)
    pending.notify = woke.set
    await asyncio.wait_for(woke.wait(), 10)
    assert asyncio.get_running_loop().time() - started >= 0.55
    assert isinstance(pending.refused, Unavailable)
    assert pending.accepted is None
    assert seen == [pending.request.id]
    await client.finish(pending)
    await client.close()
    await sub.unsubscribe()
