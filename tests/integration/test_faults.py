"""Crashes, shutdowns and poison: nothing accepted is lost (real nats-server, real worker
processes)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import Client, make_request
from producer.errors import RequestFailed
from schemas import names
from schemas.errors import ErrorCode
from schemas.messages import FinalResult, StreamChunk

from ..conftest import REPO, child_env, wait_for_workers

pytestmark = [pytest.mark.integration, pytest.mark.serial]


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
    opts = {"record": str(record), "capacity": 9}
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
    print("FIGURE online-sigkill: 20 requests, 8 in flight at the SIGKILL; 20/20 completed")
    await client.close()


async def test_a_restarted_worker_runs_the_bystanders_of_a_crash_in_two_groups(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    """Target (a)'s mechanism, bounded: a worker SIGKILLed holding 32 requests, 16 more
    queued. Its replacement's first pull brings the 32 redelivered (suspects) and first
    deliveries together; the 32 run as two groups of 16, half of those that crashed together
    (they ran as 16, 8, 4, 2, 1 and 1, one group after another), and no first delivery starts
    while the redeliveries are looked up (one used to, and the quarantine waited for it)."""
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 33}
    env = {"JETSERVE_ACK_WAIT_S": "1", "JETSERVE_LOG_LEVEL": "INFO"}
    first = start_worker(model_name, "tests.models:SlowModel", options=opts, **env)
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 2.0, "n": i}) for i in range(48)]
    pending = [asyncio.create_task(client.request_obj(r, 90)) for r in requests]
    await _until(lambda: _ack_pending_is(nc, model_name, 32))
    first.kill()
    await asyncio.sleep(1.5)  # past ack_wait: all 32 are due for redelivery, as after a load
    second = start_worker(model_name, "tests.models:SlowModel", options=opts, **env)
    await asyncio.wait_for(asyncio.gather(*pending), 90)
    assert set(_completions(record)) == {r.id for r in requests}
    log = second.log.read_text()
    groups = [int(n) for n in re.findall(r"quarantine: a group of (\d+) suspects", log)]
    assert groups == [16, 16], log[-2000:]
    print(f"FIGURE crash-bystanders: 32 redelivered after a SIGKILL ran as groups {groups}")
    await client.close()


# Each worker's capacity is one more than the requests it should hold from the online
# backlog: one credit always stays on the priority consumer.
async def _ack_pending_is(nc: NATS, model: str, n: int) -> bool:
    return await _ack_pending(nc, model) == n


async def test_sigterm_drains_in_flight_and_hands_nothing_back(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 5}
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


async def test_a_request_running_past_ack_wait_while_its_worker_drains_runs_once(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    """The draining worker keeps what it runs alive: a request of 3.5 x ack_wait, begun
    before the SIGTERM, is not delivered to the other worker meanwhile."""
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 2}
    env = {"JETSERVE_ACK_WAIT_S": "1", "JETSERVE_DRAIN_TIMEOUT_S": "15"}
    first = start_worker(model_name, "tests.models:SlowModel", options=opts, **env)
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    request = make_request(model_name, "predict", {"sleep_s": 3.5})
    pending = asyncio.create_task(client.request_obj(request, 60))
    await _until(lambda: _ack_pending_is(nc, model_name, 1))
    start_worker(model_name, "tests.models:SlowModel", options=opts, **env)
    await wait_for_workers(nc, model_name, 2)
    first.terminate()
    result = await asyncio.wait_for(pending, 30)
    assert result.id == request.id
    assert await asyncio.to_thread(first.wait, 30) == 0
    assert "draining: 1 in flight" in first.output()
    info = await nc.jetstream().consumer_info(names.stream_name(model_name), "online")
    assert info.delivered.consumer_seq == 1  # delivered once: never to the other worker
    assert _completions(record) == Counter({request.id: 1})
    await client.close()


async def test_sigterm_past_the_drain_timeout_hands_work_back(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    """Target (d): 32 requests handed back by a scale-down past its drain timeout are no
    suspects: the next worker serves them at once (not after ack_wait) and side by side (not
    one by one, which would take 32 x 2 s)."""
    record = tmp_path / "done.txt"
    # 33: one slot of credit stays on the priority consumer, 32 hold the online requests.
    opts = {"record": str(record), "capacity": 33}
    first = start_worker(
        model_name, "tests.models:SlowModel", options=opts, JETSERVE_DRAIN_TIMEOUT_S="0.5"
    )
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 2.0}) for _ in range(32)]
    pending = [asyncio.create_task(client.request_obj(r, 60)) for r in requests]
    await _until(lambda: _ack_pending_is(nc, model_name, 32))
    first.terminate()
    assert await asyncio.to_thread(first.wait, 30) == 0
    assert "handing back 32 requests" in first.output()
    start_worker(model_name, "tests.models:SlowModel", options=opts)
    started = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*pending), 12)
    elapsed_s = time.monotonic() - started
    assert {r.id for r in results} == {r.id for r in requests}
    assert _completions(record) == Counter({r.id: 1 for r in requests})
    print(
        f"FIGURE handback-32: 32 requests of 2 s handed back; all served {elapsed_s:.1f} s "
        "after the next worker was started (its start included)"
    )
    await client.close()


async def test_a_killed_workers_requests_are_served_by_the_other_within_5_s(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    """Target (b): two workers of a model with a fixed 200 ms service time; one is SIGKILLed
    mid-load. Every request is answered within 5 s of the kill (the dead worker's after the
    3 s ack_wait, in quarantine groups), nothing lost, none run twice."""
    record = tmp_path / "done.txt"
    opts = {"record": str(record), "capacity": 8}
    workers = [start_worker(model_name, "tests.models:SlowModel", options=opts) for _ in range(2)]
    await wait_for_workers(nc, model_name, 2)
    client = Client(nc)
    requests = [make_request(model_name, "predict", {"sleep_s": 0.2, "n": i}) for i in range(48)]
    answered: dict[str, float] = {}

    async def ask(r: Any) -> None:
        await client.request_obj(r, 30)
        answered[r.id] = time.monotonic()

    pending = [asyncio.create_task(ask(r)) for r in requests]
    await asyncio.sleep(0.5)  # both busy, a backlog left
    workers[0].kill()
    killed = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*pending), 30)
    worst_s = max(answered.values()) - killed
    done = _completions(record)
    assert set(done) == {r.id for r in requests}
    # A request may run twice only if its worker died between finishing and acking.
    assert sum(done.values()) - len(requests) <= 8
    assert worst_s < 5.0
    print(
        f"FIGURE sigkill-two-workers: 48 requests of 200 ms; last answered {worst_s:.1f} s "
        "after the SIGKILL of one of two workers"
    )
    await client.close()


async def test_poison_request_is_dead_lettered_and_others_are_served(
    nc: NATS, model_name: str, start_worker: Any
) -> None:
    """A request that kills the worker process on every delivery: after max_attempts
    crashes while it ran alone, its next delivery goes to the dead-letter stream with an error
    result. Its first crash, on a first delivery (which may run beside others), is free."""
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
    assert crashes == 3
    print("FIGURE poison: 3 crashes (1 free, 2 alone), dead-lettered on delivery 4; 20 served")

    # Other requests are served, by the restarted worker, as before.
    oks = await asyncio.gather(
        *[client.request(model_name, "predict", {"fine": i}, timeout_s=10) for i in range(20)]
    )
    assert [ok.output for ok in oks] == [{"fine": i} for i in range(20)]
    js = nc.jetstream()
    dead = await js.get_last_msg(names.DLQ_STREAM, names.dlq_subject(model_name))
    assert dead.data is not None
    assert json.loads(dead.data)["id"] == poison.id
    assert dead.headers is not None
    assert dead.headers["Jetserve-Deliveries"] == "3"  # attempts: delivery 4 less 1 free
    # Only the poison was dead-lettered; nothing is left pending on the model's stream.
    dlq = await js.stream_info(names.DLQ_STREAM, subjects_filter=names.dlq_subject(model_name))
    assert dlq.state.subjects == {names.dlq_subject(model_name): 1}
    info = await js.consumer_info(names.stream_name(model_name), "online")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    await client.close()


async def test_model_exception_is_retried_then_dead_lettered(
    nc: NATS, model_name: str, inproc_worker: Any
) -> None:
    await inproc_worker(model_name, "tests.models:FailingModel", max_attempts=3)
    client = Client(nc)
    with pytest.raises(RequestFailed) as info:
        await client.request(model_name, "predict", {"fail": True}, timeout_s=20)
    assert info.value.code is ErrorCode.DEAD_LETTERED
    # The requester gets a summary; the model's own text is kept for operators only.
    assert "RuntimeError" in info.value.message
    assert "RuntimeError: model failed" not in info.value.message
    parked = await nc.jetstream().get_last_msg(names.DLQ_STREAM, names.dlq_subject(model_name))
    assert parked.headers is not None
    assert parked.headers[names.Header.ERROR_MESSAGE] == "RuntimeError: model failed"
    assert (await client.request(model_name, "predict", 7, timeout_s=5)).output == 7
    info_ = await nc.jetstream().consumer_info(names.stream_name(model_name), "online")
    assert info_.num_redelivered == 0  # acked/termed: nothing left pending
    assert info_.num_ack_pending == 0
    await client.close()


# ---- SIGTERM scale-down of an LLM worker during a stream ------------------------------


def _llm_worker(
    nats_url: str, model: str, tiny_model_dir: Path, tmp_path: Path, drain_timeout_s: float
) -> subprocess.Popen[bytes]:
    """A `jetserve worker` process serving the tiny random Llama on the engine."""
    models = tmp_path / f"models-{model}.toml"
    models.write_text(
        f'[[models]]\nname = "{model}"\nengine = "llm"\npath = "{tiny_model_dir}"\n'
        'dtype = "float32"\ncapacity = 4\n\n[models.options]\nkv_cache_mib = 16\n'
        "max_model_len = 1024\n"
    )
    log = tmp_path / f"llm-{model}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jetserve",
                "worker",
                "--model",
                model,
                "--models-file",
                str(models),
            ],
            env=child_env(nats_url, JETSERVE_DRAIN_TIMEOUT_S=str(drain_timeout_s)),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def _llm_logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("llm-*.log")))


LONG = {"temperature": 0, "max_tokens": 300, "ignore_eos": True}
PROMPT = {"messages": [{"role": "user", "content": "Tell me a long story."}]}


async def _stream_through_sigterm(
    client: Client, model: str, worker: subprocess.Popen[bytes], after_sigterm: Any
) -> tuple[list[StreamChunk], FinalResult]:
    """Stream LONG; SIGTERM the worker once the first chunks have arrived; then
    `after_sigterm()`. Returns the chunks the client saw and the final result."""
    chunks: list[StreamChunk] = []
    final: FinalResult | None = None
    async with asyncio.timeout(90):
        async for item in client.stream(model, "chat", PROMPT, parameters=LONG, timeout_s=90):
            if isinstance(item, StreamChunk):
                chunks.append(item)
                if len(chunks) == 5:
                    worker.send_signal(signal.SIGTERM)
                    await after_sigterm()
            else:
                final = item
    assert final is not None
    return chunks, final


@pytest.fixture
def llm_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_sigterm_of_an_llm_worker_mid_stream_finishes_within_the_drain_timeout(
    nats_server: NatsServer,
    nc: NATS,
    model_name: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    llm_procs: list[subprocess.Popen[bytes]],
) -> None:
    worker = _llm_worker(nats_server.url, model_name, tiny_model_dir, tmp_path, 30)
    llm_procs.append(worker)
    await wait_for_workers(nc, model_name, 1, timeout_s=60)
    client = Client(nc)

    async def nothing() -> None:
        return None

    started = time.monotonic()
    chunks, final = await _stream_through_sigterm(client, model_name, worker, nothing)
    assert await asyncio.to_thread(worker.wait, 30) == 0
    assert time.monotonic() - started < 30  # within the drain timeout
    assert "draining: 1 in flight" in _llm_logs(tmp_path)
    assert {c.attempt for c in chunks} == {1}  # finished by the worker being stopped
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks) == final.output["text"]
    assert final.usage.completion_tokens == LONG["max_tokens"]
    assert final.finish_reason == "length"
    print(
        f"FIGURE llm-drain: SIGTERM after 5 of {len(chunks)} chunks; finished by the draining "
        f"worker in {time.monotonic() - started:.1f} s (drain timeout 30 s), exit 0"
    )
    await client.close()


async def test_sigterm_of_an_llm_worker_past_the_drain_timeout_hands_the_stream_over(
    nats_server: NatsServer,
    nc: NATS,
    model_name: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    llm_procs: list[subprocess.Popen[bytes]],
) -> None:
    first = _llm_worker(nats_server.url, model_name, tiny_model_dir, tmp_path, 0.2)
    llm_procs.append(first)
    await wait_for_workers(nc, model_name, 1, timeout_s=60)
    client = Client(nc)

    async def scale_out() -> None:
        llm_procs.append(_llm_worker(nats_server.url, model_name, tiny_model_dir, tmp_path, 30))

    chunks, final = await _stream_through_sigterm(client, model_name, first, scale_out)
    assert await asyncio.to_thread(first.wait, 30) == 0
    assert "handing back 1 requests" in _llm_logs(tmp_path)
    # The client saw one complete stream: attempt 1's first chunks, then attempt 2's from
    # where they left off (greedy: the same tokens), nothing repeated, nothing missing.
    assert {c.attempt for c in chunks} == {1, 2}
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks) == final.output["text"]
    assert final.usage.completion_tokens == LONG["max_tokens"]
    first_attempt = sum(1 for c in chunks if c.attempt == 1)
    print(
        f"FIGURE llm-handover: drain timeout 0.2 s; {first_attempt} chunks from the stopped "
        f"worker, {len(chunks) - first_attempt} from the next; one stream of "
        f"{final.usage.completion_tokens} tokens, nothing repeated or missing"
    )
    await client.close()


async def test_poison_request_with_others_in_flight_does_not_take_them_down(
    nc: NATS, model_name: str, start_worker: Any, tmp_path: Path
) -> None:
    """Target (c): 31 requests in flight when a poison request crashes the worker are
    redelivered with it as suspects. They run in quarantine groups that split on each crash,
    so the poison request is isolated in about log2(32) crashes (not 32), dead-lettered after
    `max_attempts` crashes alone, and none of the 31 is dead-lettered or run twice."""
    record = tmp_path / "done.txt"
    env = {"JETSERVE_ACK_WAIT_S": "1", "JETSERVE_MAX_ATTEMPTS": "2"}
    opts = {"record": str(record)}
    cls = "tests.models:WiderCrashModel"
    worker = start_worker(model_name, cls, options=opts, **env)
    await wait_for_workers(nc, model_name, 1)
    client = Client(nc)
    good = [make_request(model_name, "predict", {"sleep_s": 1.0, "n": i}) for i in range(31)]
    poison = make_request(model_name, "predict", {"crash": True})
    tasks = [asyncio.create_task(client.request_obj(r, 90)) for r in good]
    await _until(lambda: _ack_pending_is(nc, model_name, 31))
    poisoned = asyncio.create_task(client.request_obj(poison, 90))
    crashes = 0
    started = time.monotonic()
    async with asyncio.timeout(90):
        while not (poisoned.done() and all(t.done() for t in tasks)):
            if worker.proc.poll() is not None:
                crashes += 1
                worker = start_worker(model_name, cls, options=opts, **env)
            await asyncio.sleep(0.05)
    elapsed_s = time.monotonic() - started
    with pytest.raises(RequestFailed) as info:
        await poisoned
    assert info.value.code is ErrorCode.DEAD_LETTERED
    results = [t.result() for t in tasks if not t.exception()]
    failed = [t.exception() for t in tasks if t.exception()]
    assert failed == []
    assert [r.output for r in results] == [r.payload for r in good]
    assert _completions(record) == Counter({r.id: 1 for r in good})  # each ran once
    # The first crash, one per halving of 32, then max_attempts crashes alone.
    assert 3 <= crashes <= 1 + 5 + 2
    # Not one by one: the 31 alone would take 31 s (1 s each) after the first crash.
    assert elapsed_s < 25
    subject = names.dlq_subject(model_name)
    dlq = await nc.jetstream().stream_info(names.DLQ_STREAM, subjects_filter=subject)
    assert dlq.state.subjects == {subject: 1}  # the poison request alone
    print(
        f"FIGURE poison-bystanders: {len(good)} requests in flight beside a poison request; "
        f"{crashes} crashes in {elapsed_s:.1f} s, the poison dead-lettered, "
        f"{len(results)}/{len(good)} served, each once"
    )
    await client.close()
