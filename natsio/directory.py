"""Which models exist: those with a request stream (JetStream's stream names API), cached."""

from __future__ import annotations

import json
import time

from nats.aio.client import Client as NATS

from schemas import names

#: Streams whose subjects fall under this are request streams (one per model).
_REQUEST_SUBJECTS = f"{names.ROOT}.req.>"


async def list_models(nc: NATS, *, timeout_s: float = 5.0) -> list[str]:
    """Every model with a request stream, sorted (all pages of the stream names API)."""
    found: set[str] = set()
    offset = 0
    while True:
        request = {"offset": offset, "subject": _REQUEST_SUBJECTS}
        msg = await nc.request(
            names.JS_STREAM_NAMES, json.dumps(request).encode(), timeout=timeout_s
        )
        page = json.loads(msg.data)
        streams = page.get("streams") or []
        found |= {m for s in streams if (m := names.model_from_stream_name(s))}
        offset += len(streams)
        if not streams or offset >= int(page.get("total", 0)):
            return sorted(found)


class ModelDirectory:
    """`list_models`, asked at most once per `ttl_s`; `fresh` asks again once the answer is
    `min_age_s` old (a caller that missed a model: it may have appeared since)."""

    def __init__(self, nc: NATS, ttl_s: float = 2.0, min_age_s: float = 0.25) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._min_age_s = min_age_s
        #: (when it expires, when it was asked, the models)
        self._cached: tuple[float, float, list[str]] = (0.0, 0.0, [])

    async def models(self, *, fresh: bool = False) -> list[str]:
        now = time.monotonic()
        expires, asked, cached = self._cached
        if expires > now and not (fresh and now - asked >= self._min_age_s):
            return cached
        found = await list_models(self._nc)
        self._cached = (now + self._ttl_s, now, found)
        return found

    async def has(self, model: str) -> bool:
        """Whether `model` has a request stream, asking again when the cached answer says no
        (a model provisioned a moment ago is found)."""
        return model in await self.models() or model in await self.models(fresh=True)
