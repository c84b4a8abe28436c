"""Each model's serving capacity (the slots of its live workers, from their ping answers),
known without waiting: `window(model)` answers from what the last ping found and, when that
is older than `ttl_s`, pings again in the background. For `online_share.OnlineShare`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NATS

from natsio.ping import ping_workers, serving_capacity

log = logging.getLogger(__name__)


def window_size(capacity: int) -> int | None:
    """The online window of a model of `capacity` slots: its capacity plus a sixteenth (at
    least 1), so that a slot that frees finds a request already in the stream while the bridge
    publishes the next one (about one round trip). Each request in the stream beyond the
    capacity is one more slot to free before another tenant's request runs. None (no window)
    without capacity."""
    return capacity + max(1, capacity // 16) if capacity > 0 else None


class ModelCapacity:
    def __init__(self, nc: NATS, *, ttl_s: float = 2.0, ping_window_s: float = 0.25) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._ping_window_s = ping_window_s
        #: model -> (its window, monotonic time it goes stale)
        self._known: dict[str, tuple[int | None, float]] = {}
        self._pinging: dict[str, asyncio.Task[None]] = {}

    def window(self, model: str) -> int | None:
        known = self._known.get(model)
        if (known is None or known[1] <= time.monotonic()) and model not in self._pinging:
            task = asyncio.get_running_loop().create_task(self._ping(model))
            self._pinging[model] = task
        return None if known is None else known[0]

    async def _ping(self, model: str) -> None:
        try:
            workers = await ping_workers(self._nc, model, window_s=self._ping_window_s)
            size = window_size(serving_capacity(workers))
            self._known[model] = (size, time.monotonic() + self._ttl_s)
        except Exception as exc:  # NATS away: keep what was known, ask again later
            log.debug("capacity of %s not known: %s", model, exc)
            known = self._known.get(model)
            self._known[model] = (known[0] if known else None, time.monotonic() + self._ttl_s)
        finally:
            self._pinging.pop(model, None)

    async def close(self) -> None:
        for task in list(self._pinging.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
