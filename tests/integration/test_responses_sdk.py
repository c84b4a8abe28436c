"""The Responses API through the official openai SDK, against a real bridge, PostgreSQL,
nats-server and workers: the echo model, and the tiny random Llama on the real engine
(grammar-constrained, so structured output and tool calls are valid whatever it writes)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from typing import Any, Literal

import jsonschema
import nats
import openai
import pytest
from pydantic import BaseModel, Field

from schemas import names
from workers.config import QueueSettings
from workers.provision import provision_model

from .batches.conftest import ECHO, LLM, BatchStack, jsonl, read_lines, wait_batch

pytestmark = pytest.mark.integration

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "rain": {"type": "boolean"},
        "temp": {"type": "integer", "minimum": -40, "maximum": 50},
    },
    "required": ["city", "rain", "temp"],
    "additionalProperties": False,
}
LOOKUP: dict[str, Any] = {
    "type": "function",
    "name": "lookup",
    "description": "Look a letter up",
    "parameters": {
        "type": "object",
        "properties": {"q": {"enum": ["a", "b"]}},
        "required": ["q"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Weather(BaseModel):
    city: str = Field(max_length=12)
    rain: bool
    kind: Literal["sun", "fog"]


def test_plain_and_instructions(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk()
    r = client.responses.create(model=ECHO, input="hello there")
    assert r.status == "completed"
    assert r.id.startswith("resp_")
    assert r.output_text == "hello there"
    (item,) = r.output
    assert item.type == "message"
    assert item.role == "assistant"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (2, 2, 4)
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.store is True

    # Instructions go first, as a system message: echo answers the last message (the input).
    r = client.responses.create(
        model=ECHO, instructions="Answer in French.", input="bonjour", metadata={"k": "v"}
    )
    assert r.output_text == "bonjour"
    assert r.instructions == "Answer in French."
    assert r.metadata == {"k": "v"}


def test_input_items_and_previous_response_id_across_three_turns(
    batch_stack: BatchStack,
) -> None:
    client: Any = batch_stack.sdk()
    first = client.responses.create(
        model=ECHO,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "one"}]}],
    )
    second = client.responses.create(
        model=ECHO, input="two", previous_response_id=first.id, instructions="be brief"
    )
    third = client.responses.create(model=ECHO, input="three", previous_response_id=second.id)
    assert [first.output_text, second.output_text, third.output_text] == ["one", "two", "three"]
    assert third.previous_response_id == second.id
    # The third ran with the whole conversation (without the second's instructions): the
    # echo model counts the words of its last message, so read the stored conversation.
    rows = batch_stack.query("SELECT conversation FROM responses WHERE id = $1", third.id)
    conversation = json.loads(rows[0]["conversation"])
    assert [(m["role"], m.get("content")) for m in conversation] == [
        ("user", "one"),
        ("assistant", "one"),
        ("user", "two"),
        ("assistant", "two"),
        ("user", "three"),
        ("assistant", "three"),
    ]
    items = client.responses.input_items.list(third.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "three"


def test_retrieve_delete_cancel_and_tenants(batch_stack: BatchStack) -> None:
    alpha: Any = batch_stack.sdk("alpha")
    beta: Any = batch_stack.sdk("beta")
    r = alpha.responses.create(model=ECHO, input="keep me")
    got = alpha.responses.retrieve(r.id)
    assert got.id == r.id
    assert got.output_text == "keep me"
    assert got.status == "completed"
    with pytest.raises(openai.NotFoundError):
        beta.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.create(model=ECHO, input="x", previous_response_id=r.id)
    with pytest.raises(openai.BadRequestError):  # only background responses can be cancelled
        alpha.responses.cancel(r.id)
    alpha.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        alpha.responses.retrieve(r.id)

    unstored = alpha.responses.create(model=ECHO, input="forget me", store=False)
    assert unstored.store is False
    assert unstored.output_text == "forget me"
    with pytest.raises(openai.NotFoundError):
        alpha.responses.retrieve(unstored.id)


def test_stream_events_and_the_sdk_accumulator(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk()
    with client.responses.stream(model=ECHO, input="stream me please") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(texts) == final.output_text == "stream me please"
    assert client.responses.retrieve(final.id).output_text == "stream me please"

    # The engine streams token by token; cut short by max_output_tokens: incomplete.
    with client.responses.stream(
        model=LLM, input="tell me a story", temperature=0, max_output_tokens=12
    ) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 12
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1
    streamed = "".join(deltas)
    assert streamed == last.response.output_text
    # The same request, not streamed, gives the same text (greedy).
    plain = client.responses.create(
        model=LLM, input="tell me a story", temperature=0, max_output_tokens=12
    )
    assert (plain.status, plain.output_text) == ("incomplete", streamed)


def test_strict_json_schema_and_parse(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk()
    r = client.responses.create(
        model=LLM,
        input="weather in Paris",
        text={"format": {"type": "json_schema", "name": "w", "schema": SCHEMA, "strict": True}},
        temperature=0,
    )
    assert r.status == "completed", r
    jsonschema.validate(json.loads(r.output_text), SCHEMA)
    assert r.text is not None
    assert r.text.format is not None
    assert r.text.format.type == "json_schema"

    parsed = client.responses.parse(model=LLM, input="weather", text_format=Weather, temperature=0)
    assert isinstance(parsed.output_parsed, Weather)


def test_function_tool_round_trip(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk()
    first = client.responses.create(
        model=LLM,
        input="look it up",
        tools=[LOOKUP],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "lookup"
    jsonschema.validate(json.loads(call.arguments), LOOKUP["parameters"])

    second = client.responses.create(
        model=LLM,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"r": 1}'}],
        tools=[LOOKUP],
        tool_choice="none",
        temperature=0,
        max_output_tokens=8,
    )
    assert second.status in ("completed", "incomplete")
    assert [o.type for o in second.output] == ["message"]
    rows = batch_stack.query("SELECT conversation FROM responses WHERE id = $1", second.id)
    roles = [(m["role"], bool(m.get("tool_calls"))) for m in json.loads(rows[0]["conversation"])]
    assert roles == [("user", False), ("assistant", True), ("tool", False), ("assistant", False)]

    # The same round trip with the items sent in full, without a stored response.
    again = client.responses.create(
        model=LLM,
        store=False,
        input=[
            {"role": "user", "content": "look it up"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "lookup",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"r": 1}'},
        ],
        tools=[LOOKUP],
        tool_choice="none",
        temperature=0,
        max_output_tokens=8,
    )
    assert again.output_text == second.output_text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": ECHO}, "input"),
        ({"model": ECHO, "input": []}, "input"),
        ({"model": ECHO, "input": "x", "temperature": 3}, "temperature"),
        ({"model": ECHO, "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": ECHO, "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"model": ECHO, "input": [{"role": "user", "content": [{"type": "input_video"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"model": ECHO, "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"model": ECHO, "input": [{"type": "reasoning"}]}, "input[0]"),
        ({"model": ECHO, "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"model": ECHO, "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": ECHO, "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        (
            {"model": ECHO, "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
        ),
        ({"model": ECHO, "input": "x", "service_tier": "turbo"}, "service_tier"),
        ({"model": ECHO, "input": "x", "reasoning": {"effort": "low"}}, "reasoning"),
        ({"model": ECHO, "input": "x", "metadata": {"k": 1}}, "metadata[...]"),
        (
            {"model": ECHO, "input": "x", "previous_response_id": "resp_nope"},
            "previous_response_id",
        ),
    ],
)
def test_bad_input_names_the_param(
    batch_stack: BatchStack, body: dict[str, Any], param: str
) -> None:
    client: Any = batch_stack.sdk()
    with pytest.raises(openai.APIStatusError) as info:
        client.post("/responses", body=body, cast_to=dict)
    assert info.value.status_code in (400, 404)
    error = info.value.body
    assert isinstance(error, dict)
    assert error.get("param") == param, error


def _batch(client: Any, lines: list[dict[str, Any]]) -> Any:
    uploaded = client.files.create(file=("r.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )
    return wait_batch(client, batch.id, {"completed", "failed"})


def _line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses", "body": body}


def test_responses_as_a_batch_endpoint(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk()
    lines = [
        _line(f"r-{i}", model=ECHO, input=f"batched {i}", instructions="echo") for i in range(5)
    ]
    done = _batch(client, lines)
    assert done.status == "completed", done.errors
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 0)
    out = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
    for i in range(5):
        body = out[f"r-{i}"]["response"]["body"]
        assert body["object"] == "response"
        assert body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"] == f"batched {i}"
        assert body["instructions"] == "echo"

    # A line that needs a stored conversation cannot be a batch line: the batch is refused,
    # naming the line and the field.
    bad = _line("bad", model=ECHO, input="x", previous_response_id="resp_x")
    refused = _batch(client, [lines[0], bad])
    assert refused.status == "failed"
    (error,) = refused.errors.data
    assert (error.line, error.param) == (2, "body.previous_response_id")


def test_background_response_is_queued_durably_then_polled(batch_stack: BatchStack) -> None:
    client: Any = batch_stack.sdk("alpha")
    created = client.responses.create(model=ECHO, input="run me later", background=True)
    assert created.status == "queued"
    assert created.background is True
    request_id = created.id.removeprefix("resp_")
    # Recorded on the durable async path (the scheduler publishes it again if need be).
    (row,) = batch_stack.query("SELECT endpoint FROM async_requests WHERE id = $1", request_id)
    assert row["endpoint"] == "/v1/responses"
    with pytest.raises(openai.NotFoundError):
        batch_stack.sdk("beta").responses.retrieve(created.id)
    end = time.monotonic() + 30
    got = client.responses.retrieve(created.id)
    while got.status in ("queued", "in_progress"):
        assert time.monotonic() < end, got
        time.sleep(0.1)
        got = client.responses.retrieve(created.id)
    assert got.status == "completed"
    assert got.output_text == "run me later"
    assert got.usage.output_tokens == 3
    # It continues like any stored response.
    after = client.responses.create(model=ECHO, input="next", previous_response_id=created.id)
    assert after.output_text == "next"

    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=ECHO, input="x", background=True, store=False)
    error: Any = info.value.body
    assert error["param"] == "store"
    with pytest.raises(openai.NotFoundError):  # refused: nothing is left queued
        client.responses.create(model="no-such-model", input="x", background=True)
    left = batch_stack.query("SELECT id FROM async_requests WHERE model = 'no-such-model'")
    assert left == []


def _stream_messages(nats_url: str, model: str, *, provision: bool = False) -> int:
    async def run() -> int:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            if provision:
                await provision_model(js, model, QueueSettings())
            return int((await js.stream_info(names.stream_name(model))).state.messages)
        finally:
            await nc.close()

    return asyncio.run(run())


def test_cancelled_queued_background_response_never_reaches_a_worker(
    batch_stack: BatchStack,
) -> None:
    client: Any = batch_stack.sdk()
    model = f"r-cancel-{uuid.uuid4().hex[:6]}"
    assert _stream_messages(batch_stack.nats_url, model, provision=True) == 0  # no worker yet
    created = client.responses.create(model=model, input="never run", background=True)
    assert created.status == "queued"
    assert _stream_messages(batch_stack.nats_url, model) == 1
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert cancelled.output == []
    assert _stream_messages(batch_stack.nats_url, model) == 0  # deleted before any worker
    # A worker starts: it serves new work, and the cancelled response stays as it was.
    batch_stack.start_worker(model, "echo")
    probe = client.responses.create(model=model, input="probe", store=False)
    assert probe.output_text == "probe"
    again = client.responses.retrieve(created.id)
    assert (again.status, again.output) == ("cancelled", [])
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    (row,) = batch_stack.query(
        "SELECT status FROM async_requests WHERE id = $1", created.id.removeprefix("resp_")
    )
    assert row["status"] == "failed"  # answered (cancelled): never published again
