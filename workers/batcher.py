"""Dynamic batching for SDK models: gather inputs for up to `max_batch_wait_ms`, run them as
one `predict()` call of at most `max_batch_size`, resolve each caller's future."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from workers.sdk import Model, ModelInput


class DynamicBatcher:
    def __init__(self, model: Model) -> None:
        self._model = model
        self._queue: asyncio.Queue[tuple[ModelInput, asyncio.Future[Any]]] = asyncio.Queue()
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
        self._queue.put_nowait((item, future))  # unbounded: never waits
        return await future

    async def _gather_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_size = self._model.max_batch_size
        wait_s = self._model.max_batch_wait_ms / 1000.0
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait_s
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
            # Drop inputs whose caller went away (cancelled) while waiting.
            batch = [(i, f) for i, f in batch if not f.done()]
            if not batch:
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[ModelInput, asyncio.Future[Any]]]) -> None:
        # When every caller of the batch has gone (cancelled: the requester gave up, the
        # deadline passed), stop the model's work too, so the slot is really free.
        predict = asyncio.get_running_loop().create_task(
            self._model.predict([item for item, _ in batch])
        )
        futures = [f for _, f in batch]

        def caller_done(_: asyncio.Future[Any]) -> None:
            if all(f.cancelled() for f in futures):
                predict.cancel()

        for f in futures:
            f.add_done_callback(caller_done)
        try:
            outputs = await predict
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"{type(self._model).__name__}.predict returned {len(outputs)} outputs "
                    f"for {len(batch)} inputs"
                )
            for (_, future), out in zip(batch, outputs, strict=True):
                if future.done():
                    continue
                if isinstance(out, BaseException):
                    future.set_exception(out)
                else:
                    future.set_result(out)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the batcher is stopping; else only the callers' work was cancelled
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._slots.release()
