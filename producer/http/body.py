"""Reading a request: the few headers the bridge uses, and the body, bounded while it
arrives. (The batch API reads its bodies with `read_body` too.)"""

from __future__ import annotations

from collections.abc import Iterable

from litestar.types import Receive

from producer.http.errors import ApiError
from schemas import names
from schemas.v2 import HEADER_LENGTH

#: The request headers the POST routes read (lower case, as ASGI delivers them).
_WANTED = {
    h.lower().encode()
    for h in (
        names.HTTP_AUTHORIZATION,
        names.HTTP_IDEMPOTENCY_KEY,
        names.HTTP_TIMEOUT,
        names.HTTP_ROUTE_KEY,
        HEADER_LENGTH,  # the Open Inference Protocol's binary tensor extension
    )
}


#: How an image data URL begins, in a JSON body.
_DATA_URL = b'"data:image/'


def too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        413, f"The request body is larger than {limit_bytes} bytes.", code="request_too_large"
    )


def wanted_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """One pass over the raw headers for the few the bridge reads (hot path)."""
    return {k.decode(): v.decode("latin-1") for k, v in raw if k in _WANTED}


async def read_body(receive: Receive, limit_bytes: int, image_allowance: int = 0) -> bytes:
    """The request body; 413 as soon as more than `limit_bytes` have arrived (a huge body is
    never buffered whole). `image_allowance`: how much more a body that carries an image as
    a data URL may hold (refused at once past the limit when none has begun by then; what
    it holds besides its images is checked once it is parsed)."""
    chunks: list[bytes] = []
    size = 0
    allowed = limit_bytes
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(
                400, "The client disconnected while sending the body.", code="incomplete_body"
            )
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        chunks.append(chunk)
        if size > allowed:
            if allowed == limit_bytes and image_allowance and _DATA_URL in b"".join(chunks):
                allowed += image_allowance
            if size > allowed:
                raise too_large(limit_bytes)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
