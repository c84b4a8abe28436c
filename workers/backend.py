"""What the worker loop needs from whatever runs the model.

Two implementations: `SdkBackend` (any `sdk.Model`, dynamic batching) and the LLM engine's
backend (`workers.engine.adapter`). The handler cancels work by cancelling the task that
awaits `run()`; a backend must free the request's resources when that happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from schemas.messages import FinishReason, InferenceRequest, TokenLogprobs, Usage
from schemas.openai_errors import request_param
from schemas.payloads import TextOutput, typed_payload
from schemas.v2 import ModelMetadata
from workers.batcher import DynamicBatcher
from workers.errors import PermanentError
from workers.sdk import Model, ModelInput, ModelOutput

#: How long `Backend.stop()` may wait for the backend to stop, once drained (nothing runs by
#: then: the engine needs one step). The pod's grace period leaves room for it (jetserve/k8s.py).
STOP_TIMEOUT_S = 10.0


class ChunkSink(Protocol):
    async def __call__(
        self,
        delta: str,
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprobs] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None: ...


class Completion(msgspec.Struct, frozen=True):
    """A request's outcome. (A Struct: built for every request, cheaper than a frozen
    dataclass.)"""

    output: Any
    finish_reason: FinishReason | None
    usage: Usage
    #: Monotonic time of the first output token (None: not a token stream).
    first_token_at: float | None = None
    #: Output tokens produced (for time per output token).
    output_tokens: int = 0


@dataclass(frozen=True)
class BackendStats:
    """Engine state for the metrics (vLLM's running / waiting / KV-cache usage)."""

    running: int
    waiting: int
    #: Fraction of the KV-cache budget in use, 0-1.
    kv_cache_usage: float
    #: KV blocks held by running sequences, and all of them.
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    #: Prompt tokens looked up in the prefix cache and found there, since start (counters).
    prefix_cache_queries_tokens: int = 0
    prefix_cache_hits_tokens: int = 0


class Backend(Protocol):
    #: Request kinds served.
    kinds: frozenset[str]

    def capacity(self) -> int:
        """Requests it can hold in flight right now (may change as memory frees)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> BackendStats | None:
        """Engine state for metrics; None for backends without an engine."""
        ...

    def metadata(self) -> ModelMetadata | None:
        """The model's Open Inference Protocol metadata; None when it declares none."""
        ...

    async def run(self, request: InferenceRequest, emit: ChunkSink) -> Completion:
        """Run one request; stream output through `emit` when `request.stream` is set.

        Raises `PermanentError` for bad input, `RetryableError` (or anything else) for a
        failure worth retrying, `EngineDeadError` when the runtime is broken.
        """
        ...


def model_input(request: InferenceRequest) -> ModelInput:
    try:
        payload = typed_payload(request)
    except msgspec.ValidationError as exc:
        raise PermanentError(str(exc), param=request_param(str(exc))) from None
    return ModelInput(request.id, request.kind, payload, request.parameters)


class SdkBackend:
    """Serves an `sdk.Model` through a `DynamicBatcher`."""

    def __init__(self, model: Model, capacity: int | None = None) -> None:
        self.model = model
        self.kinds = model.kinds
        self._capacity = capacity or model.capacity
        self._batcher = DynamicBatcher(model)

    def capacity(self) -> int:
        return self._capacity

    async def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    def stats(self) -> BackendStats | None:
        return None

    def metadata(self) -> ModelMetadata | None:
        return self.model.metadata()

    async def run(self, request: InferenceRequest, emit: ChunkSink) -> Completion:
        out = await self._batcher.submit(model_input(request))
        if not isinstance(out, ModelOutput):
            out = ModelOutput(out)
        if request.stream and isinstance(out.output, TextOutput) and out.output.text:
            await emit(out.output.text)
        return Completion(out.output, out.finish_reason, out.usage)
