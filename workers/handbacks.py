"""Delivery records: which deliveries of a request message count as attempts.

JetStream counts every delivery. Two kinds must not count toward dead-lettering:
- hand-backs: a draining worker naks what it holds or could not finish in time (every KEDA
  scale-down); a long generation handed back on a few scale-downs would otherwise be
  dead-lettered without running;
- crashes while the message was not running alone: a worker that dies holding 200 requests
  cannot tell which one killed it (if any: preemption and OOM kills are nobody's fault), so
  each of them is redelivered as a *suspect* and the crash is charged to none of them.
Only a crash while a message ran alone (a quarantine group of one, workers/intake.py) is an
attempt, as is a model failure (the handler's nak with backoff).

Each message has a `messages.DeliveryRecord` in the KV bucket `names.HANDBACK_BUCKET` (key:
stream and stream sequence, the same across deliveries). When delivery `d` arrives, the
deliveries before it that nothing accounted for (not handed back, not failed) ended in a crash
or an expired `ack_wait`; `resolve` charges them (free unless run alone) and, for one that ran
in a quarantine group, halves the group the message may run in next. The attempt is the
delivery count less the free deliveries.

Cost: first deliveries never look (the per-message path is unchanged); a redelivery pays one
KV read and, if it resolves a crash, one write (shared by the intake's quarantine check and the
handler through a small cache); a quarantine group start, a hand-back and a model failure one
read and write each. The consumers' `max_deliver` leaves room for the free deliveries beyond
the attempts (workers/provision.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import NamedTuple, Protocol

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas.messages import DeliveryRecord
from workers.jsmeta import ack_info

log = logging.getLogger(__name__)

#: Hand-backs a message may have on top of its attempts before JetStream stops delivering it.
MAX_HANDBACKS = 20
#: Free crash deliveries a message may have on top of those: the quarantine halves its group
#: on each crash (log2 of the largest capacity, 4096), plus crashes of groups it waited behind.
MAX_CRASH_DELIVERIES = 24
#: Entries expire after this long (a message waits in its stream at most about this long).
TTL_S = 7 * 24 * 3600.0
_CACHE_SIZE = 4096
_UPDATE_TRIES = 5
_decode = msgspec.json.Decoder(DeliveryRecord).decode
_encode = msgspec.json.Encoder().encode


class AckedMessage(Protocol):
    """What of a JetStream message this module reads (nats-py's `Msg` has it)."""

    reply: str

    async def nak(self, delay: float | None = None) -> None: ...


class Verdict(NamedTuple):
    #: Deliveries that counted, this one included (what `max_attempts` bounds).
    attempt: int
    #: An earlier delivery ended in a crash (or the message is still under suspicion): it
    #: runs in quarantine.
    suspect: bool
    #: The largest quarantine group it may join; 0: the intake chooses (half its suspects).
    bound: int


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


def resolve(rec: DeliveryRecord, delivered: int) -> DeliveryRecord:
    """The record once the deliveries before `delivered` that nothing accounted for are
    charged: each is free, except one that ran alone (a strike); one that ran in a group of
    `n > 1` leaves the message a bound of `ceil(n / 2)`."""
    if rec.ended >= delivered - 1:
        return rec
    free, bound = rec.free, rec.bound
    for lost in range(rec.ended + 1, delivered):
        if lost == rec.run and rec.group == 1:
            bound = 1  # crashed alone: it counts, and the message stays alone
        elif lost == rec.run:
            free += 1
            bound = (rec.group + 1) // 2
        else:
            free += 1  # crashed beside others, or held unrun when its worker died
    return msgspec.structs.replace(rec, free=free, ended=delivered - 1, bound=bound)


def verdict(before: DeliveryRecord, after: DeliveryRecord, delivered: int) -> Verdict:
    suspect = after.ended > before.ended or after.bound > 0
    return Verdict(max(1, delivered - after.free), suspect, after.bound)


class HandBacks:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        #: Ack subject -> verdict, for the deliveries looked up lately.
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()

    async def recorded(self, key: str) -> tuple[DeliveryRecord, int | None]:
        """(the message's record, the entry's revision; None when there is no entry)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return DeliveryRecord(), None
        raw = entry.value or b""
        try:
            return _decode(raw), entry.revision
        except msgspec.DecodeError:
            try:  # a plain count of hand-backs (the first version of this bucket)
                return DeliveryRecord(free=int(raw or b"0")), entry.revision
            except ValueError:
                return DeliveryRecord(), entry.revision

    async def classify(self, msg: AckedMessage, delivered: int) -> Verdict:
        """The verdict on delivery `delivered` of `msg`, resolving (and recording) the crashes
        before it. On a KV error every delivery counts and the message is a suspect: a message
        is never run more often than its attempts allow."""
        if delivered <= 1:
            return Verdict(delivered, False, 0)
        cached = self._verdicts.get(msg.reply)
        if cached is not None:
            return cached
        key = message_key(msg.reply)
        if key is None:
            return Verdict(delivered, True, 0)
        try:
            result = await self._update(key, lambda rec: resolve(rec, delivered), delivered)
        except Exception as exc:
            log.warning("delivery record of %s not read: %s", key, exc)
            return Verdict(delivered, True, 0)
        self._verdicts[msg.reply] = result
        if len(self._verdicts) > _CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return result

    async def attempt(self, msg: AckedMessage, delivered: int) -> int:
        """The deliveries that counted, this one included (at least 1)."""
        return (await self.classify(msg, delivered)).attempt

    async def record(self, msg: AckedMessage) -> bool:
        """Count this delivery of `msg` as a hand-back."""
        d = _delivered(msg)

        def change(rec: DeliveryRecord) -> DeliveryRecord:
            if rec.ended >= d:  # this delivery is accounted for already
                return rec
            rec = resolve(rec, d)
            return msgspec.structs.replace(rec, free=rec.free + 1, ended=max(rec.ended, d))

        return await self._change(msg, change)

    async def failed(self, msg: AckedMessage) -> bool:
        """This delivery of `msg` ended in a model failure (it counts; no crash)."""
        d = _delivered(msg)
        return await self._change(
            msg, lambda r: msgspec.structs.replace(resolve(r, d), ended=max(r.ended, d))
        )

    async def started(self, msg: AckedMessage, group: int) -> bool:
        """This delivery of `msg` runs in a quarantine group of `group` messages."""
        d = _delivered(msg)
        return await self._change(
            msg, lambda r: msgspec.structs.replace(resolve(r, d), run=d, group=group)
        )

    async def hand_back(self, msg: AckedMessage) -> None:
        """Record, then nak: the redelivery finds the record."""
        await self.record(msg)
        await msg.nak()

    async def _change(self, msg: AckedMessage, change: _Change) -> bool:
        key = message_key(msg.reply)
        if key is None:
            return False
        try:
            await self._update(key, change, _delivered(msg))
        except Exception as exc:
            log.warning("delivery record of %s not written: %s", key, exc)
            return False
        return True

    async def _update(self, key: str, change: _Change, delivered: int) -> Verdict:
        """Apply `change` to the record (compare-and-set, retried on a concurrent write)."""
        for _ in range(_UPDATE_TRIES):
            before, revision = await self.recorded(key)
            after = change(before)
            if after == before:
                return verdict(before, after, delivered)
            try:
                if revision is None:
                    await self._kv.create(key, _encode(after))
                else:
                    await self._kv.update(key, _encode(after), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return verdict(before, after, delivered)
        raise RuntimeError(f"{key}: too many concurrent writes")


def _delivered(msg: AckedMessage) -> int:
    info = ack_info(msg.reply)
    return info.delivered if info is not None else 1


class _Change(Protocol):
    def __call__(self, rec: DeliveryRecord, /) -> DeliveryRecord: ...
