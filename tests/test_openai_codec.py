"""The scheduler's conversion of OpenAI's endpoints (jetserve/openai_codec.py): the error
body of a batch line."""

from __future__ import annotations

import json

from jetserve.openai_codec import OpenAICodec
from scheduler.codec import Envelope, Reply
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult
from schemas.names import Priority

codec = OpenAICodec()


def test_a_responses_line_error_names_its_input_item() -> None:
    """A worker names the chat field (`messages[2].content[1]`); the batch line's error names
    the Responses body's (`input[1].content[1]`: the instructions are message 0)."""
    body = {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": "hi"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "and this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                ],
            },
        ],
    }
    request = codec.request(
        "/v1/responses", json.dumps(body).encode(), Envelope("r1", "t", Priority.BATCH)
    )
    error = ErrorResult(
        id="r1", code=ErrorCode.INVALID_REQUEST, message="no images", param="messages[2].content[1]"
    )
    status, out = codec.response("/v1/responses", Reply("r1", error, 0, request.metadata))
    assert (status, json.loads(out)["error"]["param"]) == (400, "input[1].content[1]")
    status, out = codec.response("/v1/chat/completions", Reply("r1", error, 0, {}))
    assert json.loads(out)["error"]["param"] == "messages[2].content[1]"
