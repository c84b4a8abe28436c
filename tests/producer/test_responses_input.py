"""A Responses `input` -> chat messages, and a worker's chat param -> the `input` field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from producer.http.errors import ApiError
from producer.http.responses_input import input_messages, input_param
from schemas.payloads import ChatMessage, ChatPayload

IMAGE_URL = "data:image/png;base64,iVBORw0KGgo="


def convert(body: dict[str, Any], history: list[ChatMessage] | None = None) -> rc.Converted:
    parsed = msgspec.convert({"model": "m", **body}, rt.ResponsesRequest)
    return rc.responses_request(
        parsed, history or [], id="r1", tenant="t", created_ms=1, deadline_ms=None
    )


def test_media_parts_become_chat_parts_and_text_stays_a_string() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "just text"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "what is "},
                {"type": "input_image", "image_url": IMAGE_URL, "detail": "low"},
                {"type": "input_file", "file_id": "file-1"},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            ],
        },
    ]
    messages, stored, origins = input_messages(items, "resp_r1")
    assert messages[0].content == "just text"
    assert messages[1].content == [
        {"type": "text", "text": "what is "},
        {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]
    assert stored[1]["content"] == items[1]["content"]  # input_items as given
    assert origins == ["input[0].content", "input[1].content"]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "input_image"}, "input[0].content[0].image_url"),
        ({"type": "input_file", "filename": "a.pdf"}, "input[0].content[0].file_id"),
        ({"type": "input_audio"}, "input[0].content[0].input_audio"),
        ({"type": "input_video"}, "input[0].content[0].type"),
    ],
)
def test_malformed_parts_are_refused_naming_them(part: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        input_messages([{"role": "user", "content": [part]}], "resp_r1")
    assert (info.value.status, info.value.param) == (400, param)


def test_a_workers_chat_param_names_the_input_item_it_came_from() -> None:
    history = [ChatMessage(role="user", content="a"), ChatMessage(role="assistant", content="b")]
    image = {"type": "input_image", "image_url": IMAGE_URL}
    converted = convert(
        {
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "first"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
                {"role": "user", "content": [{"type": "input_text", "text": "x"}, image]},
            ],
        },
        history,
    )
    payload = converted.request.payload
    assert isinstance(payload, ChatPayload)
    assert len(payload.messages) == len(converted.origins) == 7
    origins = converted.origins
    assert input_param("messages[6].content[1]", origins) == "input[3].content[1]"
    assert input_param("messages[6].content", origins) == "input[3].content"
    assert input_param("messages[5].content", origins) == "input[2].output"
    assert input_param("messages[5].tool_call_id", origins) == "input[2]"
    assert input_param("messages[4].tool_calls", origins) == "input[1]"
    assert input_param("messages[0].content", origins) == "instructions"
    assert input_param("messages[1].content", origins) == "previous_response_id"
    assert input_param("response_format", origins) == "response_format"
    assert input_param(None, origins) is None
    assert input_param("messages[9].content", origins) == "messages[9].content"
    # A string input is one message.
    assert input_param("messages[0].content", convert({"input": "hi"}).origins) == "input"
