"""The handler against recording fakes: every path ends in exactly one ack, nak or term."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, InferenceRequest
from workers.backend import ChunkSink
from workers.cancels import CancelRegistry
from workers.errors import EngineDeadError, PermanentError
from workers.handler import Handler
from workers.metrics import WorkerMetrics

from .fakes import FakeBackend, FakeMsg, FakePublisher

REPLY = {"Jetserve-Reply-To": "_INBOX.test.r1"}


def body(**fields: Any) -> bytes:
    b: dict[str, Any] = {
        "type": "request.v1",
        "id": "r1",
        "model": "m",
        "kind": "predict",
        "payload": {"x": 1},
    }
    b.update(fields)
    return msgspec.json.encode(b)


class Setup:
    def __init__(self, backend: FakeBackend | None = None, max_attempts: int = 3) -> None:
        self.backend = backend or FakeBackend()
        self.publisher = FakePublisher()
        self.cancels = CancelRegistry()
        self.dead_engine: list[BaseException] = []
        self.handler = Handler(
            model="m",
            backend=self.backend,
            publisher=self.publisher,
            cancels=self.cancels,
            metrics=WorkerMetrics(),
            max_attempts=max_attempts,
            on_engine_dead=self.dead_engine.append,
        )

    async def handle(self, msg: FakeMsg) -> FakeMsg:
        await self.handler(msg)
        return msg

    def only_error(self) -> ErrorResult:
        (result,) = self.publisher.results
        assert isinstance(result, ErrorResult), result
        return result


async def test_success_publishes_result_then_acks() -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(), REPLY))
    assert msg.actions == ["ack"]
    (result,) = s.publisher.results
    assert isinstance(result, FinalResult)
    assert result.output == {"x": 1}
    assert result.usage.total_tokens == 2
    assert result.timings.e2e_ms >= 0


async def test_malformed_json_is_terminated_with_an_error_reply() -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(b'{"type": "request.v1", "id": "r9", "mod', REPLY))
    assert msg.actions == ["term"]
    err = s.only_error()
    assert err.code is ErrorCode.INVALID_REQUEST
    assert "malformed" in err.message
    assert s.backend.started == []


async def test_schema_violation_names_the_field() -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(parameters={"temperature": 9}), REPLY))
    assert msg.actions == ["term"]
    err = s.only_error()
    assert err.id == "r1"
    assert "$.parameters.temperature" in err.message


async def test_unknown_schema_version() -> None:
    s = Setup()
    await s.handle(FakeMsg(body(type="request.v7"), REPLY))
    assert s.only_error().code is ErrorCode.UNSUPPORTED_VERSION


async def test_bad_encoding_header() -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(), {**REPLY, "Jetserve-Encoding": "yaml"}))
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.INVALID_REQUEST


async def test_model_mismatch_and_unsupported_kind() -> None:
    s = Setup()
    await s.handle(FakeMsg(body(model="other"), REPLY))
    await s.handle(FakeMsg(body(kind="embedding", payload={"input": "x"}), REPLY))
    codes = [r.code for r in s.publisher.results if isinstance(r, ErrorResult)]
    assert codes == [ErrorCode.MODEL_MISMATCH, ErrorCode.UNSUPPORTED_KIND]


async def test_deadline_passed_while_queued_is_not_run() -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(deadline_ms=int(time.time() * 1000) - 1), REPLY))
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.DEADLINE_EXCEEDED
    assert s.backend.started == []


async def test_deadline_while_running() -> None:
    async def slow(req: InferenceRequest, emit: ChunkSink) -> None:
        await asyncio.sleep(10)

    s = Setup(FakeBackend(slow))
    msg = await s.handle(FakeMsg(body(deadline_ms=int(time.time() * 1000) + 50), REPLY))
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.DEADLINE_EXCEEDED


async def test_cancelled_before_start() -> None:
    s = Setup()
    s.cancels.cancel("r1")
    msg = await s.handle(FakeMsg(body(), REPLY))
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.CANCELLED


async def test_cancel_while_running_frees_the_work() -> None:
    gate = asyncio.Event()

    async def wait(req: InferenceRequest, emit: ChunkSink) -> None:
        gate.set()
        await asyncio.sleep(10)

    s = Setup(FakeBackend(wait))
    task = asyncio.create_task(s.handle(FakeMsg(body(), REPLY)))
    await gate.wait()
    assert s.cancels.cancel("r1") is True
    msg = await asyncio.wait_for(task, 2)
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.CANCELLED


async def test_retryable_failure_naks_with_backoff() -> None:
    def boom(req: InferenceRequest, emit: ChunkSink) -> None:
        raise RuntimeError("cuda hiccup")

    s = Setup(FakeBackend(boom))
    msg = await s.handle(FakeMsg(body(), REPLY, delivered=2))
    assert msg.calls == [("nak", 1.0)]
    assert s.publisher.results == []


async def test_failure_on_last_attempt_is_dead_lettered() -> None:
    def boom(req: InferenceRequest, emit: ChunkSink) -> None:
        raise RuntimeError("always fails")

    s = Setup(FakeBackend(boom), max_attempts=3)
    msg = await s.handle(FakeMsg(body(), {**REPLY, "Nats-Msg-Id": "r1"}, delivered=3))
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.DEAD_LETTERED
    ((subject, data, headers),) = s.publisher.dead
    assert subject == "jetserve.dlq.m"
    assert data == body()
    assert headers["Jetserve-Deliveries"] == "3"
    assert "always fails" in headers["Jetserve-Error-Message"]
    assert "Nats-Msg-Id" not in headers


async def test_delivered_past_max_attempts_is_dead_lettered_without_running() -> None:
    s = Setup(max_attempts=3)
    msg = await s.handle(FakeMsg(body(), REPLY, delivered=4))
    assert msg.actions == ["term"]
    assert s.backend.started == []
    assert s.only_error().code is ErrorCode.DEAD_LETTERED
    assert len(s.publisher.dead) == 1


async def test_permanent_error_from_backend() -> None:
    def bad(req: InferenceRequest, emit: ChunkSink) -> None:
        raise PermanentError("prompt too long", ErrorCode.CONTEXT_LENGTH_EXCEEDED)

    s = Setup(FakeBackend(bad))
    msg = await s.handle(FakeMsg(body(), REPLY))
    assert msg.actions == ["term"]
    err = s.only_error()
    assert (err.code, err.message) == (ErrorCode.CONTEXT_LENGTH_EXCEEDED, "prompt too long")


async def test_engine_dead_hands_back_and_stops_the_worker() -> None:
    def dead(req: InferenceRequest, emit: ChunkSink) -> None:
        raise EngineDeadError("engine thread died")

    s = Setup(FakeBackend(dead))
    msg = await s.handle(FakeMsg(body(), REPLY))
    assert msg.calls == [("nak", None)]
    assert len(s.dead_engine) == 1


async def test_stream_chunks_then_result() -> None:
    async def tokens(req: InferenceRequest, emit: ChunkSink) -> None:
        for t in ("a", "b"):
            await emit(t)

    s = Setup(FakeBackend(tokens))
    await s.handle(FakeMsg(body(stream=True), REPLY))
    assert s.publisher.sinks[0].chunks == ["a", "b"]
    await s.handle(FakeMsg(body(stream=False), REPLY))
    assert s.publisher.sinks[1].chunks == []


async def test_shutdown_cancel_hands_the_message_back() -> None:
    gate = asyncio.Event()

    async def wait(req: InferenceRequest, emit: ChunkSink) -> None:
        gate.set()
        await asyncio.sleep(10)

    s = Setup(FakeBackend(wait))
    msg = FakeMsg(body(), REPLY)
    task = asyncio.create_task(s.handle(msg))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert msg.calls == [("nak", None)]
    assert s.publisher.results == []


@pytest.mark.parametrize(
    "reply_to",
    [
        "spy.*",
        "spy.>",
        "a b",
        "a\tb",
        "a..b",
        ".a",
        "a.",
        "$JS.API.STREAM.PURGE.jetserve-req-m",
        "$KV.jetserve-idempotent-results.idem-x",
        "jetserve.req.other.online",
        "jetserve.cancel.m.r2",
        "x" * 257,
        "_INBOX.\u200bx",
    ],
)
async def test_a_reply_subject_no_one_may_publish_to_is_terminated_unrun(reply_to: str) -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(), {"Jetserve-Reply-To": reply_to}))
    assert msg.actions == ["term"]
    assert s.publisher.results == []
    assert s.backend.started == []


@pytest.mark.parametrize(
    "reply_to",
    ["_INBOX.abc.r1", "my.replies", "jetserve.results.batch.b1", "jetserve.reply.idem.x"],
)
async def test_literal_reply_subjects_are_answered(reply_to: str) -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(), {"Jetserve-Reply-To": reply_to}))
    assert msg.actions == ["ack"]


async def test_a_string_that_is_not_utf8_is_refused_not_crashed_on() -> None:
    s = Setup()
    msg = await s.handle(FakeMsg(body(payload="x").replace(b'"x"', b'"\xff"'), REPLY))
    assert msg.actions == ["term"]
    assert s.only_error().code is ErrorCode.INVALID_REQUEST
    assert "UTF-8" in s.only_error().message


async def test_a_backends_own_timeout_is_a_failure_not_the_deadline() -> None:
    def stalls(req: InferenceRequest, emit: ChunkSink) -> None:
        raise TimeoutError("upstream feature store timed out")

    s = Setup(FakeBackend(stalls))
    msg = await s.handle(
        FakeMsg(body(deadline_ms=int(time.time() * 1000) + 60_000), REPLY, delivered=1)
    )
    assert msg.calls == [("nak", 0.5)]  # retried like any other model failure
    assert s.publisher.results == []


def chat(*parts: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "what is it?"}, *parts]
    return body(kind="chat", payload={"messages": [{"role": "user", "content": content}]})


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


async def test_a_part_the_model_does_not_take_is_refused_unrun_naming_it() -> None:
    s = Setup()  # the model takes text only: the default
    msg = await s.handle(FakeMsg(chat(IMAGE), REPLY))
    assert msg.actions == ["term"]
    err = s.only_error()
    assert err.code is ErrorCode.INVALID_REQUEST
    assert err.param == "messages[0].content[1]"
    assert "does not take images" in err.message
    assert s.backend.started == []


async def test_a_model_that_takes_images_gets_them() -> None:
    s = Setup()
    s.handler = Handler(
        model="m",
        backend=s.backend,
        publisher=s.publisher,
        cancels=s.cancels,
        metrics=WorkerMetrics(),
        max_attempts=3,
        on_engine_dead=s.dead_engine.append,
        inputs=("text", "image"),
    )
    msg = await s.handle(FakeMsg(chat(IMAGE), REPLY))
    assert msg.actions == ["ack"]
    assert s.backend.started == ["r1"]


async def test_a_user_message_without_content_is_refused_naming_it() -> None:
    s = Setup()
    payload = {"messages": [{"role": "system", "content": "x"}, {"role": "user"}]}
    msg = await s.handle(FakeMsg(body(kind="chat", payload=payload), REPLY))
    assert msg.actions == ["term"]
    err = s.only_error()
    assert (err.code, err.param) == (ErrorCode.INVALID_REQUEST, "messages[1].content")
    assert err.message == "Missing required parameter: 'messages[1].content'."


async def test_refusals_name_the_field_in_the_error_record() -> None:
    s = Setup()
    await s.handle(FakeMsg(body(parameters={"temperature": 9}), REPLY))
    await s.handle(FakeMsg(body(model="other"), REPLY))

    async def bad_format(request: InferenceRequest, emit: ChunkSink) -> Any:
        raise PermanentError("invalid response_format", param="response_format")

    s.backend.behaviour = bad_format
    await s.handle(FakeMsg(body(), REPLY))
    params = [r.param for r in s.publisher.results if isinstance(r, ErrorResult)]
    assert params == ["temperature", "model", "response_format"]


async def test_a_tenant_subject_says_whose_request_it_is() -> None:
    """A request published by a tenant's own NATS user (on its tenant subject) runs as that
    tenant; one claiming another tenant is refused, naming the field."""
    seen: list[str] = []

    def record(request: InferenceRequest, emit: ChunkSink) -> None:
        seen.append(request.tenant)

    s = Setup(FakeBackend(record))
    own = "jetserve.req.m.online.acme.eu"
    assert (await s.handle(FakeMsg(body(), REPLY, subject=own))).actions == ["ack"]
    assert (await s.handle(FakeMsg(body(tenant="acme.eu"), REPLY, subject=own))).actions == ["ack"]
    # The service's own subject: the body's tenant stands (its publishers are trusted).
    assert (await s.handle(FakeMsg(body(tenant="other"), REPLY))).actions == ["ack"]
    assert seen == ["acme.eu", "acme.eu", "other"]
    msg = await s.handle(FakeMsg(body(tenant="other"), REPLY, subject=own))
    assert msg.actions == ["term"]
    error = s.publisher.results[-1]
    assert isinstance(error, ErrorResult)
    assert error.code == ErrorCode.INVALID_REQUEST
    assert "$.tenant" in error.message
    assert seen == ["acme.eu", "acme.eu", "other"]
