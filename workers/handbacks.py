"""Hand-backs: deliveries that must not count as attempts.

A draining worker hands back (naks) what it holds or could not finish in time, and JetStream
raises the message's delivery count all the same. Left alone, a long generation handed back on
each of a few scale-downs would be dead-lettered without running. So each hand-back is
recorded per message in the KV bucket `names.HANDBACK_BUCKET` (key: stream and stream
sequence, which stay the same across deliveries), and a redelivered message's attempt is its
delivery count minus its recorded hand-backs.

Cost: first deliveries never look (the per-message path is unchanged); a redelivery pays one
KV read (shared by the intake's quarantine check and the handler through a small cache); a
hand-back (drain only) one KV read and write. The consumers' `max_deliver` leaves room for
`MAX_HANDBACKS` hand-backs beyond the attempts (workers/provision.py).

Another cause of deliveries that should not count (a worker restarted at once after a crash
that was not the request's fault) records here the same way: `record(msg)`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

#: Hand-backs a message may have on top of its attempts before JetStream stops delivering it.
MAX_HANDBACKS = 20
#: Entries expire after this long (a message waits in its stream at most about this long).
TTL_S = 7 * 24 * 3600.0
_CACHE_SIZE = 4096
_UPDATE_TRIES = 5


class AckedMessage(Protocol):
    """What of a JetStream message this module reads (nats-py's `Msg` has it)."""

    reply: str

    async def nak(self, delay: float | None = None) -> None: ...


def message_key(reply: str | None) -> str | None:
    """`<stream>.<stream sequence>` from a JetStream ack subject; None for anything else."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        stream, sseq = tokens[2], tokens[5]
    elif len(tokens) >= 11:
        stream, sseq = tokens[4], tokens[7]
    else:
        return None
    return f"{stream}.{sseq}" if sseq.isdigit() else None


class HandBacks:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        #: Ack subject -> attempt, for the deliveries looked up lately.
        self._attempts: OrderedDict[str, int] = OrderedDict()

    async def recorded(self, key: str) -> tuple[int, int | None]:
        """(hand-backs recorded, the entry's revision; None when there is no entry)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return 0, None
        try:
            return int(entry.value or b"0"), entry.revision
        except ValueError:
            return 0, entry.revision

    async def attempt(self, msg: AckedMessage, delivered: int) -> int:
        """The delivery count less the recorded hand-backs (at least 1). On a KV error the
        delivery count itself: a message is never run more often than its attempts allow."""
        if delivered <= 1:
            return delivered
        cached = self._attempts.get(msg.reply)
        if cached is not None:
            return cached
        key = message_key(msg.reply)
        if key is None:
            return delivered
        try:
            handed_back, _ = await self.recorded(key)
        except Exception as exc:
            log.warning("hand-back lookup of %s failed: %s", key, exc)
            return delivered
        attempt = max(1, delivered - handed_back)
        self._attempts[msg.reply] = attempt
        if len(self._attempts) > _CACHE_SIZE:
            self._attempts.popitem(last=False)
        return attempt

    async def record(self, msg: AckedMessage) -> bool:
        """Count one hand-back of `msg` (compare-and-set, retried on a concurrent write)."""
        key = message_key(msg.reply)
        if key is None:
            return False
        for _ in range(_UPDATE_TRIES):
            try:
                count, revision = await self.recorded(key)
                value = str(count + 1).encode()
                if revision is None:
                    await self._kv.create(key, value)
                else:
                    await self._kv.update(key, value, last=revision)
                return True
            except KeyWrongLastSequenceError:
                continue
            except Exception as exc:
                log.warning("hand-back of %s not recorded: %s", key, exc)
                return False
        return False

    async def hand_back(self, msg: AckedMessage) -> None:
        """Record, then nak: the redelivery finds the record."""
        await self.record(msg)
        await msg.nak()
