"""What the rate buckets (`ratelimit.py`) and the in-flight slots (`inflight.py`) share: a
replica's lease of a key, changed on the shared store one operation at a time, and a warning
while that store cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator


class Turn:
    """One operation on a key's shared record at a time, per replica: while one is under way
    (`busy`), the others wait for it (`wait`, it may bring what they need), then look again."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done: asyncio.Future[None] | None = None

    @property
    def busy(self) -> bool:
        return self._done is not None

    async def wait(self) -> None:
        if self._done is not None:
            await asyncio.shield(self._done)

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        """Hold the turn for the body (an operation on the shared record)."""
        done = self._done = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            done.set_result(None)
            self._done = None


class Unreachable:
    """Logs that the shared store (or the limits) cannot be read, at most every `every_s`:
    requests are then admitted (fail open), and a flood of them must not flood the log."""

    def __init__(self, log: logging.Logger, what: str, every_s: float = 10.0) -> None:
        self._log = log
        self._what = what
        self._every_s = every_s
        self._warned_s = -1e9

    def warn(self, key: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_s > self._every_s:
            self._warned_s = now
            self._log.warning(
                "%s unreachable (%s: %s): admitting without them", self._what, key, exc
            )
