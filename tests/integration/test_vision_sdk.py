"""Images in chat, end to end: the official openai SDK sends an `image_url` part through a
real bridge to a real engine worker serving the tiny random Idefics3 (SmolVLM-style) model;
a request over NATS may name an image stored in the images Object Store bucket instead."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import openai
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from jetserve.servers import NatsServer, free_port
from natsio.objects import ImageObjects
from producer.client import Client
from producer.errors import RequestFailed
from schemas import names

from ..conftest import REPO, child_env

pytestmark = pytest.mark.integration

MODEL = "sdk-tiny-vlm"
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 6}


def png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (50, 40), color).save(out, "PNG")
    return out.getvalue()


RED, BLUE = png((230, 20, 20)), png((20, 20, 230))


def noise_png(size: int) -> bytes:
    """A PNG of random pixels: larger than `images.INLINE_MAX_BYTES` at 400 x 400."""
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), random.Random(7).randbytes(size * size * 3)).save(
        out, "PNG"
    )
    return out.getvalue()


BIG = noise_png(400)


class _Images(BaseHTTPRequestHandler):
    files = {"/red.png": RED, "/big.png": BIG}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    httpd.daemon_threads = False  # server_close() joins the handlers
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat(question: str, url: str, detail: str = "auto") -> list[Any]:
    image = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return [{"role": "user", "content": [image, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def sdk(
    nats_server: NatsServer, tiny_vlm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    logs = tmp_path_factory.mktemp("vision")
    models = logs / "models.toml"
    models.write_text(
        f'[[models]]\nname = "{MODEL}"\nengine = "llm"\npath = "{tiny_vlm_dir}"\n'
        'dtype = "float32"\ninputs = ["text", "image"]\ncapacity = 8\n'
        "[models.options]\nkv_cache_mib = 4\nmax_model_len = 1024\nkv_block_size = 16\n"
    )
    env = child_env(nats_server.url, JETSERVE_AUTH="off", JETSERVE_IMAGES_ALLOW_PRIVATE="1")
    port = free_port()
    procs = [
        _spawn(
            ["worker", "--model", MODEL, "--models-file", str(models)], env, logs / "worker.log"
        ),
        _spawn(["bridge", "--port", str(port)], env, logs / "bridge.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, procs, 120)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        yield client
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        # The worker made the images bucket (24 h time-to-live): other tests make their own.
        asyncio.run(_delete_images_bucket(nats_server.url))


async def _delete_images_bucket(url: str) -> None:
    nc = await nats.connect(url)
    try:
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().delete_object_store(names.IMAGES_BUCKET)
    finally:
        await nc.close()


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jetserve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def _wait(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args!r} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if f'"{MODEL}":true' in r.read().decode():
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("bridge and tiny VLM worker not ready")


def test_the_sdk_sends_an_image_and_gets_an_answer(sdk: openai.OpenAI) -> None:
    def ask(question: str, image: bytes) -> Any:
        return sdk.chat.completions.create(
            model=MODEL, messages=chat(question, data_url(image)), **GREEDY
        )

    red = ask("What is it?", RED)
    assert red.choices[0].finish_reason == "length"
    assert red.usage is not None
    assert red.usage.completion_tokens == GREEDY["max_tokens"]
    # A 50x40 image is 2 x 2 tiles and a global view of 4 image tokens each, with markers.
    assert red.usage.prompt_tokens > 40
    again = ask("What is it?", RED)
    assert again.choices[0].message.content == red.choices[0].message.content
    # The same image with another question reuses the image's KV blocks.
    other = ask("Which colour is it?", RED)
    assert other.usage is not None
    assert other.usage.prompt_tokens_details is not None
    assert (other.usage.prompt_tokens_details.cached_tokens or 0) >= 32
    blue = ask("Which colour is it?", BLUE)
    assert blue.usage is not None
    assert blue.usage.prompt_tokens_details is not None
    assert not blue.usage.prompt_tokens_details.cached_tokens


def test_a_corrupt_image_is_a_400_naming_its_part(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "user", "content": "Look:"},
                {"role": "user", "content": chat("What?", data_url(RED[:60]))[0]["content"]},
            ],
            **GREEDY,
        )
    body: Any = info.value.body
    assert body["param"] == "messages[1].content[0]"
    assert body["code"] == "invalid_image"


async def test_a_stored_image_is_read_by_reference(
    sdk: openai.OpenAI, nats_server: NatsServer, nc: NATS
) -> None:
    want = sdk.chat.completions.create(
        model=MODEL, messages=chat("What is it?", data_url(BLUE)), **GREEDY
    )
    objects = await ImageObjects.open(nc.jetstream())
    name = await objects.put(BLUE)
    client = Client(nc)
    got = await client.request(
        MODEL,
        "chat",
        {"messages": chat("What is it?", names.IMAGE_REF_PREFIX + name)},
        parameters=GREEDY,
    )
    assert got.output["text"] == want.choices[0].message.content
    missing = names.IMAGE_REF_PREFIX + "0" * 64
    with pytest.raises(RequestFailed) as info:
        await client.request(
            MODEL, "chat", {"messages": chat("What is it?", missing)}, parameters=GREEDY
        )
    assert info.value.param == "messages[0].content[0].image_url.url"


async def test_http_urls_are_fetched_and_large_images_stored(
    sdk: openai.OpenAI, image_server: str, nc: NATS
) -> None:
    def ask(url: str) -> Any:
        return sdk.chat.completions.create(model=MODEL, messages=chat("What is it?", url), **GREEDY)

    fetched = await asyncio.to_thread(ask, f"{image_server}/red.png")
    sent = await asyncio.to_thread(ask, data_url(RED))
    assert fetched.choices[0].message.content == sent.choices[0].message.content
    # Too large to ride in a NATS message: the bridge stores it and the request names it.
    assert len(BIG) > 256 * 1024
    big = await asyncio.to_thread(ask, f"{image_server}/big.png")
    big_sent = await asyncio.to_thread(ask, data_url(BIG))
    assert big.choices[0].message.content == big_sent.choices[0].message.content
    objects = await ImageObjects.open(nc.jetstream())
    assert await objects.get(hashlib.sha256(BIG).hexdigest()) == BIG
    with pytest.raises(openai.BadRequestError) as info:
        await asyncio.to_thread(ask, f"{image_server}/missing.png")
    body: Any = info.value.body
    assert (body["param"], body["code"]) == ("messages[0].content[0].url", "invalid_image_url")
