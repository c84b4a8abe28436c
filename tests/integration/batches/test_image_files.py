"""Images by `file_id`: an image uploaded through the files API (purpose `vision`) is named
by a Responses `input_image` and answered by a real vision-language worker (the tiny random
Idefics3) exactly as the same image sent inline; another tenant's file, a batch file and a
missing one are 400s naming the field (the official openai SDK, a real bridge and database)."""

from __future__ import annotations

import base64
import io
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import BatchStack, _launch, jsonl

pytestmark = pytest.mark.integration

MODEL = "files-tiny-vlm"


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (50, 40), color).save(out, "PNG")
    return out.getvalue()


RED = _png((230, 20, 20))


@pytest.fixture(scope="module")
def vlm(batch_stack: BatchStack, tiny_vlm_dir: Path) -> Iterator[BatchStack]:
    models = batch_stack.logs / "vlm-models.toml"
    models.write_text(
        f'[[models]]\nname = "{MODEL}"\nengine = "llm"\npath = "{tiny_vlm_dir}"\n'
        'dtype = "float32"\ninputs = ["text", "image"]\ncapacity = 4\n'
        "[models.options]\nkv_cache_mib = 4\nmax_model_len = 1024\nkv_block_size = 16\n"
    )
    worker = _launch(
        ["worker", "--model", MODEL, "--models-file", str(models)],
        batch_stack.worker_env,
        batch_stack.logs / "worker-vlm.log",
    )
    try:
        end = time.monotonic() + 120
        while True:
            assert worker.poll() is None, "the VLM worker exited"
            with urllib.request.urlopen(f"{batch_stack.url}/readyz", timeout=5) as r:
                if f'"{MODEL}":true' in r.read().decode():
                    break
            assert time.monotonic() < end, "the VLM worker did not come up"
            time.sleep(0.3)
        yield batch_stack
    finally:
        worker.terminate()
        worker.wait(30)


def _ask(client: openai.OpenAI, image: dict[str, Any]) -> Any:
    part = {"type": "input_image", "detail": "auto", **image}
    text = {"type": "input_text", "text": "What is it?"}
    return client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [part, text]}],  # type: ignore[list-item,misc]
        store=False,
        max_output_tokens=6,
        temperature=0,
    )


def test_an_uploaded_image_is_answered_by_its_file_id(vlm: BatchStack) -> None:
    alpha = vlm.sdk("alpha")
    uploaded = alpha.files.create(file=("red.png", io.BytesIO(RED)), purpose="vision")
    assert (uploaded.purpose, uploaded.bytes) == ("vision", len(RED))
    listed = alpha.files.list(purpose="vision")
    assert uploaded.id in {f.id for f in listed.data}
    inline = "data:image/png;base64," + base64.b64encode(RED).decode()
    want = _ask(alpha, {"image_url": inline}).output_text
    assert _ask(alpha, {"file_id": uploaded.id}).output_text == want

    batch_file = alpha.files.create(
        file=("b.jsonl", io.BytesIO(jsonl([{"custom_id": "x"}]))), purpose="batch"
    )
    for client, file_id, says in (
        (vlm.sdk("beta"), uploaded.id, "No file with id"),  # another tenant's
        (alpha, "file-missing", "No file with id"),
        (alpha, batch_file.id, "The file's purpose is 'batch'"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            _ask(client, {"file_id": file_id})
        body: Any = info.value.body
        assert body["param"] == "input[0].content[0].file_id"
        assert body["message"].startswith(says), body


def test_a_file_sent_before_its_purpose_takes_that_purpose(batch_stack: BatchStack) -> None:
    import httpx

    boundary = "jetserve-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="red.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body += (
        RED
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"vision\r\n--{boundary}--\r\n"
        ).encode()
    )
    response = httpx.post(
        f"{batch_stack.v1}/files",
        content=body,
        headers={
            "authorization": f"Bearer {batch_stack.keys['alpha']}",
            "content-type": f"multipart/form-data; boundary={boundary}",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert (response.json()["purpose"], response.json()["bytes"]) == ("vision", len(RED))
    stored = batch_stack.sdk("alpha").files.retrieve(response.json()["id"])
    assert stored.purpose == "vision"
