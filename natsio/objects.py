"""Images too large to ride inside a NATS message, in a JetStream Object Store bucket
(`names.IMAGES_BUCKET`) under the sha256 of their bytes: the bridge stores one before it
publishes the request that names it, the worker reads it when the request runs. The same
image sent twice is stored once. Objects are never deleted by a request's end: the bucket's
time-to-live removes them (a redelivery or a dead-letter replay of the request needs them
until then)."""

from __future__ import annotations

import asyncio
import hashlib

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig
from nats.js.errors import (
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from schemas import names


class ImageMissing(LookupError):
    """No object of that name: never stored, or expired."""


class ImageObjects:
    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    async def open(
        cls, js: JetStreamContext, *, ttl_s: float = names.IMAGES_TTL_S, replicas: int = 1
    ) -> ImageObjects:
        """The bucket, made with `ttl_s` and `replicas` when it does not exist yet."""
        try:
            store = await js.object_store(names.IMAGES_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            config = ObjectStoreConfig(
                bucket=names.IMAGES_BUCKET,
                description="jetserve: images of queued requests",
                ttl=ttl_s,
                replicas=replicas,
            )
            store = await js.create_object_store(names.IMAGES_BUCKET, config=config)
        return cls(store)

    async def put(self, data: bytes) -> str:
        """Store `data` (once: an object of the same digest is kept); its name."""
        name = hashlib.sha256(data).hexdigest()
        try:
            info = await self._store.get_info(name)
            if info.size == len(data) and not info.deleted:
                return name
        except ObjectNotFoundError:
            pass
        await self._store.put(name, data)
        return name

    async def get(self, name: str, *, timeout_s: float = 30.0) -> bytes:
        """The object's bytes; ImageMissing when it is gone. Bounded by `timeout_s`: an
        object caught by its time-to-live part-way (its description left, its chunks gone)
        would otherwise be waited for forever (nats-py reads chunks until the size is met), or
        read short: its first chunks gone, the rest no longer match the digest."""
        try:
            async with asyncio.timeout(timeout_s):
                result = await self._store.get(name)
        except ObjectNotFoundError:
            raise ImageMissing(name) from None
        except DigestMismatchError:
            raise ImageMissing(f"{name}: expired while read (its chunks no longer match)") from None
        except TimeoutError:
            raise ImageMissing(f"{name}: not read within {timeout_s:g} s") from None
        if result.data is None or result.info.deleted:
            raise ImageMissing(name)
        return bytes(result.data)
