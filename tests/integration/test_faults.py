"""Crashes, shutdowns and poison: nothing accepted is lost (real nats-server, real worker
processes)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from producer.client import Client, make_request
from producer.errors import RequestFailed
from schemas import names
from schemas.errors import ErrorCode

from ..conftest import wait_for_workers

pytestmark = pytest.mark.integration


async def _ack_pending(nc: NATS, model: str) -> int:
    info = await nc.jetstream().consumer_info(names.stream_name(model), "online")
    return int(info.num_ack_pending)


async def _until(predicate: Any, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > end:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


def _completions(record: Path) -> Counter[str]:
    lines = record.read_text().splitlines() if record.exists() else []
    return Counter(line.split()[0] for line in lines)


async def test_sigkill_with_requests_in_flight_loses_nothing(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 8}
    first = start_worker(
        model_name, "tests.models:SlowModel", options=opts, JETSERVE_ACK_WAIT_S="2"
    )
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 3}) for _ in range(20)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    await _until(lambda: _ack_pending_is(nc, model_name, 8))
    first.kill()
    assert _completions(record) == Counter()  # killed before finishing anything

    start_worker(model_name, "tests.models:SlowModel", options=opts, JETSERVE_ACK_WAIT_S="2")
    results = await asyncio.wait_for(asyncio.gather(*pending), 60)
    assert [r.id for r in results] == [r.id for r in requests]
    assert set(_completions(record)) == {r.id for r in requests}
    await client.close()


async def _ack_pending_is(nc: NATS, model: str, n: int) -> bool:
    return await _ack_pending(nc, model) == n


async def test_sigterm_drains_in_flight_and_hands_nothing_back(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 4}
    first = start_worker(
        model_name, "tests.models:SlowModel", options=opts, JETSERVE_DRAIN_TIMEOUT_S="10"
    )
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 1.0}) for _ in range(12)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    await _until(lambda: _ack_pending_is(nc, model_name, 4))
    first.terminate()
    assert await asyncio.to_thread(first.wait, 30) == 0
    # The four it held were finished by it, not handed back.
    finished_by_first = set(_completions(record))
    assert len(finished_by_first) == 4
    assert "draining: 4 in flight" in first.output()

    start_worker(model_name, "tests.models:SlowModel", options=opts)
    results = await asyncio.wait_for(asyncio.gather(*pending), 60)
    assert len(results) == 12
    assert _completions(record) == Counter({r.id: 1 for r in requests})
    await client.close()


async def test_sigterm_past_the_drain_timeout_hands_work_back(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 2}
    first = start_worker(
        model_name, "tests.models:SlowModel", options=opts, JETSERVE_DRAIN_TIMEOUT_S="0.5"
    )
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 2.0}) for _ in range(2)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    await _until(lambda: _ack_pending_is(nc, model_name, 2))
    first.terminate()
    assert await asyncio.to_thread(first.wait, 30) == 0
    assert "handing back 2 requests" in first.output()
    # Handed back with a nak: the next worker gets them at once, not after ack_wait.
    start_worker(model_name, "tests.models:SlowModel", options=opts)
    results = await asyncio.wait_for(asyncio.gather(*pending), 10)
    assert {r.id for r in results} == {r.id for r in requests}
    assert set(_completions(record)) == {r.id for r in requests}
    await client.close()


async def test_poison_request_is_dead_lettered_and_others_are_served(
    nc: NATS, model_name: str, start_worker: Any
) -> None:
    """A request that kills the worker process on every delivery: after max_attempts
    crashes, its next delivery goes to the dead-letter stream with an error result."""
    env = {"JETSERVE_ACK_WAIT_S": "1", "JETSERVE_MAX_ATTEMPTS": "2"}
    worker = start_worker(model_name, "tests.models:CrashModel", **env)
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    poison = make_request(model_name, "predict", {"crash": True})
    poisoned = asyncio.create_task(client.request_obj(poison, 60))
    crashes = 0
    while not poisoned.done():
        if worker.proc.poll() is not None:  # crashed: restart it, like a supervisor would
            assert worker.proc.returncode == 17
            crashes += 1
            worker = start_worker(model_name, "tests.models:CrashModel", **env)
        await asyncio.sleep(0.1)
    with pytest.raises(RequestFailed) as info:
        await poisoned
    assert info.value.code is ErrorCode.DEAD_LETTERED
    assert crashes == 2

    ok = await client.request(model_name, "predict", {"fine": 1}, timeout_s=10)
    assert ok.output == {"fine": 1}
    js = nc.jetstream()
    dead = await js.get_last_msg(names.DLQ_STREAM, names.dlq_subject(model_name))
    assert dead.data is not None
    assert json.loads(dead.data)["id"] == poison.id
    assert dead.headers is not None
    assert dead.headers["Jetserve-Deliveries"] == "3"
    await client.close()


async def test_model_exception_is_retried_then_dead_lettered(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name, "tests.models:FailingModel", max_attempts=3)
    client = Client(nc)
    with pytest.raises(RequestFailed) as info:
        await client.request(model_name, "predict", {"fail": True}, timeout_s=20)
    assert info.value.code is ErrorCode.DEAD_LETTERED
    assert "model failed" in info.value.message
    assert (await client.request(model_name, "predict", 7, timeout_s=5)).output == 7
    info_ = await nc.jetstream().consumer_info(names.stream_name(model_name), "online")
    assert info_.num_redelivered == 0  # acked/termed: nothing left pending
    assert info_.num_ack_pending == 0
    await client.close()
