"""Where blocking torch work runs, and why it matters on a small CPU.

Every thread that runs a parallel torch operator becomes an OpenMP master with its own team
of worker threads, kept for as long as that thread lives. Once a process holds more OpenMP
threads than CPUs, libgomp stops letting idle workers spin and puts them to sleep after each
parallel region, so every later region pays a wake-up: on a 2-core machine the engine ran
about 20% slower (the process kept 1.67 of 2 CPUs busy instead of 1.95) while the pool
thread that had loaded the model stayed alive.

So: torch work that happens once (loading) runs on a thread that ends with it
(`in_own_thread`), and recurring torch work runs on one long-lived thread per model (the
engine's thread; `single_thread_executor` for SDK models), never on asyncio's shared pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


async def in_own_thread(fn: Callable[..., T], *args: Any, name: str = "load") -> T:
    """`fn(*args)` on a new thread that exits when it returns."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as exc:
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def single_thread_executor(name: str) -> ThreadPoolExecutor:
    """One long-lived thread for a model's recurring torch work (one OpenMP team)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
