"""Images in the JetStream Object Store (natsio/objects.py), on a real nats-server: a 5 MB
image stored and read back, stored once however often it is put, and gone once the bucket's
time-to-live has passed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from natsio.objects import ImageMissing, ImageObjects
from schemas import names

pytestmark = pytest.mark.integration


@pytest.fixture
async def nc(own_nats: NatsServer) -> AsyncIterator[NATS]:
    """A server of its own: the bucket must be made here, with this test's time-to-live, and
    hold only this test's objects (the shared server's may already have it)."""
    conn = await nats.connect(own_nats.url)
    yield conn
    await conn.close()


async def test_a_5_mb_image_round_trips_once_and_expires(nc: NATS) -> None:
    js = nc.jetstream()
    with_ttl = await ImageObjects.open(js, ttl_s=2.0)
    data = os.urandom(5 * 1024 * 1024)
    name = await with_ttl.put(data)
    assert await with_ttl.put(data) == name  # the same bytes: the same object, stored once
    assert await with_ttl.get(name) == data
    info = await js.stream_info(f"OBJ_{names.IMAGES_BUCKET}")
    chunks = info.state.messages
    assert chunks < 2 * (5 * 1024 * 1024) // (128 * 1024)  # one copy of the chunks (+ meta)
    with pytest.raises(ImageMissing):
        await with_ttl.get("0" * 64)
    for _ in range(30):  # the time-to-live removes it (checked about once a second)
        try:
            await with_ttl.get(name, timeout_s=2.0)  # bounded: it may expire part-way
        except ImageMissing:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the object outlived the bucket's time-to-live")
    await js.delete_object_store(names.IMAGES_BUCKET)


async def test_an_object_whose_first_chunks_expired_is_missing(nc: NATS) -> None:
    """What the time-to-live does part-way through a read: the first chunks are gone, the
    rest no longer match the digest. The reader gets ImageMissing, not nats-py's error."""
    js = nc.jetstream()
    store = await ImageObjects.open(js)
    data = os.urandom(1024 * 1024)
    name = await store.put(data)
    stream = f"OBJ_{names.IMAGES_BUCKET}"
    first = (await js.stream_info(stream)).state.first_seq
    await js.delete_msg(stream, first)  # the object's first chunk
    with pytest.raises(ImageMissing, match="expired while read"):
        await store.get(name, timeout_s=5.0)
    await js.delete_object_store(names.IMAGES_BUCKET)
