"""A batch line takes the same structured-output fields as the synchronous endpoint."""

from __future__ import annotations

import io
import json
from typing import Any

import jsonschema
import pytest

from .conftest import LLM, BatchStack, chat_line, jsonl, read_lines, wait_batch

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
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"enum": ["a", "b"]}},
            "required": ["q"],
            "additionalProperties": False,
        },
    },
}


def test_batch_lines_with_response_format_and_tools(batch_stack: BatchStack) -> None:
    client = batch_stack.sdk()
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}
    lines = [
        chat_line(f"json-{i}", LLM, f"weather {i}", response_format=fmt, temperature=1.0, seed=i)
        for i in range(6)
    ]
    lines += [
        chat_line(
            f"tool-{i}",
            LLM,
            "look it up",
            tools=[TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=1.0,
            seed=i,
        )
        for i in range(3)
    ]
    lines.append(
        chat_line(
            "bad-schema",
            LLM,
            "x",
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "b",
                    "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}},
                },
            },
        )
    )
    upload = client.files.create(file=("s.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id, {"completed", "failed"}, timeout_s=120)
    assert done.status == "completed"
    assert done.request_counts.total == 10
    assert done.request_counts.failed == 1
    out = {line["custom_id"]: line for line in read_lines(client, done.output_file_id)}
    errors = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
    for i in range(6):
        body = out[f"json-{i}"]["response"]["body"]
        jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMA)
    for i in range(3):
        message = out[f"tool-{i}"]["response"]["body"]["choices"][0]["message"]
        (call,) = message["tool_calls"]
        assert call["function"]["name"] == "lookup"
        assert json.loads(call["function"]["arguments"])["q"] in ("a", "b")
    bad = errors["bad-schema"]["response"]
    assert bad["status_code"] == 400
    assert "nonsense" in json.dumps(bad["body"])
