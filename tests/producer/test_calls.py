"""One bridge call (`producer.http.calls.Call`): what `next()` gives or raises for each way a
request ends. Replies are delivered into the call's `Pending` directly (no worker); the
no-worker check pings a real nats-server where no worker listens."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from producer.client import Client, make_request
from producer.errors import ModelNotFound
from producer.http.calls import Call, Calls, ClientGone
from producer.http.errors import ApiError
from producer.http.metrics import BridgeMetrics
from producer.http.presence import Presence
from producer.online_share import OnlineShare
from producer.pending import Accepted, Pending
from schemas import names
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, StreamChunk

pytestmark = pytest.mark.integration


def _calls(nc: NATS, no_worker_timeout_s: float = 5.0) -> Calls:
    return Calls(
        Client(nc),
        Presence(nc, ttl_s=0.1),
        BridgeMetrics(CollectorRegistry()),
        no_worker_timeout_s=no_worker_timeout_s,
        retry_after_s=1,
    )


def _call(calls: Calls, *, streaming: bool = False, timeout_s: float = 5.0) -> Call:
    model = f"nobody-{uuid.uuid4().hex[:8]}"
    pending = Pending(make_request(model, "predict", {}), streaming)
    return Call(calls, pending, asyncio.get_running_loop().time() + timeout_s)


def _stored(call: Call) -> None:
    call.pending.stored(Accepted(call.request.id, "s", 1, False))


def _cancels(calls: Calls, reason: str) -> float:
    return calls.metrics.cancels.labels(reason)._value.get()  # type: ignore[no-any-return]


async def test_a_restarted_attempts_chunks_are_passed_on_once(nc: NATS) -> None:
    call = _call(_calls(nc), streaming=True)
    rid = call.request.id
    for attempt, seq in [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (0, 2)]:
        call.pending.deliver(
            StreamChunk(id=rid, seq=seq, delta=f"{attempt}.{seq}", attempt=attempt)
        )
    call.pending.deliver(FinalResult(rid, call.request.model, {"text": "x"}, "stop"))
    got = []
    while not isinstance(item := await call.next(), FinalResult):
        got.append(item.delta)
    assert got == ["0.0", "0.1", "1.2"]
    assert call.finished


async def test_a_reply_arriving_wakes_the_waiting_call(nc: NATS) -> None:
    call = _call(_calls(nc))
    _stored(call)
    waiting = asyncio.ensure_future(call.next())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    call.pending.deliver(FinalResult(call.request.id, call.request.model, {"text": "x"}, "stop"))
    assert isinstance(await asyncio.wait_for(waiting, 1), FinalResult)


async def test_an_error_result_is_its_http_error(nc: NATS) -> None:
    call = _call(_calls(nc))
    call.pending.deliver(
        ErrorResult(id=call.request.id, code=ErrorCode.CONTEXT_LENGTH_EXCEEDED, message="long")
    )
    with pytest.raises(ApiError) as raised:
        await call.next()
    assert (raised.value.status, raised.value.param) == (400, "messages")


async def test_a_refused_request_is_its_http_error(nc: NATS) -> None:
    call = _call(_calls(nc))
    call.pending.refuse(ModelNotFound("no such model"))
    with pytest.raises(ApiError) as raised:
        await call.next()
    assert (raised.value.status, raised.value.code) == (404, "model_not_found")


async def test_the_deadline_ends_the_wait_with_504(nc: NATS) -> None:
    calls = _calls(nc)
    call = _call(calls, timeout_s=0.2)
    _stored(call)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ApiError) as raised:
        await call.next()
    assert raised.value.status == 504
    assert 0.19 < asyncio.get_running_loop().time() - started < 1.0
    assert _cancels(calls, "deadline") == 1


async def test_no_worker_alive_ends_the_wait_with_503(nc: NATS) -> None:
    calls = _calls(nc, no_worker_timeout_s=0.2)
    call = _call(calls)
    _stored(call)
    with pytest.raises(ApiError) as raised:
        await call.next()
    assert (raised.value.status, raised.value.code) == (503, ErrorCode.NO_WORKERS.value)
    assert _cancels(calls, "no_workers") == 1


async def test_no_worker_check_waits_for_the_request_to_be_stored(nc: NATS) -> None:
    """Until JetStream has stored the request (NATS away, the publish retried), no worker
    could have taken it: the check does not run."""
    call = _call(_calls(nc, no_worker_timeout_s=0.1), timeout_s=0.5)
    with pytest.raises(ApiError) as raised:
        await call.next()
    assert raised.value.status == 504  # the deadline, not "no workers"


async def test_the_client_going_away_raises_client_gone(nc: NATS) -> None:
    call = _call(_calls(nc))
    waiting = asyncio.ensure_future(call.next())
    await asyncio.sleep(0.02)
    call.client_gone()
    with pytest.raises(ClientGone):
        await asyncio.wait_for(waiting, 1)


async def test_a_worker_slow_to_answer_the_ping_counts_as_alive(nc: NATS) -> None:
    """No subscriber: the server's "no responders" says no worker at once. A subscriber that
    answers after the ping's timeout (a busy worker) is still a worker: its request waits."""
    model = f"slow-{uuid.uuid4().hex[:8]}"
    presence = Presence(nc, ttl_s=0.0, ping_timeout_s=0.2)
    assert not await presence.any_worker(model)

    async def answer_late(msg: Msg) -> None:
        await asyncio.sleep(0.5)
        await msg.respond(b"{}")

    sub = await nc.subscribe(names.ping_subject(model), cb=answer_late)
    try:
        await nc.flush()
        assert await presence.any_worker(model)
    finally:
        await sub.unsubscribe()
    await nc.flush()
    assert not await presence.any_worker(model)


async def test_an_online_request_waits_for_its_slot_and_gives_it_up(nc: NATS) -> None:
    """With the model's window full, `open` waits; a client that goes away, or a deadline
    that passes, meanwhile ends the wait (nothing is published) and leaves the queue."""
    calls = _calls(nc)
    calls.share = share = OnlineShare(lambda _model: 1)
    model = f"nobody-{uuid.uuid4().hex[:8]}"
    held = await share.enter(model, "flood")
    watching: list[Callable[[], None]] = []
    stopped: list[bool] = []

    def watch(gone: Callable[[], None]) -> Callable[[], None]:
        watching.append(gone)
        return lambda: stopped.append(True)

    request = make_request(model, "predict", {}, tenant="quiet")
    opening = asyncio.create_task(calls.open(request, streaming=False, timeout_s=30, watch=watch))
    await asyncio.sleep(0.05)
    assert share.waiting(model) == 1
    watching[0]()  # the client went away
    with pytest.raises(ClientGone):
        await opening
    assert stopped == [True]
    assert share.waiting(model) == 0
    assert _cancels(calls, "disconnect") == 1

    with pytest.raises(ApiError) as late:
        await calls.open(request, streaming=False, timeout_s=0.2, watch=watch)
    assert late.value.status == 504
    assert share.waiting(model) == 0
    assert share.in_flight(model) == {"flood": 1}
    held.leave()
