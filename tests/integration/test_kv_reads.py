"""A key's history and a bucket's keys, read from the bucket's stream (natsio/kv.py).

nats-py's own `KeyValue.history` and `keys` watch with an ordered consumer and may end before
the first entry arrives ("no keys" for a key that has them): `jetserve routes rollback` once
answered "no route" for a route it had just promoted, once in a CI run (the race could not be
brought about on demand, not even with 1,000 reads at once on busy cores). These read the
stream directly, with nothing to race."""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from natsio.kv import history, keys


async def test_history_lists_every_value_and_marker_oldest_first(nc: NATS) -> None:
    js = nc.jetstream()
    bucket = f"reads-{uuid.uuid4().hex[:8]}"
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=10))
    await kv.put("a", b"1")
    await kv.put("other", b"x")
    await kv.put("a", b"2")
    await kv.delete("a")
    await kv.put("a", b"3")
    await kv.put("gone", b"y")
    await kv.delete("gone")

    assert await history(js, bucket, "a") == [b"1", b"2", None, b"3"]
    assert await history(js, bucket, "other") == [b"x"]
    assert await history(js, bucket, "never") == []
    assert await keys(js, bucket) == ["a", "other"]

    # Many readers at once, as a busy machine schedules them: every read is whole.
    reads = await asyncio.gather(*(history(js, bucket, "a") for _ in range(200)))
    assert all(read == [b"1", b"2", None, b"3"] for read in reads)


async def test_keys_of_an_empty_bucket(nc: NATS) -> None:
    js = nc.jetstream()
    bucket = f"reads-{uuid.uuid4().hex[:8]}"
    await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
    assert await keys(js, bucket) == []
