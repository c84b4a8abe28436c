"""Delivery facts from a JetStream message's ack subject, parsed without allocating a
datetime (nats-py's `Msg.metadata` does; this is on the per-message path).

    $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts_ns>.<pending>           (v1)
    $JS.ACK.<domain>.<acc>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts_ns>.<pending>.<token>
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from schemas.names import JS_ACK_PREFIX


class AckInfo(NamedTuple):
    delivered: int
    #: When the message was stored, seconds since the epoch.
    timestamp_s: float
    #: Messages still waiting for this consumer after this one.
    pending: int


# Cached: the intake and then the handler read the same message's subject.
@functools.lru_cache(maxsize=1024)
def ack_info(reply: str | None) -> AckInfo | None:
    if not reply or not reply.startswith(JS_ACK_PREFIX):
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        base = 4
    elif len(tokens) >= 11:
        base = 6
    else:
        return None
    try:
        return AckInfo(int(tokens[base]), int(tokens[base + 3]) / 1e9, int(tokens[base + 4]))
    except ValueError:
        return None
