"""The dynamic batcher: a `predict()` call per batch of at most `max_batch_size`, and batches
already waiting run back to back, their answers released in one turn of the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

from schemas.params import SamplingParams
from workers.batcher import DynamicBatcher
from workers.sdk import Model, ModelInput


def _inputs(n: int) -> list[ModelInput]:
    return [ModelInput(f"r{i}", "predict", i, SamplingParams()) for i in range(n)]


async def test_waiting_single_row_calls_run_back_to_back_then_answer_together() -> None:
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    class Quick(Model):
        max_batch_size: ClassVar[int] = 1
        calls: list[tuple[int, int]] = []  # (input, event-loop turns seen) per call

        async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
            self.calls.append((batch[0].payload, turns))
            return [item.payload * 10 for item in batch]

    model = Quick("q")
    batcher = DynamicBatcher(model)
    batcher.start()
    tick = asyncio.create_task(ticker())
    try:
        answers = await asyncio.gather(*(batcher.submit(i) for i in _inputs(8)))
    finally:
        tick.cancel()
        await batcher.stop()
    assert answers == [i * 10 for i in range(8)]
    assert [payload for payload, _ in model.calls] == list(range(8))  # one call per input
    # The first call forms the batch; the seven waiting behind it ran in the same task, with no
    # turn of the loop between the calls (each call in a task of its own: a turn or more each).
    assert len({seen for _, seen in model.calls[1:]}) == 1


async def test_a_failing_batch_in_a_run_fails_only_its_callers() -> None:
    class Picky(Model):
        max_batch_size: ClassVar[int] = 1

        async def predict(self, batch: Sequence[ModelInput]) -> Sequence[Any]:
            if batch[0].payload == 2:
                raise ValueError("no twos")
            return [item.payload for item in batch]

    batcher = DynamicBatcher(Picky("p"))
    batcher.start()
    try:
        got = await asyncio.gather(*(batcher.submit(i) for i in _inputs(5)), return_exceptions=True)
    finally:
        await batcher.stop()
    assert got[:2] == [0, 1]
    assert got[3:] == [3, 4]
    assert isinstance(got[2], ValueError)
