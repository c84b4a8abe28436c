"""Noticing that an HTTP client went away while its request waits upstream.

ASGI reports a disconnect only to a pending `receive()`. Listening costs a task, so it starts
after `grace_s` (or up to the timers' resolution later): a request answered sooner pays a
coarse timer, nothing more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar.types import Receive

from producer.timers import CoarseTimers


class DisconnectWatch:
    def __init__(
        self,
        receive: Receive,
        on_disconnect: Callable[[], None],
        timers: CoarseTimers,
        grace_s: float = 0.05,
    ) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._task: asyncio.Task[None] | None = None
        self._timers = timers
        self._timer = timers.call_later(grace_s, self._listen)

    def _listen(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._on_disconnect()
                return

    def stop(self) -> None:
        """Before the response is sent (a streaming response listens itself)."""
        self._timers.cancel(self._timer)
        if self._task is not None:
            self._task.cancel()
            self._task = None
