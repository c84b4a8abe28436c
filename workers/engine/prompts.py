"""Request payloads to prompt token ids: chat through the model's chat template, completions
as text or ready-made token ids."""

from __future__ import annotations

from typing import Any

from schemas.errors import ErrorCode
from schemas.payloads import ChatMessage, ChatPayload, CompletionPayload
from workers.errors import PermanentError


def _message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls is not None:
        out["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def prompt_ids(tokenizer: Any, payload: ChatPayload | CompletionPayload) -> list[int]:
    """Token ids for a chat or completion payload (`tokenizer`: a fast HF tokenizer)."""
    if isinstance(payload, ChatPayload):
        if not getattr(tokenizer, "chat_template", None):
            raise PermanentError(
                "this model has no chat template: use completions", ErrorCode.UNSUPPORTED_KIND
            )
        try:
            ids = tokenizer.apply_chat_template(
                [_message(m) for m in payload.messages],
                tools=payload.tools,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        except Exception as exc:  # a template that rejects the conversation (roles, ...)
            raise PermanentError(f"chat template failed: {exc}") from None
        return [int(i) for i in ids]
    prompt = payload.prompt
    if isinstance(prompt, str):
        return [int(i) for i in tokenizer(prompt)["input_ids"]]
    vocab = len(tokenizer)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise PermanentError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
    if not prompt:
        raise PermanentError("prompt is empty")
    return list(prompt)
