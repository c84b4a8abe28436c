"""An image a request carries, made into checked bytes before anything is queued.

An `image_url` is either a data URL (`data:image/png;base64,...`) or an http(s) URL that the
bridge fetches (`Fetch`, injected: `jetserve/image_fetch.py` fetches through the same URL
guard as webhooks, so private addresses are refused unless allowed). Either way the bytes are
bounded (`MAX_IMAGE_BYTES`, OpenAI's 20 MB), their type must be one a vision model's
processor reads (PNG, JPEG, WebP, non-animated GIF), and they are decoded in full with Pillow
here, so a corrupt or truncated image is a 400 naming its content part, never a worker
crash. Pillow is the optional `vision` extra: without it, a request with an image is refused
with a 400 that says so.

`detail` (`low`, `high`, `auto`, `original`) is kept with the image: it selects the model
processor's resizing on the worker, and is part of the image's prefix-cache identity.

`prepare_chat_images` runs this on every image of a chat request and gives the messages to
publish: each image a data URL when small (`INLINE_MAX_BYTES`), else stored in the images
bucket and named (`names.IMAGE_REF_PREFIX` + sha256), so a request stays within a NATS
message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from producer.http.body import too_large
from schemas import names
from schemas.openai_errors import ApiError, invalid
from schemas.payloads import ChatMessage

#: OpenAI's limits: 20 MB an image, 50 MB of images a request.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_REQUEST_IMAGE_BYTES = 50 * 1024 * 1024
#: The image types accepted, by their MIME type, and the Pillow format each must decode as.
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
DETAILS = ("auto", "low", "high", "original")
#: What a body that carries images may hold beyond the bridge's body limit: the request's
#: images as base64 data URLs (4/3 of their bytes). Read as it arrives, bounded all the same;
#: once parsed, what is not a data URL must fit the body limit (`check_body_size`).
IMAGE_BODY_ALLOWANCE = MAX_REQUEST_IMAGE_BYTES * 4 // 3 + 4096
#: Decoding bound: more pixels than this is refused before they are decompressed (Pillow's
#: own bomb check, made an error instead of a warning).
MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    data: bytes
    #: The response's Content-Type, without parameters (`image/png`).
    content_type: str


#: Fetches an http(s) URL: the body (at most `max_bytes`), or raises `FetchError`.
Fetch = Callable[[str, int], Awaitable[Fetched]]
#: Reads the caller's uploaded file `file_id` (at most `max_bytes`), or raises `FetchError`.
ReadFile = Callable[[str, int], Awaitable[bytes]]

#: The image types by their first bytes (an uploaded file carries no content type).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


def sniff(data: bytes) -> str:
    """The MIME type of image bytes, from their signature."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class FetchError(Exception):
    """The URL was refused or could not be fetched; the message says why (and never names
    an address the host resolved to)."""


@dataclass(frozen=True)
class Image:
    data: bytes
    media_type: str
    width: int
    height: int
    detail: str
    #: sha256 of the bytes: with `detail`, the image's identity (prefix caching, the object
    #: store's key).
    digest: str


def bad_image(message: str, param: str) -> ApiError:
    return invalid(message, param, "invalid_image")


def bad_image_url(message: str, param: str) -> ApiError:
    return invalid(message, param, "invalid_image_url")


def decode_data_url(url: str, param: str, max_bytes: int = MAX_IMAGE_BYTES) -> Fetched:
    """The bytes and type of a base64 data URL; ApiError (400, `param`) when it is not one,
    or is larger than `max_bytes` decoded."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise bad_image_url("An image data URL must look like data:image/png;base64,<data>.", param)
    media_type = head[len("data:") : -len(";base64")].strip().lower()
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:  # refused before decoding
        raise bad_image(f"The image is larger than {max_bytes // (1024 * 1024)} MB.", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_image_url("The image data URL is not valid base64.", param) from None
    if len(data) > max_bytes:
        raise bad_image(f"The image is larger than {max_bytes // (1024 * 1024)} MB.", param)
    return Fetched(data, media_type)


def check(data: bytes, media_type: str, param: str) -> tuple[int, int]:
    """(width, height) of an image decoded in full; ApiError (400, `param`) for a type not
    accepted, bytes that are not that type, or a corrupt or truncated image."""
    expected = FORMATS.get(media_type)
    if expected is None:
        raise bad_image(
            f"Images of type {media_type[:60]!r} are not supported: use one of "
            f"{', '.join(FORMATS)}.",
            param,
        )
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise invalid(
            "This server cannot read images: install jetserve[vision] (Pillow).", param
        ) from None
    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            if opened.format != expected:
                raise bad_image(
                    f"The image is not a {expected} image, as its type {media_type!r} says.",
                    param,
                )
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise bad_image(f"The image has more than {MAX_PIXELS} pixels.", param)
            if getattr(opened, "is_animated", False):
                raise bad_image("Animated images are not supported.", param)
            opened.load()  # every byte decoded: a truncated image fails here
    except ApiError:
        raise
    except Exception:  # Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise bad_image("The image could not be decoded (corrupt or truncated).", param) from None
    return width, height


async def load(
    url: str,
    param: str,
    *,
    detail: str | None = None,
    fetch: Fetch | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> Image:
    """The checked image an `image_url` names; ApiError (400, `param`) otherwise."""
    detail = detail or "auto"
    if detail not in DETAILS:
        raise invalid(f"detail must be one of {', '.join(DETAILS)}.", f"{param}.detail")
    if url.startswith("data:"):
        fetched = decode_data_url(url, f"{param}.url", max_bytes)
    elif url.startswith(("http://", "https://")):
        if fetch is None:
            raise bad_image_url("Image URLs are not fetched here: send a data URL.", param)
        try:
            fetched = await fetch(url, max_bytes)
        except FetchError as exc:
            raise bad_image_url(f"The image could not be fetched: {exc}", f"{param}.url") from None
    else:
        raise bad_image_url(
            "An image URL must be a data URL (data:image/...;base64,...) or an http(s) URL.",
            f"{param}.url",
        )
    return await _checked(fetched, param, detail)


async def load_file(
    file_id: str, param: str, *, detail: str | None = None, read_file: ReadFile | None = None
) -> Image:
    """The checked image of an uploaded file (purpose `vision` or `user_data`), by the
    `file_id` of a Responses `input_image`; ApiError (400, `param.file_id`) otherwise."""
    detail = detail or "auto"
    if detail not in DETAILS:
        raise invalid(f"detail must be one of {', '.join(DETAILS)}.", f"{param}.detail")
    if read_file is None:
        raise invalid(
            "Images by file_id need the files API, which needs a database on this server: "
            "send image_url (a data URL or an http(s) URL).",
            f"{param}.file_id",
            "unsupported_value",
        )
    try:
        data = await read_file(file_id, MAX_IMAGE_BYTES)
    except FetchError as exc:
        raise invalid(str(exc), f"{param}.file_id", "invalid_image") from None
    media_type = sniff(data)
    if media_type not in FORMATS:
        raise bad_image("The file is not a PNG, JPEG, WebP or GIF image.", f"{param}.file_id")
    return await _checked(Fetched(data, media_type), param, detail)


async def _checked(fetched: Fetched, param: str, detail: str) -> Image:
    # Decoding a large image takes a while: off the event loop.
    width, height = await asyncio.to_thread(check, fetched.data, fetched.content_type, param)
    digest = hashlib.sha256(fetched.data).hexdigest()
    return Image(fetched.data, fetched.content_type, width, height, detail, digest)


#: Images up to this many bytes ride inside their request as a data URL; larger ones (and
#: the larger fetched ones) are stored in the images bucket and the request names them
#: (`names.IMAGE_REF_PREFIX`): a NATS message is at most 1 MB by default.
INLINE_MAX_BYTES = 256 * 1024


class ImageStore(Protocol):
    """`natsio.objects.ImageObjects`."""

    async def put(self, data: bytes) -> str: ...


def has_images(messages: Sequence[ChatMessage]) -> bool:
    return any(
        isinstance(m.content, list) and any(p.get("type") == "image_url" for p in m.content)
        for m in messages
    )


def check_body_size(size: int, messages: Sequence[ChatMessage], limit_bytes: int) -> None:
    """413 (`request_too_large`) when a body read with `IMAGE_BODY_ALLOWANCE` over
    `limit_bytes` is larger than the limit for what is not an image data URL."""
    if size <= limit_bytes:
        return
    images = 0
    for message in messages:
        if isinstance(message.content, list):
            for part in message.content:
                value = part.get("image_url") if part.get("type") == "image_url" else None
                url = value.get("url") if isinstance(value, dict) else None
                if isinstance(url, str) and url.startswith("data:"):
                    images += len(url)
    if size - images > limit_bytes:
        raise too_large(limit_bytes)


async def prepare_chat_images(
    messages: Sequence[ChatMessage],
    fetch: Fetch | None = None,
    store: Callable[[], Awaitable[ImageStore]] | None = None,
    read_file: ReadFile | None = None,
) -> list[ChatMessage] | None:
    """Check every `image_url` part of a chat's messages (ApiError, 400, naming the part
    (`messages[0].content[1]`) otherwise), fetching http(s) URLs with `fetch` and reading
    uploaded files (a Responses `input_image` by `file_id`) with `read_file`. The messages
    to publish, each image a small data URL or a reference to the `store` (opened on first
    need); None when they are the messages given."""
    total = 0
    out = list(messages)
    changed = False
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        content = list(message.content)
        for j, part in enumerate(content):
            if part.get("type") != "image_url":
                continue
            param = f"messages[{i}].content[{j}]"
            value = part.get("image_url")
            by_file = isinstance(value, dict) and "url" not in value and "file_id" in value
            if not isinstance(value, dict) or not (
                isinstance(value.get("url"), str) or (by_file and isinstance(value["file_id"], str))
            ):
                raise invalid("image_url must be an object with a string url.", param)
            detail = value.get("detail")
            if detail is not None and not isinstance(detail, str):
                raise invalid(f"detail must be one of {', '.join(DETAILS)}.", f"{param}.detail")
            if by_file:  # Responses' input_image by file_id: published as image bytes
                url = ""
                image = await load_file(value["file_id"], param, detail=detail, read_file=read_file)
                value = {k: v for k, v in value.items() if k != "file_id"}
            else:
                url = value["url"]
                image = await load(url, param, detail=detail, fetch=fetch)
            total += len(image.data)
            if total > MAX_REQUEST_IMAGE_BYTES:
                raise bad_image(
                    f"The request's images are larger than "
                    f"{MAX_REQUEST_IMAGE_BYTES // (1024 * 1024)} MB in all.",
                    param,
                )
            inline = len(image.data) <= INLINE_MAX_BYTES
            if url.startswith("data:") and (inline or store is None):
                continue
            if inline:
                encoded = base64.b64encode(image.data).decode("ascii")
                new_url = f"data:{image.media_type};base64,{encoded}"
            elif store is not None:
                new_url = names.IMAGE_REF_PREFIX + await (await store()).put(image.data)
            else:
                raise bad_image("This server cannot take images this large.", param)
            content[j] = {**part, "image_url": {**value, "url": new_url}}
            out[i] = msgspec.structs.replace(message, content=content)
            changed = True
    return out if changed else None
