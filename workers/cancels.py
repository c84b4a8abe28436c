"""Which requests are running here, which were cancelled before they arrived, and which ran
past their deadline."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any


class CancelRegistry:
    """Maps running request ids to their tasks; remembers recent cancels for `ttl_s`.

    Every replica of a model receives every cancel (core NATS fan-out); a cancel for a request
    still queued is remembered, so the replica that later pulls it skips it.

    Deadlines: a request registered with one is cancelled once it has passed, and `expired()`
    then tells the handler why. One sweep every `sweep_every_s` checks them all (a task that
    runs while any deadline is registered): on the per-request path this replaces a loop timer
    per request (`asyncio.timeout`), at the price of firing up to `sweep_every_s` late.
    """

    def __init__(
        self, ttl_s: float = 600.0, max_remembered: int = 100_000, sweep_every_s: float = 0.1
    ) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        self._ttl_s = ttl_s
        self._max = max_remembered
        #: request id -> deadline (seconds since the epoch, like `deadline_ms`)
        self._deadlines: dict[str, float] = {}
        self._expired: set[str] = set()
        self._sweep_every_s = sweep_every_s
        self._sweeper: asyncio.Task[None] | None = None

    def register(
        self, request_id: str, task: asyncio.Task[Any], deadline_s: float | None = None
    ) -> None:
        self._running[request_id] = task
        if deadline_s is not None:
            self._deadlines[request_id] = deadline_s
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def unregister(self, request_id: str) -> None:
        self._running.pop(request_id, None)
        self._deadlines.pop(request_id, None)
        self._expired.discard(request_id)

    @property
    def sweeping(self) -> bool:
        """The deadline sweep is running (while any deadline is registered)."""
        return self._sweeper is not None

    def expired(self, request_id: str) -> bool:
        """The request was cancelled because its deadline passed (until unregistered)."""
        return request_id in self._expired

    def is_cancelled(self, request_id: str) -> bool:
        expiry = self._cancelled.get(request_id)
        return expiry is not None and expiry > time.monotonic()

    def cancel(self, request_id: str) -> bool:
        """Record the cancel; cancel the task if it runs here. True if it was running."""
        self._cancelled[request_id] = time.monotonic() + self._ttl_s
        self._cancelled.move_to_end(request_id)
        while len(self._cancelled) > self._max:
            self._cancelled.popitem(last=False)
        task = self._running.get(request_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def expire_overdue(self, now_s: float) -> int:
        """Cancel the running requests whose deadline is at or before `now_s`; how many."""
        overdue = [rid for rid, deadline in self._deadlines.items() if deadline <= now_s]
        for rid in overdue:
            del self._deadlines[rid]
            task = self._running.get(rid)
            if task is not None and not task.done():
                self._expired.add(rid)
                task.cancel()
        return len(overdue)

    async def _sweep(self) -> None:
        try:
            while self._deadlines:
                await asyncio.sleep(self._sweep_every_s)
                self.expire_overdue(time.time())
        finally:
            self._sweeper = None
