"""Prompt token ids: chat messages through the model's chat template, completions as text or
ready-made token ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.errors import ErrorCode
from workers.errors import PermanentError


@dataclass(frozen=True)
class Prompt:
    """A request's prompt as the engine takes it."""

    token_ids: list[int]
    #: Its images (`vision.ImageInputs`); None: text only.
    images: Any = None
    #: The images' prefix-cache key (`EngineRequest.cache_key`).
    cache_key: tuple[int, str] | None = None


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """`messages` as rendered by `structured.plan` (text content, tools described)."""
    if not getattr(tokenizer, "chat_template", None):
        raise PermanentError(
            "this model has no chat template: use completions",
            ErrorCode.UNSUPPORTED_KIND,
            param="model",
        )
    try:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except Exception as exc:  # a template that rejects the conversation (roles, ...)
        raise PermanentError(f"chat template failed: {exc}", param="messages") from None
    return [int(i) for i in ids]


def completion_ids(tokenizer: Any, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = [int(i) for i in tokenizer(prompt)["input_ids"]]
    else:
        vocab = len(tokenizer)
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise PermanentError(
                f"prompt token ids out of range [0, {vocab}): {bad[:5]}", param="prompt"
            )
        ids = list(prompt)
    if not ids:
        raise PermanentError("prompt is empty", param="prompt")
    return ids
