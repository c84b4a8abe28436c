"""The shared token buckets (`ratelimit.SharedBuckets`) and in-flight slots
(`inflight.SharedSlots`) in the NATS KV bucket `names.RATELIMIT_BUCKET`: one key per tenant,
scope and dimension, compare-and-set."""

from __future__ import annotations

import contextlib

import msgspec
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from natsio.kv import compare_and_set, open_bucket
from producer.inflight import HOLD_TTL_S, resize
from producer.ratelimit import Rate, Taken, take
from schemas import names
from schemas.limits import SlotsState, decode_bucket, decode_slots, encode_bucket, encode_slots

#: A bucket untouched for this long is full again at any rate: its key may go.
_IDLE_TTL_S = 3600.0


async def open_ratelimit_bucket(js: JetStreamContext) -> KeyValue:
    return await open_bucket(
        js,
        names.RATELIMIT_BUCKET,
        "tenants' rate buckets, shared by every bridge replica",
        ttl_s=_IDLE_TTL_S,
        storage=StorageType.MEMORY,
    )


class KvBuckets:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def take(self, key: str, cost: float, extra: float, rate: Rate, now_s: float) -> Taken:
        def change(value: bytes | None) -> tuple[bytes | None, Taken]:
            state = None
            if value is not None:
                with contextlib.suppress(msgspec.DecodeError):  # unreadable: as if full
                    state = decode_bucket(value)
            after, taken = take(state, cost, extra, rate, now_s)
            return (None if after is None else encode_bucket(after)), taken

        return await compare_and_set(self._kv, key, change)

    async def level(self, key: str, rate: Rate, now_s: float) -> float:
        """The bucket's level now (full when it has no key)."""
        try:
            entry = await self._kv.get(key)
        except Exception:
            return rate.capacity
        if entry.value is None:
            return rate.capacity
        state = decode_bucket(entry.value)
        return rate.level(state.tokens, state.at_s, now_s)


class KvSlots:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def resize(self, key: str, holder: str, wanted: int, limit: int, now_s: float) -> int:
        def change(value: bytes | None) -> tuple[bytes | None, int]:
            state = None
            if value is not None:
                with contextlib.suppress(msgspec.DecodeError):  # unreadable: as if empty
                    state = decode_slots(value)
            after, held = resize(state, holder, wanted, limit, now_s, HOLD_TTL_S)
            if after == (state or SlotsState()):
                return None, held  # nothing to change (a renewal always changes the expiry)
            return encode_slots(after), held

        return await compare_and_set(self._kv, key, change)
