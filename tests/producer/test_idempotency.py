"""`Idempotency-Key` bookkeeping (`producer.http.idempotency`) against a real nats-server: the
same key runs once, every attempt gets its result, and a finished one is answered from the
bucket. (The worker is stood in for by publishing its reply on the shared subject.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from prometheus_client import CollectorRegistry

from producer.client import Client, make_request
from producer.http.calls import Calls
from producer.http.errors import ApiError
from producer.http.idempotency import Idempotency, Stored, StoredCall, open_bucket, token
from producer.http.metrics import BridgeMetrics
from producer.http.presence import Presence
from schemas import names
from schemas.codec import encode
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult

pytestmark = pytest.mark.integration


async def _idempotency(nc: NATS) -> Idempotency:
    js = nc.jetstream()
    calls = Calls(
        Client(nc),
        Presence(nc, ttl_s=1.0),
        BridgeMetrics(CollectorRegistry()),
        no_worker_timeout_s=30,
        retry_after_s=1,
    )
    return Idempotency(calls, await open_bucket(js, 60.0), js)


def test_the_token_depends_on_tenant_and_key_only() -> None:
    assert token("a", "k") == token("a", "k")
    assert token("a", "k") != token("b", "k")
    assert names.validate_request_id(token("a", "k" * 256))


async def test_concurrent_attempts_run_once_and_share_the_result(nc: NATS) -> None:
    idem = await _idempotency(nc)
    model = f"idem-{uuid.uuid4().hex[:8]}"
    stream = names.stream_name(model)
    await nc.jetstream().add_stream(
        StreamConfig(name=stream, subjects=names.request_subjects(model))
    )
    key = uuid.uuid4().hex
    rid = token("t1", key)
    request = make_request(model, "predict", {}, request_id=rid, tenant="t1", idempotency_key=key)
    first, second = await asyncio.gather(
        idem.open(request, streaming=False, timeout_s=10),
        idem.open(request, streaming=False, timeout_s=10),
    )
    assert (await nc.jetstream().stream_info(stream)).state.messages == 1
    reply = FinalResult(rid, model, {"text": "once"}, "stop")
    await nc.publish(names.idempotent_reply_subject(rid), encode(reply))
    results = await asyncio.wait_for(asyncio.gather(first.result(), second.result()), 5)
    assert [r.output for r in results] == [{"text": "once"}] * 2
    await first.close()
    await second.close()
    stored = await idem.get(rid)
    assert stored is not None
    assert stored.reply == reply
    # A later attempt is answered from the bucket, with the first attempt's `created`.
    later = await idem.open(request, streaming=False, timeout_s=10)
    assert isinstance(later, StoredCall)
    assert (await later.result()).output == {"text": "once"}
    assert later.created_s == stored.created_s
    assert (await nc.jetstream().stream_info(stream)).state.messages == 1


async def test_the_first_stored_reply_is_kept(nc: NATS) -> None:
    idem = await _idempotency(nc)
    rid = token("t1", uuid.uuid4().hex)
    error = ErrorResult(id=rid, code=ErrorCode.INVALID_REQUEST, message="bad at `$.payload.x`")
    first = await idem.put(rid, Stored(100, error))
    kept = await idem.put(rid, Stored(200, FinalResult(rid, "m", {"text": "later"}, "stop")))
    assert first == kept
    assert kept.created_s == 100
    request = make_request("m", "predict", {}, request_id=rid, tenant="t1", idempotency_key="k")
    call = await idem.open(request, streaming=False, timeout_s=5)
    with pytest.raises(ApiError) as raised:
        await call.result()
    assert (raised.value.status, raised.value.param) == (400, "x")
