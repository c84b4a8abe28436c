"""Which models exist: those with a request stream (JetStream's stream names API), cached."""

from __future__ import annotations

import json
import time

from nats.aio.client import Client as NATS

from schemas import names


class ModelDirectory:
    def __init__(self, nc: NATS, ttl_s: float = 2.0) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._cached: tuple[float, set[str]] = (0.0, set())

    async def models(self) -> set[str]:
        now = time.monotonic()
        if self._cached[0] > now:
            return self._cached[1]
        found: set[str] = set()
        offset = 0
        while True:
            request = {"offset": offset, "subject": f"{names.ROOT}.req.>"}
            msg = await self._nc.request(
                "$JS.API.STREAM.NAMES", json.dumps(request).encode(), timeout=5
            )
            page = json.loads(msg.data)
            streams = page.get("streams") or []
            found |= {m for s in streams if (m := names.model_from_stream_name(s))}
            offset += len(streams)
            if not streams or offset >= int(page.get("total", 0)):
                break
        self._cached = (now + self._ttl_s, found)
        return found
