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
from nats.js.api import KeyValueConfig, RawStreamMsg, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

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


async def history(js: JetStreamContext, bucket: str, key: str) -> list[bytes | None]:
    """`key`'s stored values, oldest first (None for a delete or purge marker), read message
    by message from the bucket's stream. nats-py's `KeyValue.history` watches with an ordered
    consumer and can end before the first entry arrives (it asks for the consumer's pending
    count while the messages are still on the wire), answering "no keys" for a key that has
    them; a direct read cannot."""
    stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
    values: list[bytes | None] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            return values
        values.append(None if _deleted(msg) else msg.data or b"")
        seq = (msg.seq or seq) + 1


async def keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The bucket's keys that hold a value now, from the stream's per-subject counts (a
    direct read, for the same reason as `history`)."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    found = []
    for subject in info.state.subjects or {}:
        msg = await js.get_msg(f"KV_{bucket}", subject=subject)
        if not _deleted(msg):
            found.append(subject[len(prefix) :])
    return sorted(found)


def _deleted(msg: RawStreamMsg) -> bool:
    """A delete or purge marker."""
    return (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE)
