"""Server-sent events in OpenAI's framing: `data: <json>\n\n` ... `data: [DONE]\n\n`."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(obj: Any) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"
