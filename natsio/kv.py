"""Compare-and-set on a NATS KV key, retried while other writers get there first; opening a
bucket that may exist already.

    kv = await open_bucket(js, "BUCKET", "what it holds", ttl_s=60.0)
    result = await compare_and_set(kv, key, change)

`change(value)` gets the key's current value (None when it has none) and returns
`(new value or None to write nothing, result)`; it may run several times, so it must not act.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

T = TypeVar("T")

#: Attempts before giving up (each one lost to a concurrent write).
TRIES = 16


class TooManyWriters(RuntimeError):
    """Every attempt lost to a concurrent write."""


async def compare_and_set(
    kv: KeyValue, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]]
) -> T:
    for _ in range(TRIES):
        try:
            entry = await kv.get(key)
            current, revision = entry.value, entry.revision
        except KeyNotFoundError:  # never written, or deleted
            current, revision = None, None
        new, result = change(current)
        if new is None:
            return result
        try:
            if revision is None:
                await kv.create(key, new)
            else:
                await kv.update(key, new, last=revision)
        except KeyWrongLastSequenceError:
            continue
        return result
    raise TooManyWriters(f"{key}: {TRIES} concurrent writes in a row")


async def open_bucket(
    js: JetStreamContext,
    bucket: str,
    description: str,
    *,
    ttl_s: float | None = None,
    storage: StorageType = StorageType.FILE,
) -> KeyValue:
    """The bucket: created (one value a key, kept `ttl_s`, in `storage`), or, when it exists
    already (made by another process, maybe with other settings), used as it is."""
    config = KeyValueConfig(
        bucket=bucket, description=description, history=1, ttl=ttl_s, storage=storage
    )
    try:
        return await js.create_key_value(config)
    except Exception:
        return await js.key_value(bucket)
