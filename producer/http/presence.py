"""Are any workers of a model alive? One ping per model per `ttl_s`, shared by all callers."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import names
from schemas.codec import decode_worker_info


class Presence:
    def __init__(self, nc: NATS, *, ttl_s: float, ping_timeout_s: float = 0.5) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._ping_timeout_s = ping_timeout_s
        #: model -> (answer, loop time it expires)
        self._cache: dict[str, tuple[bool, float]] = {}
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        #: model -> what its workers take (`WorkerInfo.inputs`), from their last answer.
        self._inputs: dict[str, tuple[str, ...]] = {}

    async def inputs(self, model: str) -> tuple[str, ...] | None:
        """The kinds of input `model`'s workers take, as they last answered a ping (one is
        sent if none has been); None when no worker has said."""
        if model not in self._inputs:
            await self.any_worker(model)
        return self._inputs.get(model)

    async def any_worker(self, model: str) -> bool:
        loop = asyncio.get_running_loop()
        hit = self._cache.get(model)
        if hit is not None and hit[1] > loop.time():
            return hit[0]
        running = self._inflight.get(model)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bool] = loop.create_future()
        self._inflight[model] = future
        try:
            alive = await self._ping(model)
            self._cache[model] = (alive, loop.time() + self._ttl_s)
            future.set_result(alive)
            return alive
        finally:
            del self._inflight[model]
            if not future.done():
                future.set_result(False)

    async def _ping(self, model: str) -> bool:
        """True when at least one worker answers (the first answer is enough), or when one
        is subscribed but slow to answer: the server answers "no responders" at once when
        nobody listens on the ping subject, so a ping that times out instead has reached a
        worker, busy (a loaded CPU, a long model call on its loop), not gone; its request
        waits for it, bounded by its deadline. While the connection to NATS is down nobody
        can answer: that says nothing about the workers, so it counts as alive too (a request
        stored before the outage is served after it)."""
        try:
            msg = await self._nc.request(
                names.ping_subject(model), b"", timeout=self._ping_timeout_s
            )
        except NoRespondersError:
            return not self._nc.is_connected
        except (NatsTimeoutError, TimeoutError):
            return True
        with contextlib.suppress(Exception):  # an older worker's answer may not say
            self._inputs[model] = tuple(decode_worker_info(msg.data).inputs)
        return bool(msg.data)
