"""A worker's reading of `image_url` parts: data URLs, and references to stored images (the
store itself against a real nats-server: tests/integration/test_vision_sdk.py)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest

from schemas import names
from schemas.payloads import ChatPayload
from workers.errors import PermanentError
from workers.image_source import fetch_images, image_parts

PNG = b"\x89PNG\r\n\x1a\n fake but bytes"


def payload(*urls: Any) -> ChatPayload:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Look"}]
    parts += [{"type": "image_url", "image_url": {"url": u, "detail": "low"}} for u in urls]
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]
    }
    return msgspec.convert(body, ChatPayload)


class Store:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    async def get(self, name: str, *, timeout_s: float = 30.0) -> bytes:
        try:
            return self.objects[name]
        except KeyError:
            raise LookupError(name) from None


async def refused(p: ChatPayload, store: Store | None = None) -> PermanentError:
    with pytest.raises(PermanentError) as info:
        await fetch_images(p, store)
    return info.value


async def test_data_urls_are_decoded_in_order_with_their_part() -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    got = await fetch_images(payload(url, url), None)
    assert [(i.data, i.detail, i.param) for i in got] == [
        (PNG, "low", "messages[1].content[1]"),
        (PNG, "low", "messages[1].content[2]"),
    ]
    assert image_parts(payload()) == []


async def test_bad_urls_are_refused_naming_the_field() -> None:
    at = "messages[1].content[1].image_url.url"
    for url in ("data:image/png;base64,@@@", "data:image/png,abc", "http://example.com/a.png"):
        assert (await refused(payload(url))).param == at
    assert (await refused(payload(7))).param == at


async def test_references_are_read_and_checked_against_their_name() -> None:
    import hashlib

    name = hashlib.sha256(PNG).hexdigest()
    ref = names.IMAGE_REF_PREFIX + name
    got = await fetch_images(payload(ref), Store({name: PNG}))
    assert got[0].data == PNG
    assert "gone" in str(await refused(payload(ref), Store({})))
    assert "does not match" in str(await refused(payload(ref), Store({name: b"other"})))
    assert "cannot read" in str(await refused(payload(ref), None))
    assert "sha256" in str(await refused(payload(names.IMAGE_REF_PREFIX + "xyz"), Store({})))
