"""The connection every jetserve process makes: reconnect forever, quickly."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client as NATS

#: Reconnect without end (a process outlives a NATS restart), every 0.25 s.
OPTIONS: dict[str, Any] = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.25}


async def connect(url: str, *, name: str | None = None, **options: Any) -> NATS:
    """`nats.connect` with `OPTIONS`; `options` (callbacks, credentials) add or override."""
    return await nats.connect(url, name=name, **{**OPTIONS, **options})
