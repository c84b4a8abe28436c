"""The official `openai` SDK against a real bridge process, real workers, real NATS and
PostgreSQL: every endpoint, and every error mapped to the SDK's exception class."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from nats.aio.client import Client as NATS

from producer.client import Client, make_request
from schemas import names

from .conftest import ECHO, MINILM, SLOW, BridgeStack

pytestmark = pytest.mark.integration


_clients: list[openai.OpenAI] = []


def sdk(stack: BridgeStack, key: str | None = None) -> openai.OpenAI:
    """A client with retries off (each error must surface as it is); closed after each test."""
    client = openai.OpenAI(base_url=stack.v1, api_key=key or stack.key, max_retries=0, timeout=30)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while _clients:
        _clients.pop().close()


def async_sdk(stack: BridgeStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.v1, api_key=stack.key, max_retries=0, timeout=30)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_chat(bridge_stack: BridgeStack) -> None:
    out = sdk(bridge_stack).chat.completions.create(
        model=ECHO, messages=user("Hello there, bridge"), max_tokens=32, temperature=0
    )
    assert out.object == "chat.completion"
    assert out.model == ECHO
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "Hello there, bridge"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert out.usage.prompt_tokens == 3
    assert out.usage.total_tokens == 6


def test_chat_stream_with_usage(bridge_stack: BridgeStack) -> None:
    stream = sdk(bridge_stack).chat.completions.create(
        model=ECHO,
        messages=user("stream this text"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream this text"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_completions_plain_and_stream(bridge_stack: BridgeStack) -> None:
    client = sdk(bridge_stack)
    out = client.completions.create(model=ECHO, prompt="complete me", max_tokens=8)
    assert out.object == "text_completion"
    assert out.choices[0].text == "complete me"
    pieces = list(client.completions.create(model=ECHO, prompt="as a stream", stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == "as a stream"
    assert pieces[-1].choices[0].finish_reason == "stop"


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_with_minilm(bridge_stack: BridgeStack) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply on Monday.",
    ]
    client = sdk(bridge_stack)
    out = client.embeddings.create(model=MINILM, input=texts)  # the SDK asks for base64
    vectors = [d.embedding for d in out.data]
    assert [d.index for d in out.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors)
    assert abs(math.sqrt(sum(x * x for x in vectors[0])) - 1.0) < 1e-3
    similar, unrelated = _cos(vectors[0], vectors[1]), _cos(vectors[0], vectors[2])
    assert similar > 0.5 > unrelated
    assert out.usage.prompt_tokens > len(texts)
    floats = client.embeddings.create(model=MINILM, input=texts[0], encoding_format="float")
    assert _cos(floats.data[0].embedding, vectors[0]) > 0.9999


def test_models_list(bridge_stack: BridgeStack) -> None:
    ids = {m.id for m in sdk(bridge_stack).models.list()}
    assert {ECHO, SLOW, MINILM} <= ids


def test_health_metrics_openapi(bridge_stack: BridgeStack) -> None:
    with httpx.Client(base_url=bridge_stack.url, timeout=30) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert ready["nats_connected"] is True
        assert ready["workers"][ECHO] is True
        doc = http.get("/openapi.json").json()
        op = doc["paths"]["/v1/chat/completions"]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ChatCompletionRequest")
        assert "temperature" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
        metrics = http.get("/metrics").text
        assert 'jetserve_http_requests_total{route="/v1/chat/completions",status="200"}' in metrics


# ---- errors -------------------------------------------------------------------------


def test_400_names_the_parameter(bridge_stack: BridgeStack) -> None:
    client = sdk(bridge_stack)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ECHO, messages=user("x"), temperature=5)
    assert _error(info.value)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ECHO, messages=user("x"), n=2)
    assert _error(info.value)["param"] == "n"
    bad: Any = [{"role": "user"}, {"x": 1}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ECHO, messages=bad)
    assert _error(info.value)["param"] == "messages[1].role"
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MINILM, input=[[1, 2, 3]])
    assert _error(info.value)["param"] == "input"


def test_400_from_the_worker(bridge_stack: BridgeStack) -> None:
    # The slow model serves chat and completion only: an embedding is refused by the worker.
    with pytest.raises(openai.BadRequestError) as info:
        sdk(bridge_stack).embeddings.create(model=SLOW, input="x", encoding_format="float")
    assert _error(info.value)["code"] == "unsupported_kind"


def test_401_missing_invalid_and_revoked_keys(bridge_stack: BridgeStack) -> None:
    with httpx.Client(base_url=bridge_stack.v1, timeout=30) as http:
        r = http.post("/chat/completions", json={"model": ECHO, "messages": user("x")})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(bridge_stack, key="js-not-a-real-key").chat.completions.create(
            model=ECHO, messages=user("x")
        )
    with pytest.raises(openai.AuthenticationError):
        sdk(bridge_stack, key="js-not-a-real-key").models.list()

    async def new_then_revoke() -> str:
        from scheduler.store.keys import create_key, revoke_key
        from scheduler.store.pool import create_pool

        pool = await create_pool(bridge_stack.dsn)
        try:
            new = await create_key(pool, "other")
            ok = sdk(bridge_stack, key=new.secret)
            await asyncio.to_thread(ok.chat.completions.create, model=ECHO, messages=user("x"))
            assert await revoke_key(pool, new.info.id)
            return new.secret
        finally:
            await pool.close()

    revoked = asyncio.run(new_then_revoke())
    with pytest.raises(openai.AuthenticationError):  # the test bridge caches keys for 0 s
        sdk(bridge_stack, key=revoked).chat.completions.create(model=ECHO, messages=user("x"))


@pytest.mark.parametrize("model", ["no-such-model", "a.b", "*", ">", "has space", "x" * 80])
def test_404_unknown_model(bridge_stack: BridgeStack, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(bridge_stack).chat.completions.create(model=model, messages=user("x"))
    error = _error(info.value)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_413_body_too_large(bridge_stack: BridgeStack) -> None:
    big = {"model": ECHO, "messages": user("x" * 70_000)}  # the test bridge allows 64 KiB
    headers = {"Authorization": f"Bearer {bridge_stack.key}"}
    r = httpx.post(f"{bridge_stack.v1}/chat/completions", json=big, headers=headers, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def endless() -> Any:  # no Content-Length: refused while streaming, not after
        yield b'{"model": "' + ECHO.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(1000):
            yield b"y" * 1024

    r = httpx.post(
        f"{bridge_stack.v1}/chat/completions", content=endless(), headers=headers, timeout=30
    )
    assert r.status_code == 413


async def _stream_without_workers(nc: NATS, inproc_worker: Any, **config: Any) -> str:
    model = f"t-{uuid.uuid4().hex[:10]}"
    worker = await inproc_worker(model, **config)  # creates the stream ...
    await worker.stop()  # ... and leaves it without workers
    return model


async def test_429_backlog_full_with_retry_after(
    bridge_stack: BridgeStack, nc: NATS, inproc_worker: Any
) -> None:
    model = await _stream_without_workers(nc, inproc_worker, max_backlog=1)
    await Client(nc).submit(make_request(model, "chat", {"messages": user("fill")}))
    async with async_sdk(bridge_stack) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=model, messages=user("x"))
    assert info.value.response.headers["retry-after"] == "1"
    assert _error(info.value)["code"] == "backlog_full"


async def test_503_no_workers_and_the_request_never_runs_later(
    bridge_stack: BridgeStack, nc: NATS, inproc_worker: Any
) -> None:
    model = await _stream_without_workers(nc, inproc_worker)
    started = time.monotonic()
    async with async_sdk(bridge_stack) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model=model, messages=user("x"))
    assert info.value.status_code == 503
    assert _error(info.value)["code"] == "no_workers"
    assert time.monotonic() - started < 10  # JETSERVE_NO_WORKER_TIMEOUT_S=1 + a ping
    info_ = await nc.jetstream().stream_info(names.stream_name(model))
    assert info_.state.messages == 0  # deleted: a worker starting later will not run it


def test_504_on_deadline(bridge_stack: BridgeStack) -> None:
    client = sdk(bridge_stack)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model=SLOW, messages=user("sleep 3"), extra_headers={"X-Jetserve-Timeout-S": "0.5"}
        )
    assert info.value.status_code == 504
    assert _error(info.value)["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 2.5
    # The slot was freed (cancelled), so the next request is served at once.
    out = client.chat.completions.create(model=SLOW, messages=user("quick"))
    assert out.choices[0].message.content == "quick"
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_cancels_the_running_request(bridge_stack: BridgeStack, stream: bool) -> None:
    """The slow model holds one request at a time: unless the disconnect cancelled the
    first (30 s) request, the second would wait for it."""
    body = {"model": SLOW, "messages": user("sleep 30"), "stream": stream}
    headers = {"Authorization": f"Bearer {bridge_stack.key}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{bridge_stack.v1}/chat/completions", json=body, headers=headers, timeout=1)
    started = time.monotonic()
    out = sdk(bridge_stack).chat.completions.create(model=SLOW, messages=user("next"))
    assert out.choices[0].message.content == "next"
    assert time.monotonic() - started < 5
    assert "cancelled running request" in bridge_stack.slow_log.read_text()


def test_idempotency_key_runs_once_sequential_and_concurrent(bridge_stack: BridgeStack) -> None:
    client = sdk(bridge_stack)

    def post(key: str) -> str:
        out = client.chat.completions.with_raw_response.create(
            model=SLOW, messages=user("sleep 0.5"), extra_headers={"Idempotency-Key": key}
        )
        return out.text

    before = len(bridge_stack.slow_runs())
    key = f"seq-{uuid.uuid4().hex}"
    first = post(key)
    time.sleep(1.1)  # `created` (whole seconds) must still match
    second = post(key)
    assert first == second
    assert json.loads(first)["choices"][0]["message"]["content"] == "slept 0.5"
    key = f"conc-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(3) as pool:
        bodies = list(pool.map(post, [key] * 3))
    assert bodies[0] == bodies[1] == bodies[2]
    time.sleep(0.5)
    runs = bridge_stack.slow_runs()[before:]
    assert len(runs) == 2, runs  # one run per key


def test_idempotency_key_is_tenant_scoped(bridge_stack: BridgeStack) -> None:
    from producer.http.idempotency import token

    assert token("acme", "k") != token("other", "k")
    assert names.validate_request_id(token("acme", "k" * 256))
