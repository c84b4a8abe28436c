"""OpenAI's request and response bodies, as msgspec structs (the subset jetserve serves).

Requests ignore fields they do not know (clients send new OpenAI fields before servers know
them); fields they know are checked with the same bounds as `schemas.params`, so a bad value
is refused here, naming the field, before anything is published. vLLM's sampling extras
(`top_k`, `repetition_penalty`, `ignore_eos`, `stop_token_ids`) are accepted too.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from schemas.params import MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, MAX_TOP_LOGPROBS
from schemas.payloads import ChatMessage

MaxTokens = Annotated[int, Meta(ge=1, le=MAX_TOKENS_LIMIT)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Stop = (
    str | Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=MAX_STOP_SEQUENCES)]
)


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class _Sampling(msgspec.Struct, frozen=True, kw_only=True):
    """Fields shared by chat and text completions."""

    model: Annotated[str, Meta(min_length=1)]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    #: Only 1 is served.
    n: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: int | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    #: Refused when not empty: not supported.
    logit_bias: dict[str, float] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    #: OpenAI's stable end-user id (replaces `user`); like `user` and `prompt_cache_key`, a
    #: sticky key when `model` is a served name with several versions (schemas/routes.py).
    safety_identifier: Annotated[str, Meta(max_length=256)] | None = None
    #: OpenAI's tiers (schemas/tiers.py); checked there, so a bad value names the param.
    service_tier: str | None = None
    # vLLM's extras. top_k -1 (vLLM) and 0 both mean "off".
    top_k: Annotated[int, Meta(ge=-1)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    #: OpenAI's prompt-caching hint. Each worker caches prefixes by their tokens, whatever
    #: the key; for a served name it is the first sticky key (one version per key).
    prompt_cache_key: Annotated[str, Meta(max_length=1024)] | None = None


class ChatCompletionRequest(_Sampling, frozen=True, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    # Passed through to the model in the chat payload.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling, frozen=True, kw_only=True):
    #: One prompt: text, or token ids (a one-element list of either is accepted too).
    prompt: str | list[Any]
    #: OpenAI's default for text completions.
    max_tokens: MaxTokens | None = 16
    #: Number of most likely alternatives per token (legacy completions' `logprobs`).
    logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool | None = False
    best_of: Annotated[int, Meta(ge=1)] | None = None
    suffix: str | None = None
    #: A jetserve extension (as for chat): constrain the completion's text.
    response_format: dict[str, Any] | None = None


class EmbeddingRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: Annotated[str, Meta(min_length=1)]
    #: A string or a list of strings (token-id inputs are refused).
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    #: Refused unless omitted: models here have one output size.
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    safety_identifier: Annotated[str, Meta(max_length=256)] | None = None


# ---- responses ------------------------------------------------------------------------

C = TypeVar("C")


class PromptTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: As OpenAI's: present when the model reports cached prompt tokens.
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(msgspec.Struct, frozen=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(msgspec.Struct, frozen=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct, frozen=True):
    content: list[TokenLogprob] | None


class AssistantMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(msgspec.Struct, frozen=True):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletion(msgspec.Struct, frozen=True):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: str = "chat.completion"
    #: The tier that served the request (schemas/tiers.py).
    service_tier: str | None = None
    system_fingerprint: str | None = None


class Delta(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoice(msgspec.Struct, frozen=True):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class _Choices(msgspec.Struct, Generic[C], frozen=True, omit_defaults=True):
    """The frame a streamed chat chunk and a completion share. Fields in OpenAI's order (as
    every object here and in responses_types.py: the JSON mirrors OpenAI's, so objects of
    the same outline look alike)."""

    id: str
    #: What the object is (no default: omit_defaults would drop it).
    object: str
    created: int
    model: str
    choices: list[C]
    usage: Usage | None = None
    service_tier: str | None = None


class ChatCompletionChunk(_Choices[ChatChunkChoice], frozen=True, omit_defaults=True):
    """`object`: always "chat.completion.chunk"."""


class CompletionLogprobs(msgspec.Struct, frozen=True):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, frozen=True):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(_Choices[CompletionChoice], frozen=True, omit_defaults=True):
    """`object`: always "text_completion"."""


class Embedding(msgspec.Struct, frozen=True):
    index: int
    #: Floats, or base64 of little-endian float32 (`encoding_format: base64`).
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, frozen=True):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


class ModelCard(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    id: str
    created: int
    owned_by: str
    object: str
    #: A served name's concrete models (jetserve's extension; absent for a model).
    versions: list[str] | None = None


class ModelList(msgspec.Struct, frozen=True):
    data: list[ModelCard]
    object: str = "list"
