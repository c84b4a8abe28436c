"""Faults mid-batch, on a stack of its own (own nats-server and PostgreSQL, so servers can be
killed): a worker SIGKILLed with items in flight, the scheduler restarted, PostgreSQL
crashed and restarted, a webhook receiver down for a while. In each, the batch completes with
exact `request_counts`, every `custom_id` is in the output once, and nothing ran more often
than the fault explains."""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from jetserve.servers import NatsServer, PostgresServer, free_port
from schemas import names

from .conftest import BatchStack, Receiver, chat_line, jsonl, launch_stack, read_lines, wait_batch

pytestmark = [pytest.mark.integration, pytest.mark.serial]

SLOW = "f-slow"
SLOW_CAPACITY = 4


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[NatsServer, PostgresServer]]:
    tmp = Path(tempfile.mkdtemp(prefix="jetserve-faults-", dir="/var/tmp"))
    nats_server = NatsServer(tmp / "nats")
    postgres = PostgresServer(tmp / "data", durable=False)
    try:
        nats_server.start()
        postgres.start()
        yield nats_server, postgres
    finally:
        postgres.stop()
        nats_server.stop()
        shutil.rmtree(postgres.data_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def fstack(
    servers: tuple[NatsServer, PostgresServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatchStack]:
    nats_server, postgres = servers
    logs = tmp_path_factory.mktemp("batch-faults")
    workers = [(SLOW, "tests.models:SlowChatModel", _slow_options(logs))]
    with launch_stack(
        nats_server.url,
        postgres.dsn,
        logs,
        workers,
        # A killed worker's items come back after 2 s; webhooks are retried for a minute.
        worker_env={"JETSERVE_ACK_WAIT_S": "2"},
        # ack_wait 30 s (the default is 10): the recovery bounds below (20 s) then tell a
        # hand-back from results waiting out ack_wait.
        scheduler_env={
            "JETSERVE_WEBHOOK_RETRY_PERIOD_S": "60",
            "JETSERVE_SCHEDULER_ACK_WAIT_S": "30",
        },
    ) as stack:
        yield stack


def _slow_options(logs: Path) -> list[str]:
    return [f"capacity={SLOW_CAPACITY}", f"record={logs / 'slow-runs.txt'}"]


def runs(stack: BatchStack, batch_id: str) -> Counter[str]:
    """How many times the slow model finished each item of the batch (by request id)."""
    record = stack.logs / "slow-runs.txt"
    lines = record.read_text().splitlines() if record.exists() else []
    ids = (line.split()[0] for line in lines if line)
    return Counter(i for i in ids if i.startswith(f"{batch_id}-"))


def submit(stack: BatchStack, lines: list[dict[str, Any]]) -> str:
    client = stack.sdk()
    uploaded = client.files.create(file=("f.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def until(condition: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def batch_ack_pending(nats_url: str, model: str) -> int:
    async def read() -> int:
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().consumer_info(names.stream_name(model), "batch")
            return int(info.num_ack_pending)
        finally:
            await nc.close()

    return asyncio.run(read())


def check_complete(stack: BatchStack, batch_id: str, n: int, prefix: str) -> None:
    """Completed with exact counts; the output holds each custom_id once, with its answer."""
    client = stack.sdk()
    done = wait_batch(client, batch_id, {"completed", "failed", "expired"}, timeout_s=120)
    assert done.status == "completed", done
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (n, n, 0)
    out = read_lines(client, done.output_file_id)
    assert Counter(line["custom_id"] for line in out) == Counter(
        {f"{prefix}{i}": 1 for i in range(n)}
    )
    assert all(line["response"]["status_code"] == 200 for line in out)
    assert read_lines(client, done.error_file_id) == []


def test_webhook_receiver_down_for_a_while_gets_one_delivery_after_it_recovers(
    fstack: BatchStack,
) -> None:
    port = free_port()  # nothing listens here yet: connections are refused
    url = f"http://127.0.0.1:{port}/hook"
    headers = {"authorization": f"Bearer {fstack.keys['alpha']}"}
    response = httpx.post(
        f"{fstack.v1}/webhooks",
        headers=headers,
        json={"url": url, "events": ["batch.completed"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    endpoint = response.json()["id"]
    batch_id = submit(fstack, [chat_line("w0", SLOW, "hook")])
    wait_batch(fstack.sdk(), batch_id, {"completed"})

    def delivery() -> dict[str, Any]:
        rows = fstack.query(
            "SELECT state, attempts, last_status, last_error FROM webhook_deliveries "
            "WHERE endpoint_id = $1",
            endpoint,
        )
        return rows[0] if rows else {"state": None, "attempts": 0}

    until(lambda: delivery()["attempts"] >= 3, 20, "three failed attempts")
    down = delivery()
    assert down["state"] == "pending"
    assert down["last_status"] is None
    assert down["last_error"]
    receiver = Receiver(port=port, path="/hook")
    try:
        until(lambda: delivery()["state"] == "delivered", 20, "the delivery")
        time.sleep(1.5)  # nothing more once acknowledged
        assert [code for _, _, code in receiver.posts] == [200]
        ((_, body, _),) = receiver.posts
        assert batch_id.encode() in body
        row = delivery()
        assert row["attempts"] > down["attempts"]
        assert row["last_status"] == 200
        print(
            f"FIGURE webhook-down: {down['attempts']} failed attempts while down, delivered on "
            f"attempt {row['attempts']}, 1 POST received"
        )
    finally:
        receiver.close()
        httpx.delete(f"{fstack.v1}/webhooks/{endpoint}", headers=headers, timeout=30)


def test_worker_sigkill_with_batch_items_in_flight_loses_nothing(fstack: BatchStack) -> None:
    n = 60
    batch_id = submit(fstack, [chat_line(f"k{i}", SLOW, "sleep 0.2") for i in range(n)])
    until(lambda: sum(runs(fstack, batch_id).values()) >= 8, 30, "the batch to start")
    in_flight = batch_ack_pending(fstack.nats_url, SLOW)
    worker = next(w for w in fstack.workers if w.poll() is None)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    finished_before = runs(fstack, batch_id)
    assert 0 < in_flight <= SLOW_CAPACITY
    assert len(finished_before) < n
    fstack.start_worker(SLOW, "tests.models:SlowChatModel", *_slow_options(fstack.logs))
    check_complete(fstack, batch_id, n, "k")
    ran = runs(fstack, batch_id)
    assert len(ran) == n  # every item ran to completion ...
    # ... and only what the killed worker held (it may have finished one and died before
    # its result was stored) ran twice.
    assert sum(ran.values()) - n <= in_flight
    print(
        f"FIGURE batch-sigkill: {n} items, {in_flight} in flight at the SIGKILL, "
        f"{len(finished_before)} finished before; {n}/{n} completed, each in the output once, "
        f"{sum(ran.values()) - n} ran twice"
    )
    metrics = httpx.get(f"http://127.0.0.1:{fstack.metrics_port}/metrics", timeout=30).text
    assert 'jetserve_scheduler_results_total{kind="batch",outcome="ok"}' in metrics


def test_scheduler_restart_mid_batch_runs_no_item_twice(fstack: BatchStack) -> None:
    n = 80
    batch_id = submit(fstack, [chat_line(f"s{i}", SLOW, "sleep 0.1") for i in range(n)])
    until(lambda: len(runs(fstack, batch_id)) >= 10, 30, "the batch to start")
    (active,) = [p for p in fstack.schedulers if p.poll() is None]
    active.send_signal(signal.SIGTERM)
    assert active.wait(30) == 0
    time.sleep(1.0)  # no scheduler at all for a while; workers finish what they hold
    fstack.start_scheduler()
    restarted = time.monotonic()
    check_complete(fstack, batch_id, n, "s")
    # Results the stopped scheduler had been sent but not stored were handed back, not held
    # until the results consumer's ack_wait (30 s here).
    recovered_s = time.monotonic() - restarted
    assert recovered_s < 20
    ran = runs(fstack, batch_id)
    assert ran == Counter({f"{batch_id}-{i}": 1 for i in range(n)})
    print(
        f"FIGURE scheduler-restart: {n} items, scheduler stopped mid-batch and down 1 s; "
        f"completed {recovered_s:.1f} s after the restart, each item ran once"
    )


def test_postgres_crash_and_restart_mid_batch_completes_exactly(
    fstack: BatchStack, servers: tuple[NatsServer, PostgresServer]
) -> None:
    _, postgres = servers
    n = 120
    batch_id = submit(fstack, [chat_line(f"p{i}", SLOW, "sleep 0.05") for i in range(n)])
    until(lambda: len(runs(fstack, batch_id)) >= 20, 30, "the batch to start")
    postgres.kill()
    headers = {"authorization": f"Bearer {fstack.keys['alpha']}"}
    started = time.monotonic()
    during = httpx.get(f"{fstack.v1}/batches/{batch_id}", headers=headers, timeout=30)
    # A clear, retryable refusal while the database is down, not a hang.
    assert time.monotonic() - started < 15
    assert during.status_code == 503, during.text
    assert during.json()["error"]["code"] == "service_unavailable"
    assert during.headers["retry-after"]
    # Keys are looked up in the database too (this stack caches them for 0 s): the online
    # path refuses the same way while it is down.
    chat = httpx.post(
        f"{fstack.v1}/chat/completions",
        headers=headers,
        json={"model": SLOW, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert chat.status_code == 503, chat.text
    time.sleep(2.0)  # the workers keep going; results wait in the results stream
    postgres.start()
    restarted = time.monotonic()
    check_complete(fstack, batch_id, n, "p")
    # Results fetched while the database was down were handed back at once, not held until
    # the results consumer's ack_wait (30 s here).
    recovered_s = time.monotonic() - restarted
    assert recovered_s < 20
    print(
        f"FIGURE postgres-crash: {n} items, PostgreSQL SIGKILLed for 2 s mid-batch (503 "
        f"service_unavailable meanwhile); completed {recovered_s:.1f} s after its restart, "
        "each item ran once"
    )
    ran = runs(fstack, batch_id)
    assert ran == Counter({f"{batch_id}-{i}": 1 for i in range(n)})
    assert all(p.poll() is None for p in fstack.schedulers[-1:]), "the scheduler exited"
