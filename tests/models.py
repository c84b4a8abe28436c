"""Models used only by tests, loaded by workers as `tests.models:<Class>`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from workers.sdk import Model, ModelInput


class SlowModel(Model):
    """Sleeps `payload["sleep_s"]` then echoes the payload; appends each id it finishes to
    the file named by the option `record` (one line per completion, to count runs)."""

    kinds: ClassVar[frozenset[str]] = frozenset({"predict"})
    max_batch_size: ClassVar[int] = 64
    max_batch_wait_ms: ClassVar[float] = 0.0
    max_concurrent_batches: ClassVar[int] = 64

    @property
    def capacity(self) -> int:
        return int(self.options.get("capacity", 8))

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        delay = max(
            float(i.payload.get("sleep_s", 0)) if isinstance(i.payload, dict) else 0.0
            for i in batch
        )
        await asyncio.sleep(delay)
        record = self.options.get("record")
        if record:
            lines = "".join(f"{item.id} {os.getpid()}\n" for item in batch)
            await asyncio.to_thread(_append, Path(record), lines)
        return [i.payload for i in batch]


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


class CrashModel(Model):
    """Kills its own process (like a segfault) when the payload says `crash`; sleeps
    `sleep_s` first when the payload says so (to have other requests in flight); appends
    each id it finishes to the file named by the option `record`."""

    kinds: ClassVar[frozenset[str]] = frozenset({"predict"})
    max_batch_size: ClassVar[int] = 1

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        if any(isinstance(i.payload, dict) and i.payload.get("crash") for i in batch):
            os._exit(17)
        delay = max(
            float(i.payload.get("sleep_s", 0)) if isinstance(i.payload, dict) else 0.0
            for i in batch
        )
        await asyncio.sleep(delay)
        record = self.options.get("record")
        if record:
            lines = "".join(f"{item.id} {os.getpid()}\n" for item in batch)
            await asyncio.to_thread(_append, Path(record), lines)
        return [i.payload for i in batch]


class WideCrashModel(CrashModel):
    """CrashModel running up to 8 requests at once (others are in flight when it crashes)."""

    max_concurrent_batches: ClassVar[int] = 8


class WiderCrashModel(CrashModel):
    """CrashModel running up to 32 requests at once (capacity 33)."""

    max_concurrent_batches: ClassVar[int] = 32


class SlowLoadModel(SlowModel):
    """SlowModel whose load takes `load_s` seconds (option)."""

    def load(self) -> None:
        import time

        time.sleep(float(self.options.get("load_s", 3.0)))


class FailingModel(Model):
    """Raises on payloads that say `fail`, per input."""

    kinds: ClassVar[frozenset[str]] = frozenset({"predict"})

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        return [
            RuntimeError("model failed")
            if isinstance(i.payload, dict) and i.payload.get("fail")
            else i.payload
            for i in batch
        ]


class SlowChatModel(Model):
    """Chat/completion model for the HTTP bridge tests: a prompt `sleep 2.5` sleeps that long
    then answers `slept 2.5`; any other prompt is echoed. Appends each id it finishes to the
    file named by the option `record`."""

    kinds: ClassVar[frozenset[str]] = frozenset({"chat", "completion"})
    max_batch_size: ClassVar[int] = 1
    max_batch_wait_ms: ClassVar[float] = 0.0
    max_concurrent_batches: ClassVar[int] = 64

    @property
    def capacity(self) -> int:
        return int(self.options.get("capacity", 1))

    async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
        from schemas.messages import Usage
        from schemas.payloads import ChatPayload, TextOutput
        from workers.sdk import ModelOutput

        item = batch[0]
        payload = item.payload
        prompt = payload.messages[-1].text() if isinstance(payload, ChatPayload) else payload.prompt
        text = str(prompt)
        if text.startswith("sleep "):
            await asyncio.sleep(float(text.split()[1]))
            text = f"slept {text.split()[1]}"
        record = self.options.get("record")
        if record:
            await asyncio.to_thread(_append, Path(record), f"{item.id} {os.getpid()}\n")
        return [ModelOutput(TextOutput(text=text), "stop", Usage(1, 1, 2))]
