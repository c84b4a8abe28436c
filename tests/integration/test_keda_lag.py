"""The queue as KEDA sees it (real nats-server, its monitoring port, real worker process):
the consumers named in the rendered ScaledObject exist once `jetserve provision` ran, before
any worker; the lag is the backlog while workers are busy; a worker holds at most its
capacity; the lag returns to 0 when drained."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetserve.k8s import OVERLAYS, RenderOptions, render_file
from jetserve.servers import NatsServer
from producer.client import Client, make_request
from schemas import names
from workers.intake import priority_reserve

from ..conftest import REPO, child_env, wait_for_workers
from ..keda import StreamNotFound, keda_lag

pytestmark = pytest.mark.integration

CAPACITY = 3
#: What a worker takes from an online backlog: its capacity less the credit it always keeps
#: on the priority consumer.
ONLINE_HELD = CAPACITY - priority_reserve(CAPACITY)


def _models_file(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f'[[models]]\nname = "{model}"\nclass = "tests.models:SlowModel"\n'
        f"capacity = {CAPACITY}\noptions = {{ capacity = {CAPACITY} }}\n"
    )
    return path


def _triggers(models_file: Path) -> list[dict[str, str]]:
    # The prod overlay with this test server's account (no accounts: `$G`; prod's NATS has
    # JETSERVE, tests/integration/test_nats_prod_values.py).
    files = render_file(models_file, RenderOptions(OVERLAYS["prod"], nats_account="$G"))
    scaled = [d for docs in files.values() for d in docs if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1
    return [t["metadata"] for t in scaled[0]["spec"]["triggers"]]


async def _reading(server: NatsServer, trigger: dict[str, str]) -> Any:
    return await asyncio.to_thread(
        keda_lag, server.monitor_url, trigger["account"], trigger["stream"], trigger["consumer"]
    )


async def test_provision_creates_the_scaledobjects_consumers_before_any_worker(
    nats_server: NatsServer, nc: NATS, model_name: str, tmp_path: Path
) -> None:
    models_file = _models_file(tmp_path, model_name)
    triggers = _triggers(models_file)
    assert {t["consumer"] for t in triggers} == {"priority", "online", "batch"}
    with pytest.raises(StreamNotFound):  # what KEDA would see before provisioning
        await _reading(nats_server, triggers[0])

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetserve", "provision", "--models-file", str(models_file)],
        env=child_env(nats_server.url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # No worker of this model exists: the consumers come from `jetserve provision` alone.
    with pytest.raises(TimeoutError):
        await wait_for_workers(nc, model_name, 1, timeout_s=0.5)
    for trigger in triggers:
        reading = await _reading(nats_server, trigger)
        assert reading.consumer_found, trigger
        assert reading.lag == 0


async def test_lag_is_the_backlog_and_a_worker_holds_at_most_its_capacity(
    nats_server: NatsServer, nc: NATS, model_name: str, tmp_path: Path, start_worker: Any
) -> None:
    triggers = {t["consumer"]: t for t in _triggers(_models_file(tmp_path, model_name))}
    start_worker(model_name, "tests.models:SlowModel", options={"capacity": CAPACITY})
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    total = 12
    requests = [make_request(model_name, "predict", {"sleep_s": 1.0}) for _ in range(total)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    # Wait until everything is stored and the worker is full.
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while True:
        first = await _reading(nats_server, triggers["online"])
        if first.num_ack_pending == ONLINE_HELD and first.stream_messages == total:
            break
        assert loop.time() < end, first
        await asyncio.sleep(0.02)
    # Nothing finished yet (1 s of work): the lag is the whole backlog.
    assert first.lag == total
    assert first.num_pending == total - ONLINE_HELD

    readings = []
    while not all(t.done() for t in pending):
        reading = await _reading(nats_server, triggers["online"])
        if reading.num_ack_pending > ONLINE_HELD:
            # nats-server queues acks apart from pull requests: a pull sent after an ack
            # (same connection, in order) can be served before the ack is counted, for a
            # moment. A worker that holds more stays over; one that does not is under by
            # the next reading.
            await asyncio.sleep(0.2)
            reading = await _reading(nats_server, triggers["online"])
        readings.append(reading)
        assert reading.num_ack_pending <= ONLINE_HELD  # the worker never holds more
        # Work-queue stream: every stored request is waiting or in flight, and nothing else.
        assert reading.lag == reading.stream_messages
        await asyncio.sleep(0.05)
    results = await asyncio.gather(*pending)
    assert [r.id for r in results] == [r.id for r in requests]
    lags = [r.lag for r in readings]
    assert lags == sorted(lags, reverse=True)  # the backlog only drains
    assert len(set(lags)) >= 3  # seen at several depths on the way down

    final = await _reading(nats_server, triggers["online"])
    assert (final.lag, final.num_pending, final.num_ack_pending) == (0, 0, 0)
    assert (await _reading(nats_server, triggers["batch"])).lag == 0
    await client.close()


async def test_lag_counts_messages_held_by_every_replica(
    nats_server: NatsServer, nc: NATS, model_name: str, start_worker: Any
) -> None:
    for _ in range(2):
        start_worker(model_name, "tests.models:SlowModel", options={"capacity": 2})
    await wait_for_workers(nc, model_name, 2)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 1.0}) for _ in range(7)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    stream, consumer = names.stream_name(model_name), names.consumer_name(names.Priority.ONLINE)
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while True:
        reading = await asyncio.to_thread(keda_lag, nats_server.monitor_url, "$G", stream, consumer)
        # Two replicas of capacity 2, each keeping one credit on the priority consumer.
        held = 2 * (2 - priority_reserve(2))
        assert reading.num_ack_pending <= held
        if reading.num_ack_pending == held:
            break
        assert loop.time() < end, reading
        await asyncio.sleep(0.02)
    assert reading.lag == 7
    await asyncio.wait_for(asyncio.gather(*pending), 60)
    await client.close()
