"""The echo model: returns its input. Used by tests, benchmarks and the local stack.

chat -> the last message's text; completion -> the prompt; embedding -> a small deterministic
vector per input; predict -> the payload unchanged. Usage counts whitespace-separated words.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

from schemas.messages import Usage
from schemas.payloads import ChatPayload, CompletionPayload, EmbeddingPayload, TextOutput
from workers.sdk import Model, ModelInput, ModelOutput

EMBEDDING_DIM = 8


def _embed(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255.0 for b in digest[:EMBEDDING_DIM]]


def _usage(prompt: str, completion: str = "") -> Usage:
    p, c = len(prompt.split()), len(completion.split())
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


class EchoModel(Model):
    kinds: ClassVar[frozenset[str]] = frozenset({"chat", "completion", "embedding", "predict"})
    max_batch_size: ClassVar[int] = 64
    max_batch_wait_ms: ClassVar[float] = 0.0

    @property
    def capacity(self) -> int:
        return int(self.options.get("capacity", 256))

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        return [self._one(item) for item in batch]

    def _one(self, item: ModelInput) -> ModelOutput:
        payload = item.payload
        if isinstance(payload, ChatPayload):
            text = payload.messages[-1].text()
            return ModelOutput(TextOutput(text=text), "stop", _usage(text, text))
        if isinstance(payload, CompletionPayload):
            prompt = payload.prompt
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            return ModelOutput(TextOutput(text=text), "stop", _usage(text, text))
        if isinstance(payload, EmbeddingPayload):
            inputs = [payload.input] if isinstance(payload.input, str) else payload.input
            vectors = [_embed(t) for t in inputs]
            return ModelOutput({"embeddings": vectors}, None, _usage(" ".join(inputs)))
        return ModelOutput(payload)
