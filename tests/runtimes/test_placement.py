"""Where a runtime's model call runs: short calls on the event loop, the rest (and the first)
on the model's own thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from schemas.params import SamplingParams
from schemas.v2 import TensorMetadata
from workers.runtimes.base import Arrays, TensorModel
from workers.runtimes.placement import Placement
from workers.sdk import ModelInput


def test_placement_predicts_from_the_cost_per_row() -> None:
    p = Placement(inline_below_ms=1.0)
    assert not p.inline(1)  # nothing measured yet
    p.observe(0.0002, 1)  # 200 µs a row
    assert p.inline(1)
    assert p.inline(4)
    assert not p.inline(5)  # 1 ms predicted
    for _ in range(20):
        p.observe(0.004, 1)  # the model got slow
    assert not p.inline(1)
    off = Placement(inline_below_ms=0.0)
    off.observe(1e-6, 1)
    assert not off.inline(1)


class _Doubler(TensorModel):
    platform: ClassVar[str] = "test"
    delay_s = 0.0

    def load_file(self, path: Path) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
        self.threads: list[int] = []
        spec = [TensorMetadata("x", "FP64", [-1, 1])]
        return spec, [TensorMetadata("y", "FP64", [-1, 1])]

    def run(self, inputs: Arrays) -> Arrays:
        self.threads.append(threading.get_ident())
        time.sleep(self.delay_s)
        return {"y": inputs["x"] * 2}


def _item(value: float) -> ModelInput:
    payload: Any = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [value]}]}
    return ModelInput("r", "predict", payload, SamplingParams())


def test_short_calls_run_on_the_loop_long_ones_on_the_model_thread() -> None:
    async def run() -> None:
        model = _Doubler("d", {"path": "unused"})
        model.load()
        loop_thread = threading.get_ident()
        for value in (1.0, 2.0, 3.0):
            (out,) = await model.predict([_item(value)])
            assert out.outputs[0].data == [value * 2]
        first, *rest = model.threads
        assert first != loop_thread  # the first call: nothing measured yet
        assert rest == [loop_thread, loop_thread]
        model.delay_s = 0.005  # slower than the limit: back to the model's thread
        for _ in range(3):
            await model.predict([_item(1.0)])
        assert model.threads[-1] != loop_thread
        off = _Doubler("d", {"path": "unused", "inline_below_ms": 0})
        off.load()
        for _ in range(3):
            await off.predict([_item(1.0)])
        assert loop_thread not in off.threads

    asyncio.run(run())


def test_openmp_libraries_stay_on_their_thread_unless_single_threaded() -> None:
    class Teams(_Doubler):
        openmp: ClassVar[bool] = True

    async def run(options: dict[str, Any]) -> list[bool]:
        model = Teams("t", {"path": "unused", **options})
        model.load()
        for _ in range(3):
            await model.predict([_item(1.0)])
        return [threading.get_ident() == t for t in model.threads]

    assert asyncio.run(run({})) == [False, False, False]
    assert asyncio.run(run({"threads": 1})) == [False, True, True]
