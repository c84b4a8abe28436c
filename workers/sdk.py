"""The model SDK: a small base class for any Python model, served with dynamic batching.

    @register_model("sentiment")
    class Sentiment(Model):
        kinds = frozenset({"predict"})
        max_batch_size = 32

        def load(self) -> None:
            self.net = load_my_net(self.options["path"])
            self.pool = single_thread_executor("sentiment")  # workers.threads

        async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self.net.run, [i.payload for i in batch])

`load()` runs once, in a thread of its own, before the worker pulls anything. Blocking work in
`predict()` belongs on one long-lived thread of the model's own (for torch, one OpenMP team:
see `workers.threads`), not on asyncio's shared pool. `predict()` gets a batch of
up to `max_batch_size` inputs gathered for at most `max_batch_wait_ms`, and returns one output
per input, in order: a JSON-able value, a `ModelOutput`, or an exception instance for an input
that failed on its own (`PermanentError` for bad input; anything else is retried).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import msgspec

from schemas.messages import FinishReason, Kind, Usage
from schemas.params import SamplingParams
from schemas.v2 import ModelMetadata


class ModelInput(msgspec.Struct, frozen=True):
    id: str
    kind: Kind
    #: Typed by kind: `ChatPayload`, `CompletionPayload`, `EmbeddingPayload`, or raw JSON.
    payload: Any
    parameters: SamplingParams


class ModelOutput(msgspec.Struct, frozen=True):
    output: Any
    finish_reason: FinishReason | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


class Model(ABC):
    #: Request kinds this model serves; others are refused with `unsupported_kind`.
    kinds: ClassVar[frozenset[str]] = frozenset({"predict"})
    max_batch_size: ClassVar[int] = 32
    max_batch_wait_ms: ClassVar[float] = 2.0
    #: Batches allowed to run at once (> 1 overlaps I/O-bound models).
    max_concurrent_batches: ClassVar[int] = 1

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.options: Mapping[str, Any] = options or {}

    @property
    def capacity(self) -> int:
        """Requests held at once: enough to form the next batches while one runs."""
        return self.max_batch_size * (self.max_concurrent_batches + 1)

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load weights; called once, in a worker thread, before serving."""

    def metadata(self) -> ModelMetadata | None:
        """Its Open Inference Protocol metadata (tensors in and out), if it declares one."""
        return None

    @abstractmethod
    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        """One output per input, in order (see the module docstring)."""


_REGISTRY: dict[str, type[Model]] = {}


def register_model(name: str) -> Callable[[type[Model]], type[Model]]:
    def wrap(cls: type[Model]) -> type[Model]:
        _REGISTRY[name] = cls
        return cls

    return wrap


#: Models shipped with jetserve, imported on first use so that importing the SDK stays cheap.
_BUILTIN = {
    "echo": "workers.models.echo:EchoModel",
    "minilm": "workers.models.minilm:MiniLMEmbedder",
}


def resolve_model_class(spec: str) -> type[Model]:
    """A registered name (`echo`) or an import path (`package.module:Class`)."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    path = _BUILTIN.get(spec, spec)
    module_name, sep, attr = path.partition(":")
    if not sep:
        raise ValueError(f"unknown model class {spec!r}: not registered and not 'module:Class'")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise ValueError(f"{path!r} is not a jetserve.workers.sdk.Model subclass")
    return cls
