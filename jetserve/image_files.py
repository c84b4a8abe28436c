"""Images by `file_id` (a Responses `input_image`): the bridge reads the caller's uploaded
file from the files store (`producer/http/images.ReadFile`). Only a file of the tenant's own
with purpose `vision` or `user_data` (OpenAI's purposes for images) is read, at most the
image limit. Composed here because `producer` must not import `scheduler`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from producer.http.images import FetchError, ReadFile
from scheduler.store import files as fs

IMAGE_PURPOSES = ("vision", "user_data")


def image_file_reader(pool: Callable[[], Awaitable[Any]]) -> Callable[[str], ReadFile]:
    """By tenant: its `ReadFile`."""

    def for_tenant(tenant: str) -> ReadFile:
        async def read(file_id: str, max_bytes: int) -> bytes:
            db = await pool()
            row = await fs.get_file(db, tenant, file_id)
            if row is None or row.status != "processed":
                raise FetchError(f"No file with id '{file_id[:80]}'.")
            if row.purpose not in IMAGE_PURPOSES:
                raise FetchError(
                    f"The file's purpose is '{row.purpose}': an image file is uploaded with "
                    f"purpose {' or '.join(repr(p) for p in IMAGE_PURPOSES)}."
                )
            if row.bytes > max_bytes:
                raise FetchError(f"The image is larger than {max_bytes // (1024 * 1024)} MB.")
            return b"".join([chunk async for chunk in fs.iter_chunks(db, row.id)])

        return read

    return for_tenant
