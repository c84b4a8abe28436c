"""Dynamic batching for SDK models: gather inputs for up to `max_batch_wait_ms`, run them as
one `predict()` call of at most `max_batch_size`, resolve each caller's future."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from workers.sdk import Model, ModelInput

#: Batches already waiting when one ends run back to back in the same task, for up to this
#: long; calls that run on the event loop (a fast runtime's, `runtimes/placement.py`) then
#: have no turn of the loop between them, and their answers go out together (one write to
#: NATS for all their replies and acks, one read at nats-server and the bridge) instead of a
#: turn and a flush each. Each batch is still its own `predict()` call of at most
#: `max_batch_size`. A model with `max_batch_size = 1` under load gains most (a logistic
#: regression through the V2 route: about 2x the requests per second, README "KServe
#: protocols"); a slow call ends the run, so I/O-bound models run as before.
RUN_BUDGET_S = 0.002


class DynamicBatcher:
    def __init__(self, model: Model) -> None:
        self._model = model
        #: (input, its caller's future, its arrival time on the loop's clock)
        self._queue: asyncio.Queue[tuple[ModelInput, asyncio.Future[Any], float]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(model.max_concurrent_batches)
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._gather_loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running):
            task.cancel()

    async def submit(self, item: ModelInput) -> Any:
        """The model's output for `item` (or raise the exception the model returned for it)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, future.get_loop().time()))  # unbounded
        return await future

    async def _gather_loop(self) -> None:
        """A slot first, then the batch: inputs that arrived while every slot was busy form
        the next batch at once (and a run, `_run`, takes them in arrival order meanwhile)."""
        while True:
            await self._slots.acquire()
            try:
                batch = await self._gather()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[tuple[ModelInput, asyncio.Future[Any], float]]:
        """Up to `max_batch_size` inputs, waiting at most `max_batch_wait_ms` from the first
        one's arrival; inputs whose caller went away (cancelled) are dropped."""
        loop = asyncio.get_running_loop()
        max_size = self._model.max_batch_size
        wait_s = self._model.max_batch_wait_ms / 1000.0
        while True:
            batch = [await self._queue.get()]
            deadline = batch[0][2] + wait_s
            while len(batch) < max_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                    # that arrives as the awaited item does, and the stopped loop runs on.
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            batch = [entry for entry in batch if not entry[1].done()]
            if batch:
                return batch

    def _ready_batch(self) -> list[tuple[ModelInput, asyncio.Future[Any], float]]:
        """Up to `max_batch_size` inputs already queued (callers still waiting), no waiting."""
        batch: list[tuple[ModelInput, asyncio.Future[Any], float]] = []
        while len(batch) < self._model.max_batch_size and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item[1].done():
                batch.append(item)
        return batch

    async def _run(self, batch: list[tuple[ModelInput, asyncio.Future[Any], float]]) -> None:
        """`batch`, then batches already waiting, back to back for up to RUN_BUDGET_S."""
        # When every caller of the batch running has gone (cancelled: the requester gave up,
        # the deadline passed), stop the model's work too, so the slot is really free.
        current: list[asyncio.Future[Any]] = []

        def caller_done(_: asyncio.Future[Any]) -> None:
            if current and all(f.cancelled() for f in current):
                work.cancel()

        async def batches() -> None:
            nonlocal batch
            started = loop.time()
            while batch:
                current[:] = [f for _, f, _ in batch]
                for f in current:
                    f.add_done_callback(caller_done)
                await self._run_batch(batch)
                if loop.time() - started >= RUN_BUDGET_S:
                    return
                batch = self._ready_batch()

        loop = asyncio.get_running_loop()
        work = loop.create_task(batches())
        try:
            await work
        except asyncio.CancelledError:
            current_task = asyncio.current_task()
            if current_task is not None and current_task.cancelling():
                raise  # the batcher is stopping; else only the callers' work was cancelled
        finally:
            self._slots.release()

    async def _run_batch(self, batch: list[tuple[ModelInput, asyncio.Future[Any], float]]) -> None:
        try:
            outputs = await self._model.predict([item for item, _, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"{type(self._model).__name__}.predict returned {len(outputs)} outputs "
                    f"for {len(batch)} inputs"
                )
        except Exception as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future, _), out in zip(batch, outputs, strict=True):
            if future.done():
                continue
            if isinstance(out, BaseException):
                future.set_exception(out)
            else:
                future.set_result(out)
