"""The three POST endpoints of the OpenAI API: how each decodes its body, makes its
`InferenceRequest`, and shapes its response and stream chunks. (The batch API reads the
same table: a batch line is one of these bodies.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from producer.http import convert
from producer.http import openai_types as oa
from producer.http import responses_convert as rc
from producer.http import responses_types as rt
from schemas.messages import FinalResult, InferenceRequest

CHUNK = "chat.completion.chunk"
TEXT = "text_completion"


@dataclass(frozen=True)
class Endpoint:
    """What differs between the three POST endpoints."""

    decoder: msgspec.json.Decoder[Any]
    to_request: Callable[..., InferenceRequest]
    id_prefix: str


CHAT = Endpoint(msgspec.json.Decoder(oa.ChatCompletionRequest), convert.chat_request, "chatcmpl-")
COMPLETION = Endpoint(
    msgspec.json.Decoder(oa.CompletionRequest), convert.completion_request, "cmpl-"
)
EMBEDDING = Endpoint(msgspec.json.Decoder(oa.EmbeddingRequest), convert.embedding_request, "emb-")
#: A Responses body as one request with no stored conversation (a batch line; the bridge's
#: own route, `responses_api`, also continues stored ones).
RESPONSES = Endpoint(msgspec.json.Decoder(rt.ResponsesRequest), rc.standalone_request, rc.ID_PREFIX)


def response(
    endpoint: Endpoint,
    parsed: Any,
    result: FinalResult,
    response_id: str,
    created: int,
    tier: str | None = None,
) -> Any:
    """`tier`: the service tier that served it (chat and completions report it)."""
    if endpoint is CHAT:
        return convert.chat_response(result, response_id, created, tier)
    if endpoint is COMPLETION:
        return convert.completion_response(result, response_id, created, tier)
    return convert.embedding_response(result, parsed.encoding_format)


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    delta: oa.Delta | str | None,
    reason: str | None = None,
    tier: str | None = None,
) -> oa.ChatCompletionChunk:
    if not isinstance(delta, oa.Delta):
        delta = oa.Delta(content=delta)
    return oa.ChatCompletionChunk(
        rid, CHUNK, created, model, [oa.ChatChunkChoice(0, delta, None, reason)], None, tier
    )


def text_chunk(
    rid: str,
    created: int,
    model: str,
    text: str | None,
    reason: str | None = None,
    tier: str | None = None,
) -> oa.Completion:
    return oa.Completion(
        rid, TEXT, created, model, [oa.CompletionChoice(0, text or "", None, reason)], None, tier
    )


def usage_chunk(
    chat: bool, rid: str, created: int, model: str, result: FinalResult, tier: str | None = None
) -> Any:
    if chat:
        return oa.ChatCompletionChunk(rid, CHUNK, created, model, [], convert.usage(result), tier)
    return oa.Completion(rid, TEXT, created, model, [], convert.usage(result), tier)
