"""Which requests are running here, and which were cancelled before they arrived."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any


class CancelRegistry:
    """Maps running request ids to their tasks; remembers recent cancels for `ttl_s`.

    Every replica of a model receives every cancel (core NATS fan-out); a cancel for a request
    still queued is remembered, so the replica that later pulls it skips it.
    """

    def __init__(self, ttl_s: float = 600.0, max_remembered: int = 100_000) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        self._ttl_s = ttl_s
        self._max = max_remembered

    def register(self, request_id: str, task: asyncio.Task[Any]) -> None:
        self._running[request_id] = task

    def unregister(self, request_id: str) -> None:
        self._running.pop(request_id, None)

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
