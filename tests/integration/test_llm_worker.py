"""The engine behind a real worker and nats-server: streaming, cancel, limits, deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import Client, make_request
from producer.errors import RequestFailed
from schemas.errors import ErrorCode
from schemas.messages import FinalResult, StreamChunk
from workers.config import ModelSpec, WorkerConfig
from workers.worker import Worker, build_backend

from ..conftest import wait_for_workers

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "Tell me about the weather."}]}


@pytest.fixture
async def llm_worker(
    nats_server: NatsServer, nc: NATS, model_name: str, tiny_model_dir: Path
) -> AsyncIterator[Worker]:
    spec = ModelSpec(
        name=model_name,
        engine="llm",
        path=str(tiny_model_dir),
        dtype="float32",
        capacity=8,
        options={"kv_cache_mib": 16, "max_model_len": 768},
    )
    backend = await asyncio.to_thread(build_backend, spec)
    worker = Worker(spec, WorkerConfig(nats_url=nats_server.url), backend)
    task = asyncio.create_task(worker.run())
    await wait_for_workers(nc, model_name, 1)
    yield worker
    worker.request_stop()
    await asyncio.wait_for(task, 30)


async def test_stream_over_nats(nc: NATS, model_name: str, llm_worker: Worker) -> None:
    client = Client(nc)
    params = {"temperature": 0, "max_tokens": 20, "ignore_eos": True}
    items = [i async for i in client.stream(model_name, "chat", CHAT, parameters=params)]
    final = items[-1]
    assert isinstance(final, FinalResult)
    chunks = [i for i in items if isinstance(i, StreamChunk)]
    assert len(chunks) > 1  # tokens arrive as they are made, not all at the end
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert "".join(c.delta for c in chunks) == final.output["text"]
    assert final.finish_reason == "length"
    assert final.usage.completion_tokens == 20
    assert final.timings.ttft_ms is not None
    assert final.timings.tpot_ms is not None
    assert final.timings.ttft_ms <= final.timings.e2e_ms
    # The same request without streaming gives the same (greedy) text.
    plain = await client.request(model_name, "chat", CHAT, parameters=params)
    assert plain.output["text"] == final.output["text"]
    await client.close()


async def test_completion_with_token_ids_and_stop(
    nc: NATS, model_name: str, llm_worker: Worker
) -> None:
    client = Client(nc)
    free = await client.request(
        model_name,
        "completion",
        {"prompt": [5, 6, 7, 8]},
        parameters={"temperature": 0, "max_tokens": 30, "ignore_eos": True},
    )
    text = free.output["text"]
    stop = text[10:13]
    cut = await client.request(
        model_name,
        "completion",
        {"prompt": [5, 6, 7, 8]},
        parameters={"temperature": 0, "max_tokens": 30, "stop": [stop], "ignore_eos": True},
    )
    assert cut.finish_reason == "stop"
    assert cut.output["text"] == text[: text.index(stop)]
    await client.close()


async def _stats_until(worker: Worker, predicate: Callable[[Any], bool]) -> None:
    end = time.monotonic() + 10
    while not predicate(worker.backend.stats()):
        assert time.monotonic() < end, worker.backend.stats()
        await asyncio.sleep(0.05)


async def test_cancel_frees_the_slot(nc: NATS, model_name: str, llm_worker: Worker) -> None:
    client = Client(nc)
    stream = client.stream(
        model_name,
        "chat",
        CHAT,
        parameters={"temperature": 0, "max_tokens": 200, "ignore_eos": True},
    )
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()  # closing the iterator publishes the cancel
    await _stats_until(llm_worker, lambda s: s.running == 0 and s.waiting == 0)
    await client.close()


async def test_prompt_longer_than_the_context(
    nc: NATS, model_name: str, llm_worker: Worker
) -> None:
    client = Client(nc)
    with pytest.raises(RequestFailed) as info:
        await client.request(model_name, "completion", {"prompt": list(range(5, 605)) * 2})
    assert info.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    with pytest.raises(RequestFailed) as info:
        await client.request(
            model_name, "completion", {"prompt": "hi"}, parameters={"max_tokens": 1000}
        )
    assert info.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    await client.close()


async def test_cached_prompt_tokens_in_usage(nc: NATS, model_name: str, llm_worker: Worker) -> None:
    """The second request with the same 140-token prompt reuses its first two blocks (64
    positions each, the default)."""
    client = Client(nc)
    prompt = {"prompt": list(range(20, 160))}
    params = {"temperature": 0, "max_tokens": 4, "ignore_eos": True}
    first = await client.request(model_name, "completion", prompt, parameters=params)
    second = await client.request(model_name, "completion", prompt, parameters=params)
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == 128
    assert second.output["text"] == first.output["text"]
    stats = llm_worker.backend.stats()
    assert stats is not None
    assert stats.prefix_cache_queries_tokens == 280
    assert stats.prefix_cache_hits_tokens == 128
    assert stats.kv_blocks_total > 0
    await client.close()


async def test_deadline_returns_partial_output(
    nc: NATS, model_name: str, llm_worker: Worker
) -> None:
    """The engine stops a request at its deadline and sends what it has, finish 'deadline'."""
    replies = await nc.subscribe("deadline.replies")
    request = make_request(
        model_name,
        "completion",
        {"prompt": "Once upon a time"},
        parameters={"temperature": 0, "max_tokens": 250, "ignore_eos": True},
        timeout_s=0.3,
    )
    await Client(nc).submit(request, reply_to="deadline.replies")
    reply = json.loads((await replies.next_msg(timeout=10)).data)
    assert reply["type"] == "result.v1", reply
    assert reply["finish_reason"] == "deadline"
    assert 0 < reply["usage"]["completion_tokens"] < 250


async def test_structured_output_over_nats(nc: NATS, model_name: str, llm_worker: Worker) -> None:
    """The NATS path takes the same fields as HTTP: response_format and tools."""
    client = Client(nc)
    schema = {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    for seed in range(5):
        result = await client.request(
            model_name,
            "chat",
            {**CHAT, "response_format": fmt},
            parameters={"temperature": 1.0, "seed": seed},
        )
        value = json.loads(result.output["text"])
        assert set(value) == {"ok", "n"}
        assert isinstance(value["ok"], bool)
        assert 0 <= value["n"] <= 9
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"x": {"enum": [1, 2]}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
    }
    called = await client.request(
        model_name,
        "chat",
        {**CHAT, "tools": [tool], "tool_choice": "required"},
        parameters={"temperature": 1.0, "seed": 3},
    )
    assert called.finish_reason == "tool_calls"
    (call,) = called.output["tool_calls"][:1]
    assert call["function"]["name"] == "f"
    assert json.loads(call["function"]["arguments"])["x"] in (1, 2)
    with pytest.raises(RequestFailed) as info:
        await client.request(model_name, "chat", {**CHAT, "response_format": {"type": "bogus"}})
    assert info.value.code is ErrorCode.INVALID_REQUEST
    await client.close()
