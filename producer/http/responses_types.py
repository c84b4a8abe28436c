"""OpenAI's Responses API bodies (`POST /v1/responses`), as msgspec structs: the request as
the official SDK sends it, and the response object and its output items.

As for chat, unknown request fields are ignored and known ones are checked with the bounds of
`schemas.params`; the items of `input` and the shapes of `tools` / `text.format` are checked
in `responses_convert`, which names the offending `param`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from producer.http.openai_types import MaxTokens, Temperature, TopP

#: Every tier the SDK can send (`openai.types.responses.ServiceTier`).
ServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"]
MetadataValue = Annotated[str, Meta(max_length=512)]
MetadataKey = Annotated[str, Meta(max_length=64)]


class TextConfig(msgspec.Struct, frozen=True, kw_only=True):
    #: {"type": "text"} | {"type": "json_object"} |
    #: {"type": "json_schema", "name", "schema", "strict", "description"} (flat, unlike chat)
    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    #: A string, or a list of items (messages, function_call, function_call_output).
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)] | None = None
    #: OpenAI's default: stored.
    store: bool | None = None
    previous_response_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    stream: bool | None = False
    background: bool | None = False
    service_tier: ServiceTier | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    # Known, and refused when set (see responses_convert.REFUSED).
    reasoning: dict[str, Any] | None = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    seed: int | None = None


# ---- the response object ------------------------------------------------------------------


class OutputText(msgspec.Struct, frozen=True, tag="output_text", tag_field="type"):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, frozen=True, tag="message", tag_field="type"):
    id: str
    status: str
    content: list[OutputText]
    role: str = "assistant"


# OpenAI's output item, field for field (alike in outline to other tagged structs, such as
# schemas.messages.WorkerInfo; nothing in common but the form).
class FunctionCall(msgspec.Struct, frozen=True, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


OutputItem = OutputMessage | FunctionCall


class InputTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, frozen=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct, frozen=True):
    reason: str


class ResponseError(msgspec.Struct, frozen=True):
    code: str
    message: str


Status = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]


class Response(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: Status
    model: str
    output: list[OutputItem]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    text: dict[str, Any] = msgspec.field(default_factory=dict)
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    store: bool = True
    background: bool = False
    service_tier: str = "default"
    user: str | None = None
    completed_at: int | None = None
    truncation: str = "disabled"
