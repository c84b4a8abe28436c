"""OpenAI bodies <-> jetserve wire messages. Pure functions: no I/O.

Requests: one OpenAI request becomes one `InferenceRequest` (kind `chat`, `completion` or
`embedding`). Results: a `FinalResult` (and its `StreamChunk`s) become OpenAI's response
objects. Only `n = 1` is served.
"""

from __future__ import annotations

import base64
import functools
import struct
from typing import Any

import msgspec

from producer.http import openai_types as oa
from producer.http.errors import ApiError, invalid, model_not_found
from schemas.content import InvalidContent, check_messages
from schemas.messages import FinalResult, InferenceRequest, Kind, TokenLogprobs
from schemas.names import InvalidName, validate_model_name
from schemas.params import SamplingParams
from schemas.payloads import ChatPayload, CompletionPayload, EmbeddingPayload

#: jetserve's finish reasons -> OpenAI's. A deadline that cut generation short reads as
#: "length" (the output is truncated); anything unknown as "stop".
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "deadline": "length"}
MAX_EMBEDDING_INPUTS = 2048


def finish_reason(value: str | None) -> str | None:
    return None if value is None else _FINISH.get(value, "stop")


def check_model(model: str) -> str:
    """A model name that can be a subject token; anything else cannot exist: 404."""
    try:
        return _valid_model_name(model)
    except InvalidName:
        raise model_not_found(model) from None


#: Names already checked (every request names one; invalid ones raise and are not kept).
_valid_model_name = functools.lru_cache(maxsize=1024)(validate_model_name)


def _common_checks(body: oa._Sampling) -> None:
    if body.n not in (None, 1):
        raise invalid("Only n=1 is supported.", "n")
    if body.logit_bias:
        raise invalid("logit_bias is not supported.", "logit_bias")


def _sampling(
    body: oa._Sampling, max_tokens: int | None, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    """Checked values only: `body` was decoded with the same bounds as `SamplingParams`."""
    stop = body.stop
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        seed=body.seed,
        stop=[stop] if isinstance(stop, str) else list(stop or ()),
        stop_token_ids=list(body.stop_token_ids or ()),
        repetition_penalty=body.repetition_penalty or 1.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=bool(body.ignore_eos),
    )


def _request(
    kind: Kind, model: str, payload: Any, params: SamplingParams, stream: bool, **fields: Any
) -> InferenceRequest:
    return InferenceRequest(
        model=model, kind=kind, payload=payload, parameters=params, stream=stream, **fields
    )


def chat_request(body: oa.ChatCompletionRequest, **fields: Any) -> InferenceRequest:
    """`fields`: id, tenant, deadline_ms, created_ms, idempotency_key (already checked)."""
    model = check_model(body.model)
    _common_checks(body)
    if body.top_logprobs and not body.logprobs:
        raise invalid("top_logprobs requires logprobs to be true.", "top_logprobs")
    try:
        # What every model refuses (a message without content); what this model cannot
        # take (an image for a text model) its workers refuse.
        check_messages(body.messages)
    except InvalidContent as exc:
        raise invalid(exc.message, exc.param, exc.code) from None
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = _sampling(body, max_tokens, bool(body.logprobs), body.top_logprobs or 0)
    payload = ChatPayload(
        messages=body.messages,
        tools=body.tools,
        tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=body.response_format,
    )
    return _request("chat", model, payload, params, bool(body.stream), **fields)


def _prompt(prompt: str | list[Any]) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    if len(prompt) == 1 and isinstance(prompt[0], str | list):
        return _prompt(prompt[0])
    raise invalid(
        "prompt must be one string or one list of token ids (batches of prompts are served "
        "by the batch API).",
        "prompt",
    )


def completion_request(body: oa.CompletionRequest, **fields: Any) -> InferenceRequest:
    model = check_model(body.model)
    _common_checks(body)
    if body.best_of not in (None, 1):
        raise invalid("Only best_of=1 is supported.", "best_of")
    if body.echo:
        raise invalid("echo is not supported.", "echo")
    if body.suffix:
        raise invalid("suffix is not supported.", "suffix")
    top = body.logprobs
    params = _sampling(body, body.max_tokens, top is not None, top or 0)
    payload = CompletionPayload(prompt=_prompt(body.prompt), response_format=body.response_format)
    return _request("completion", model, payload, params, bool(body.stream), **fields)


def embedding_request(body: oa.EmbeddingRequest, **fields: Any) -> InferenceRequest:
    model = check_model(body.model)
    if body.dimensions is not None:
        raise invalid(
            "dimensions is not supported: models here have one output size.", "dimensions"
        )
    value = body.input
    if isinstance(value, list):
        if not value or len(value) > MAX_EMBEDDING_INPUTS:
            raise invalid(f"input must hold 1 to {MAX_EMBEDDING_INPUTS} strings.", "input")
        if not all(isinstance(v, str) for v in value):
            raise invalid("input must be a string or a list of strings (not token ids).", "input")
    payload = EmbeddingPayload(input=value)
    return _request("embedding", model, payload, SamplingParams(), False, **fields)


# ---- results --------------------------------------------------------------------------


def usage(result: FinalResult) -> oa.Usage:
    u = result.usage
    details = u.prompt_tokens_details
    return oa.Usage(
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        None if details is None else oa.PromptTokensDetails(details.cached_tokens),
    )


def text_of(result: FinalResult) -> tuple[str, list[TokenLogprobs] | None, Any]:
    """(text, logprobs, tool_calls) of a chat/completion result."""
    out = result.output
    if not isinstance(out, dict):
        return ("" if out is None else str(out)), None, None
    logprobs = out.get("logprobs")
    parsed = msgspec.convert(logprobs, list[TokenLogprobs]) if logprobs else None
    return str(out.get("text", "")), parsed, out.get("tool_calls")


def tool_call_deltas(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's streaming shape (each with its `index`)."""
    return [
        {
            "index": call.get("index", i),
            "id": call.get("id"),
            "type": "function",
            "function": call.get("function", {}),
        }
        for i, call in enumerate(calls)
    ]


def chat_logprobs(items: list[TokenLogprobs] | None) -> oa.ChoiceLogprobs | None:
    if items is None:
        return None
    return oa.ChoiceLogprobs(
        [
            oa.TokenLogprob(
                token=i.token,
                logprob=i.logprob,
                bytes=list(i.token.encode()),
                # Alternatives carry ids only; their text is not on the wire.
                top_logprobs=[
                    oa.TopLogprob(i.token if t.token_id == i.token_id else "", t.logprob)
                    for t in i.top
                ],
            )
            for i in items
        ]
    )


def chat_response(
    result: FinalResult, response_id: str, created: int, tier: str | None = None
) -> oa.ChatCompletion:
    text, logprobs, tool_calls = text_of(result)
    # OpenAI: content is null when the model called tools without writing text.
    message = oa.AssistantMessage("assistant", text or None if tool_calls else text, tool_calls)
    choice = oa.ChatChoice(0, message, chat_logprobs(logprobs), finish_reason(result.finish_reason))
    return oa.ChatCompletion(
        response_id, created, result.model, [choice], usage(result), service_tier=tier
    )


def completion_logprobs(items: list[TokenLogprobs] | None) -> oa.CompletionLogprobs | None:
    if items is None:
        return None
    offsets, at = [], 0
    for i in items:
        offsets.append(at)
        at += len(i.token)
    return oa.CompletionLogprobs(
        tokens=[i.token for i in items],
        token_logprobs=[i.logprob for i in items],
        top_logprobs=[{i.token: i.logprob} for i in items],
        text_offset=offsets,
    )


def completion_response(
    result: FinalResult, response_id: str, created: int, tier: str | None = None
) -> oa.Completion:
    text, logprobs, _ = text_of(result)
    choice = oa.CompletionChoice(
        0, text, completion_logprobs(logprobs), finish_reason(result.finish_reason)
    )
    return oa.Completion(
        response_id, "text_completion", created, result.model, [choice], usage(result), tier
    )


def _float32_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embedding_response(result: FinalResult, encoding_format: str) -> oa.EmbeddingList:
    out = result.output
    vectors = out.get("embeddings") if isinstance(out, dict) else None
    if not isinstance(vectors, list):
        raise ApiError(500, "The model returned no embeddings.", code="model_error")
    data = [
        oa.Embedding(i, _float32_base64(v) if encoding_format == "base64" else v)
        for i, v in enumerate(vectors)
    ]
    prompt = result.usage.prompt_tokens
    return oa.EmbeddingList(data, result.model, oa.EmbeddingUsage(prompt, prompt))
