"""The images of a chat request, as bytes, for a model that takes them.

An `image_url` part's `url` is a data URL (`data:image/png;base64,...`: the bytes ride in the
request) or a reference to an object of the images bucket (`names.IMAGE_REF_PREFIX` + the
sha256 of its bytes, `natsio.objects`), fetched here and checked against its name. The HTTP
bridge checked and decoded every image before publishing; a worker still refuses what it
cannot read (a request may come straight from NATS or a batch line), naming the part.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Protocol

from schemas import names
from schemas.errors import ErrorCode
from schemas.payloads import ChatPayload
from workers.engine.vision_prompts import ImageBytes
from workers.errors import PermanentError

#: OpenAI's limit for one image.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ImageStore(Protocol):
    """`natsio.objects.ImageObjects`: `get` raises `LookupError` when the object is gone."""

    async def get(self, name: str, *, timeout_s: float = 30.0) -> bytes: ...


def _bad(message: str, param: str) -> PermanentError:
    return PermanentError(message, ErrorCode.INVALID_REQUEST, param=param)


def image_parts(payload: ChatPayload) -> list[tuple[str, str, str]]:
    """(url, detail, param) of every `image_url` part, in message order."""
    parts = []
    for i, message in enumerate(payload.messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if part.get("type") != "image_url":
                continue
            param = f"messages[{i}].content[{j}]"
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str):
                raise _bad("image_url.url must be a string.", f"{param}.image_url.url")
            detail = value.get("detail") if isinstance(value, dict) else None
            parts.append((url, str(detail or "auto"), param))
    return parts


async def fetch_images(payload: ChatPayload, store: ImageStore | None) -> list[ImageBytes]:
    out = []
    for url, detail, param in image_parts(payload):
        out.append(ImageBytes(await _bytes(url, param, store), detail, param))
    return out


async def _bytes(url: str, param: str, store: ImageStore | None) -> bytes:
    at = f"{param}.image_url.url"
    if url.startswith("data:"):
        head, sep, body = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise _bad("An image data URL must look like data:image/png;base64,<data>.", at)
        if len(body) > (MAX_IMAGE_BYTES + 2) // 3 * 4 + 4:
            raise _bad(f"The image is larger than {MAX_IMAGE_BYTES // 2**20} MB.", at)
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("The image data URL is not valid base64.", at) from None
    if url.startswith(names.IMAGE_REF_PREFIX):
        name = url[len(names.IMAGE_REF_PREFIX) :]
        if not _SHA256.fullmatch(name):
            raise _bad(f"An image reference is {names.IMAGE_REF_PREFIX}<sha256 in hex>.", at)
        if store is None:
            raise _bad("This worker cannot read stored images.", at)
        try:
            data = await store.get(name)
        except LookupError:
            raise _bad("The stored image is gone (expired, or never stored).", at) from None
        if hashlib.sha256(data).hexdigest() != name:
            raise _bad("The stored image does not match its name.", at)
        return data
    raise _bad(
        "An image URL must be a data URL (data:image/...;base64,...) or a stored image "
        f"reference ({names.IMAGE_REF_PREFIX}<sha256>).",
        at,
    )
