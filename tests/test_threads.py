"""workers.threads: one-shot work on a thread that ends with it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from workers.threads import in_own_thread, single_thread_executor


def test_in_own_thread_returns_and_the_thread_ends() -> None:
    seen: list[threading.Thread] = []

    def work(x: int) -> int:
        seen.append(threading.current_thread())
        return x * 2

    async def main() -> int:
        return await in_own_thread(work, 21)

    assert asyncio.run(main()) == 42
    (thread,) = seen
    assert thread is not threading.main_thread()
    thread.join(5)
    assert not thread.is_alive()  # nothing it set up (an OpenMP team) outlives it


def test_in_own_thread_raises_what_the_function_raised() -> None:
    def work() -> None:
        raise ValueError("bad model path")

    async def main() -> None:
        await in_own_thread(work)

    with pytest.raises(ValueError, match="bad model path"):
        asyncio.run(main())


def test_in_own_thread_cancelled_while_running_does_not_break_the_loop() -> None:
    release = threading.Event()

    async def main() -> None:
        task = asyncio.ensure_future(in_own_thread(release.wait, 5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await asyncio.sleep(0.1)  # the thread's late result lands on a cancelled future

    asyncio.run(main())


def test_single_thread_executor_runs_everything_on_one_thread() -> None:
    pool = single_thread_executor("m")
    try:
        names = {pool.submit(lambda: threading.current_thread().name).result() for _ in range(5)}
    finally:
        pool.shutdown()
    assert len(names) == 1
    assert names.pop().startswith("m")
