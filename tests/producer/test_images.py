"""An `image_url` made into checked bytes (producer/http/images.py): data URLs, the types
accepted, corrupt and truncated images, and fetched URLs through the webhook guard
(jetserve/image_fetch.py) against a local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image as PILImage

from jetserve.image_fetch import image_fetcher
from producer.http import images
from schemas.openai_errors import ApiError

PARAM = "messages[0].content[1]"


def picture(fmt: str = "PNG", size: tuple[int, int] = (32, 24), color: str = "red") -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def refused(url: str, **kw: object) -> ApiError:
    with pytest.raises(ApiError) as info:
        asyncio.run(images.load(url, PARAM, **kw))  # type: ignore[arg-type]
    assert info.value.status == 400
    return info.value


def test_a_data_url_gives_the_checked_image() -> None:
    png = picture()
    image = asyncio.run(images.load(data_url(png), PARAM, detail="low"))
    assert (image.width, image.height, image.media_type) == (32, 24, "image/png")
    assert image.data == png
    assert image.detail == "low"
    jpeg = asyncio.run(images.load(data_url(picture("JPEG"), "image/jpeg"), PARAM))
    assert jpeg.detail == "auto"
    other = asyncio.run(images.load(data_url(picture(color="blue")), PARAM))
    assert other.digest != image.digest  # the identity is the bytes'


def test_bad_images_are_400s_naming_the_part() -> None:
    png = picture()
    truncated = refused(data_url(png[: len(png) // 2]))
    assert (truncated.code, truncated.param) == ("invalid_image", PARAM)
    mislabelled = refused(data_url(picture("JPEG"), "image/png"))
    assert mislabelled.code == "invalid_image"
    assert "PNG" in mislabelled.message
    svg = refused(data_url(b"<svg/>", "image/svg+xml"))
    assert svg.code == "invalid_image"
    assert "not supported" in svg.message
    garbage = refused("data:image/png;base64,@@@not-base64@@@")
    assert (garbage.code, garbage.param) == ("invalid_image_url", PARAM + ".url")
    plain = refused("data:image/png," + "x" * 10)
    assert plain.code == "invalid_image_url"
    big = refused(data_url(png), max_bytes=len(png) - 1)
    assert big.code == "invalid_image"
    assert "larger than" in big.message
    detail = refused(data_url(png), detail="huge")
    assert detail.param == PARAM + ".detail"
    ftp = refused("ftp://example.com/a.png")
    assert ftp.param == PARAM + ".url"
    no_fetch = refused("https://example.com/a.png")
    assert no_fetch.code == "invalid_image_url"


# -- fetched URLs ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    png = picture(size=(8, 8))

    def do_GET(self) -> None:
        if self.path == "/slow.png":
            time.sleep(3)
        if self.path == "/missing.png":
            self.send_error(404)
            return
        body = self.png * (200 if self.path == "/big.png" else 1)
        try:
            self.send_response(200)
            self.send_header("content-type", "image/png; charset=binary")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher stopped reading (too large, or its deadline): as it should

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = False  # server_close() joins the handlers: none outlives the module
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_http_url_is_fetched_through_the_guard(server: str) -> None:
    fetch = image_fetcher(allow_private=True, timeout_s=1.0)
    image = asyncio.run(images.load(f"{server}/a.png", PARAM, fetch=fetch))
    assert image.data == _Handler.png
    assert image.media_type == "image/png"

    missing = refused(f"{server}/missing.png", fetch=fetch)
    assert missing.code == "invalid_image_url"
    assert "404" in missing.message
    big = refused(f"{server}/big.png", fetch=fetch, max_bytes=len(_Handler.png) * 10)
    assert "larger than" in big.message
    started = time.monotonic()
    slow = refused(f"{server}/slow.png", fetch=fetch)
    assert time.monotonic() - started < 2.5  # the fetch's 1 s deadline, not the server's 3 s
    assert "within 1 s" in slow.message

    private = refused(f"{server}/a.png", fetch=image_fetcher(allow_private=False, timeout_s=1))
    assert private.code == "invalid_image_url"
    assert "internal address" in private.message
    assert "127.0.0.1" not in private.message.replace(server, "")  # never names the address


def test_an_uploaded_file_is_an_image_by_its_file_id() -> None:
    files = {"file-png": picture("PNG"), "file-webp": picture("WEBP"), "file-text": b"hello\n"}

    async def read_file(file_id: str, max_bytes: int) -> bytes:
        if file_id not in files:
            raise images.FetchError(f"No file with id '{file_id}'.")
        return files[file_id]

    def part(file_id: str) -> list[object]:
        image = {"type": "image_url", "image_url": {"file_id": file_id, "detail": "low"}}
        return [image, {"type": "text", "text": "what?"}]

    from schemas.payloads import ChatMessage

    for file_id, media_type in (("file-png", "image/png"), ("file-webp", "image/webp")):
        messages = [ChatMessage(role="user", content=part(file_id))]  # type: ignore[arg-type]
        out = asyncio.run(images.prepare_chat_images(messages, read_file=read_file))
        assert out is not None
        content = out[0].content
        assert isinstance(content, list)
        # Published as the image's bytes (a data URL here): the worker needs no file store.
        assert content[0]["image_url"] == {
            "detail": "low",
            "url": data_url(files[file_id], media_type),
        }
    for file_id, message in (
        ("file-missing", "No file with id 'file-missing'."),
        ("file-text", "The file is not a PNG, JPEG, WebP or GIF image."),
    ):
        messages = [ChatMessage(role="user", content=part(file_id))]  # type: ignore[arg-type]
        with pytest.raises(ApiError) as info:
            asyncio.run(images.prepare_chat_images(messages, read_file=read_file))
        assert (info.value.status, info.value.param) == (400, "messages[0].content[0].file_id")
        assert info.value.message == message
    # Without a files store (no database): refused, naming the field.
    messages = [ChatMessage(role="user", content=part("file-png"))]  # type: ignore[arg-type]
    with pytest.raises(ApiError) as info:
        asyncio.run(images.prepare_chat_images(messages))
    assert (info.value.param, info.value.code) == (
        "messages[0].content[0].file_id",
        "unsupported_value",
    )
