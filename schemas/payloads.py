"""Typed `payload` bodies for each request kind, and the typed `output` of results."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schemas.messages import InferenceRequest, TokenLogprobs

Role = Literal["system", "user", "assistant", "tool", "developer"]


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: Role
    #: A string, or OpenAI's list of content parts (only `text` parts are used).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    #: {"type": "text" | "json_object" | "json_schema" | "regex" | "choice", ...}
    response_format: dict[str, Any] | None = None


class CompletionPayload(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    #: Text, or already-tokenized ids.
    prompt: str | list[int]
    #: As for chat (a jetserve extension for completions).
    response_format: dict[str, Any] | None = None


class EmbeddingPayload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    input: str | Annotated[list[str], Meta(min_length=1, max_length=2048)]


class TextOutput(msgspec.Struct, frozen=True, omit_defaults=True):
    text: str
    logprobs: list[TokenLogprobs] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class EmbeddingOutput(msgspec.Struct, frozen=True):
    embeddings: list[list[float]]


Payload = ChatPayload | CompletionPayload | EmbeddingPayload | Any

_PAYLOAD_TYPES: dict[str, type[Any]] = {
    "chat": ChatPayload,
    "completion": CompletionPayload,
    "embedding": EmbeddingPayload,
}


def typed_payload(request: InferenceRequest) -> Payload:
    """The request's payload as the struct its kind calls for (`predict`: unchanged).

    Raises `msgspec.ValidationError` naming the bad field (as `$.payload...`).
    """
    target = _PAYLOAD_TYPES.get(request.kind)
    if target is None:
        return request.payload
    if isinstance(request.payload, target):
        return request.payload
    try:
        return msgspec.convert(request.payload, target)
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(str(exc).replace("`$", "`$.payload", 1)) from None
