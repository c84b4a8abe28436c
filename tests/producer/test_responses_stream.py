"""The Responses event sequence, fed to the official SDK's own stream accumulator (no server):
text, then a tool call, then the end; numbering from 0 without a gap."""

from __future__ import annotations

import json
from typing import Any

from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.responses_stream import EventWriter
from schemas.messages import FinalResult, FinishReason, Usage

CALL = {
    "index": 0,
    "id": "call_1",
    "type": "function",
    "function": {"name": "f", "arguments": "{}"},
}


def _events(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        kind, data = frame.decode().strip().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        out.append(event)
    return out


def _run(finish_reason: FinishReason) -> tuple[list[dict[str, Any]], Any]:
    body = rt.ResponsesRequest(model="m", input="hi")
    base = rc.base_response(body, "resp_abc", 1, stored=False)
    writer = EventWriter(base)
    frames = [*writer.start(), *writer.text("Hel"), *writer.text("lo"), *writer.calls([CALL])]
    result = FinalResult(
        "abc",
        "m",
        {"text": "Hello", "tool_calls": [CALL]},
        finish_reason,
        Usage(1, 2, 3),
    )
    frames += writer.finish(rc.finished_response(base, result, 2))
    events = _events(frames)
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    return events, state


def test_the_sdk_accumulates_text_and_a_call() -> None:
    events, state = _run("tool_calls")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    final = state._completed_response
    assert final is not None
    assert final.output_text == "Hello"
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output[1].call_id == "call_1"


def test_cut_short_is_incomplete() -> None:
    events, _ = _run("length")
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
