"""Hand-backs of draining workers do not count toward dead-lettering (workers/handbacks.py;
real nats-server, real workers in the test's event loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from producer.client import Client, make_request
from schemas import names
from schemas.messages import DeliveryRecord, FinalResult
from workers.handbacks import message_key
from workers.provision import max_deliveries

pytestmark = pytest.mark.integration


async def _held(nc: NATS, model: str) -> tuple[int, int]:
    """(deliveries the consumer made, messages held unacknowledged)."""
    info = await nc.jetstream().consumer_info(names.stream_name(model), "online")
    return int(info.delivered.consumer_seq or 0), int(info.num_ack_pending)


async def _until_held(nc: NATS, model: str, delivery: int, timeout_s: float = 15.0) -> None:
    """Until delivery `delivery` of the one request is held. Counting deliveries, not only
    held messages: the previous worker's nak reaches the consumer asynchronously, so right
    after a hand-back the consumer may still show the old delivery as held."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while await _held(nc, model) != (delivery, 1):
        if loop.time() > end:
            raise TimeoutError(f"the worker did not take delivery {delivery} of the request")
        await asyncio.sleep(0.05)


async def test_a_request_handed_back_by_successive_draining_workers_still_runs(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    max_attempts = 3
    hand_backs = max_attempts + 2  # JetStream's count alone would dead-letter it unrun
    client = Client(nc)
    request = make_request(model_name, "predict", {"sleep_s": 2.0})
    pending = None
    for i in range(hand_backs):
        worker = await inproc_worker(
            model_name, "tests.models:SlowModel", drain_timeout_s=0.05, max_attempts=max_attempts
        )
        if pending is None:
            pending = asyncio.create_task(client.request_obj(request, 60))
        await _until_held(nc, model_name, i + 1)
        assert await worker.stop() == 0, f"worker {i}"
    assert pending is not None
    await inproc_worker(model_name, "tests.models:SlowModel", max_attempts=max_attempts)
    result = await asyncio.wait_for(pending, 30)
    assert isinstance(result, FinalResult)
    assert result.output == {"sleep_s": 2.0}

    # Each hand-back was recorded under the message's stream sequence.
    js = nc.jetstream()
    kv = await js.key_value(names.HANDBACK_BUCKET)
    stream = names.stream_name(model_name)
    # The bucket's subjects, read in one request (nats-py's `kv.keys()` is a watcher that can
    # come back empty when the server is slow to answer it).
    prefix = f"$KV.{names.HANDBACK_BUCKET}."
    state = await js.stream_info(f"KV_{names.HANDBACK_BUCKET}", subjects_filter=f"{prefix}>")
    keys = [s.removeprefix(prefix) for s in state.state.subjects or {}]
    keys = [k for k in keys if k.startswith(stream + ".")]
    assert len(keys) == 1
    record = msgspec.json.decode((await kv.get(keys[0])).value or b"", type=DeliveryRecord)
    assert (record.free, record.ended) == (hand_backs, hand_backs)
    # The consumer leaves room for hand-backs beyond the attempts.
    info = await js.consumer_info(stream, "online")
    assert info.config.max_deliver == max_deliveries(max_attempts)
    await client.close()


def test_message_key_reads_both_ack_subject_forms() -> None:
    assert message_key("$JS.ACK.jetserve-req-m.online.3.17.9.1700000000000000000.0") == (
        "jetserve-req-m.17"
    )
    assert message_key("$JS.ACK.hub.ACC.jetserve-req-m.online.3.17.9.1700000000000000000.0.x") == (
        "jetserve-req-m.17"
    )
    assert message_key("_INBOX.x") is None
    assert message_key(None) is None
