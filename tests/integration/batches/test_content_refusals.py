"""Content a model cannot take is refused, never dropped: an image (audio, file) part for a
text model, and a message without its content, on every way in (HTTP chat, Responses, the
official SDK, a NATS subject, batch lines, async requests), each error naming the field.
Against the session's real bridge, scheduler, echo worker and tiny chat LLM (ChatML template,
as SmolLM2's), plus an echo worker whose models-file entry says it takes images."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import openai
import pytest

from producer.client import make_request
from schemas import names
from schemas.codec import decode_worker_info, encode

from ..conftest import worker_process
from .conftest import ECHO, LLM, BatchStack, jsonl, read_lines, wait_batch

pytestmark = pytest.mark.integration

#: An echo worker whose models-file entry declares `inputs = ["text", "image"]`.
VISION_ECHO = f"b-echo-vision-{uuid.uuid4().hex[:4]}"
#: A whole 1 x 1 PNG: the bridge decodes the images of a model that takes them.
IMAGE_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgG"
    "AWjR9awAAAABJRU5ErkJggg=="
)
QUESTION = {"type": "text", "text": "what is in this picture?"}
PARTS = {
    "images": {"type": "image_url", "image_url": {"url": IMAGE_URL}},
    "audio": {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    "files": {"type": "file", "file": {"file_id": "file-abc"}},
}


def chat_body(model: str, *parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": [QUESTION, *parts]}], **extra}


def post(stack: BatchStack, path: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {stack.keys['alpha']}"}
    return httpx.post(f"{stack.v1}{path}", headers=headers, json=body, timeout=60)


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error", error
    return dict(error)


@pytest.fixture(scope="module")
def vision_echo(batch_stack: BatchStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("vision-echo")
    models = folder / "models.toml"
    models.write_text(
        f'[[models]]\nname = "{VISION_ECHO}"\nclass = "echo"\ninputs = ["text", "image"]\n'
    )
    args = ["--models-file", str(models)]
    with worker_process(batch_stack.nats_url, VISION_ECHO, args, folder / "worker.log"):
        yield VISION_ECHO


@pytest.mark.parametrize("model", [ECHO, LLM])
@pytest.mark.parametrize("kind", list(PARTS))
def test_http_chat_refuses_a_part_the_model_does_not_take(
    batch_stack: BatchStack, model: str, kind: str
) -> None:
    error = error_of(post(batch_stack, "/chat/completions", chat_body(model, PARTS[kind])))
    assert error["param"] == "messages[0].content[1]"
    assert error["message"].startswith(
        f"Invalid content type. {PARTS[kind]['type']} is only supported by certain models"
    )
    assert f"the model `{model}` does not take {kind}" in error["message"]


@pytest.mark.parametrize("model", [ECHO, LLM])
def test_an_image_for_a_model_without_images_is_refused_not_fetched(
    batch_stack: BatchStack, model: str
) -> None:
    """The bridge fetches and decodes images only for a model whose workers take them."""
    part = {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/never-fetched.png"}}
    error = error_of(post(batch_stack, "/chat/completions", chat_body(model, part)))
    assert error["param"] == "messages[0].content[1]"
    assert f"the model `{model}` does not take images" in error["message"]


def test_a_model_that_declares_images_takes_them(batch_stack: BatchStack, vision_echo: str) -> None:
    response = post(batch_stack, "/chat/completions", chat_body(vision_echo, PARTS["images"]))
    assert response.status_code == 200, response.text

    async def announced(model: str) -> list[str]:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            return decode_worker_info(
                (await nc.request(names.ping_subject(model), b"")).data
            ).inputs
        finally:
            await nc.close()

    # Its workers say so in their ping answer; a text model's say text.
    assert asyncio.run(announced(vision_echo)) == ["text", "image"]
    assert asyncio.run(announced(ECHO)) == ["text"]
    # Audio it does not take.
    error = error_of(post(batch_stack, "/chat/completions", chat_body(vision_echo, PARTS["audio"])))
    assert error["param"] == "messages[0].content[1]"
    assert "does not take audio (it takes images, text)" in error["message"]


@pytest.mark.parametrize("model", [ECHO, LLM])
def test_a_user_message_without_content_is_refused_as_openai_does(
    batch_stack: BatchStack, model: str
) -> None:
    body = {"model": model, "messages": [{"role": "system", "content": "hi"}, {"role": "user"}]}
    error = error_of(post(batch_stack, "/chat/completions", body))
    assert error["param"] == "messages[1].content"
    assert error["code"] == "missing_required_parameter"
    assert error["message"] == "Missing required parameter: 'messages[1].content'."


def test_the_sdk_raises_bad_request_naming_the_param(batch_stack: BatchStack) -> None:
    sdk: Any = batch_stack.sdk()
    with pytest.raises(openai.BadRequestError) as chat:
        sdk.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": [QUESTION, PARTS["images"]]}],
            max_tokens=4,
        )
    assert chat.value.param == "messages[0].content[1]"
    assert "does not take images" in chat.value.message
    # A stream is refused before it starts (the refusal is the first reply).
    with pytest.raises(openai.BadRequestError) as streamed:
        sdk.chat.completions.create(
            model=ECHO, messages=[{"role": "user", "content": [PARTS["audio"]]}], stream=True
        )
    assert streamed.value.param == "messages[0].content[0]"
    with pytest.raises(openai.BadRequestError) as missing:
        sdk.chat.completions.create(model=ECHO, messages=[{"role": "user"}])
    assert missing.value.param == "messages[0].content"
    assert missing.value.code == "missing_required_parameter"
    # The Responses API names the input item the part came from.
    image = {"type": "input_image", "image_url": IMAGE_URL}
    with pytest.raises(openai.BadRequestError) as responses:
        sdk.responses.create(
            model=ECHO,
            instructions="look closely",
            input=[
                {"role": "user", "content": "hello"},
                {"role": "user", "content": [{"type": "input_text", "text": "and this?"}, image]},
            ],
            store=False,
        )
    assert responses.value.param == "input[1].content[1]"
    assert "does not take images" in responses.value.message


def test_every_400_names_its_param(batch_stack: BatchStack) -> None:
    """Refusals that come from the engine name the field as those of the bridge do."""
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    body = chat_body(LLM, response_format=bad_schema, max_tokens=4)
    error = error_of(post(batch_stack, "/chat/completions", body))
    assert error["param"] == "response_format.json_schema.schema", error
    completion = {"model": LLM, "prompt": [10**6], "max_tokens": 2}
    assert error_of(post(batch_stack, "/completions", completion))["param"] == "prompt"


async def test_nats_error_records_name_the_field(batch_stack: BatchStack) -> None:
    nc = await nats.connect(batch_stack.nats_url)
    try:
        for payload, param, text in [
            (chat_body(ECHO, PARTS["images"]), "messages[0].content[1]", "does not take images"),
            ({"messages": [{"role": "user"}]}, "messages[0].content", "Missing required"),
        ]:
            request = {
                "type": "request.v1",
                "id": f"img-{uuid.uuid4().hex[:8]}",
                "model": ECHO,
                "kind": "chat",
                "payload": {"messages": payload["messages"]},
            }
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.jetstream().publish(
                names.request_subject(ECHO),
                json.dumps(request).encode(),
                headers={"Jetserve-Reply-To": inbox},
            )
            reply = json.loads((await sub.next_msg(timeout=30)).data)
            await sub.unsubscribe()
            assert reply["type"] == "error.v1", reply
            assert (reply["code"], reply["param"]) == ("invalid_request", param), reply
            assert text in reply["message"]
    finally:
        await nc.close()


def _upload(sdk: Any, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> Any:
    import io

    uploaded = sdk.files.create(file=("lines.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return sdk.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")


def line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_batch_lines_name_the_field(batch_stack: BatchStack) -> None:
    sdk: Any = batch_stack.sdk()
    # A line without content fails the batch's validation, naming the line and the field.
    missing = line("m", {"model": LLM, "messages": [{"role": "user"}]})
    failed = wait_batch(sdk, _upload(sdk, [missing]).id, {"failed"})
    (error,) = failed.errors.data
    assert (error.line, error.param) == (1, "body.messages[0].content")
    assert error.code == "missing_required_parameter"
    # An image for a text model: that line's error record names the part; the others run.
    lines = [
        line(
            "ok", {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        ),
        line("img", chat_body(LLM, PARTS["images"], max_tokens=2)),
    ]
    done = wait_batch(sdk, _upload(sdk, lines).id, {"completed"}, timeout_s=120)
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    (ok,) = read_lines(sdk, done.output_file_id)
    assert ok["custom_id"] == "ok"
    (bad,) = read_lines(sdk, done.error_file_id)
    assert bad["custom_id"] == "img"
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"] == "messages[0].content[1]"
    # A Responses line names its input item.
    image = {"type": "input_image", "image_url": IMAGE_URL}
    content = [{"type": "input_text", "text": "and this?"}, image]
    responses_line = {
        "custom_id": "r-img",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": ECHO, "input": [{"role": "user", "content": content}]},
    }
    done = wait_batch(sdk, _upload(sdk, [responses_line], "/v1/responses").id, {"completed"})
    (bad,) = read_lines(sdk, done.error_file_id)
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"]["error"]["param"] == "input[0].content[1]"


def test_async_requests_are_refused_the_same_way(batch_stack: BatchStack) -> None:
    headers = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    missing = {"model": ECHO, "messages": [{"role": "user"}]}
    refused = httpx.post(
        f"{batch_stack.v1}/async/chat/completions", headers=headers, json=missing, timeout=30
    )
    assert error_of(refused)["param"] == "messages[0].content"
    body = chat_body(ECHO, PARTS["images"])
    accepted = httpx.post(
        f"{batch_stack.v1}/async/chat/completions", headers=headers, json=body, timeout=30
    )
    assert accepted.status_code == 202, accepted.text
    url = f"{batch_stack.v1}/async/requests/{accepted.json()['id']}"
    end = time.monotonic() + 30
    while (done := httpx.get(url, headers=headers, timeout=30).json())["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < end, done
        time.sleep(0.05)
    response = done["response"]
    assert response["status_code"] == 400
    assert response["body"]["error"]["param"] == "messages[0].content[1]"
    # Submitted over NATS: the stored error record names the part.
    request_id = f"nats-img-{uuid.uuid4().hex[:8]}"

    async def submit() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            request = make_request(
                ECHO, "chat", {"messages": body["messages"]}, request_id=request_id, tenant="alpha"
            )
            await nc.jetstream().publish(
                names.ASYNC_SUBMIT_SUBJECT, encode(request), headers={"Nats-Msg-Id": request_id}
            )
        finally:
            await nc.close()

    asyncio.run(submit())
    url = f"{batch_stack.v1}/async/requests/{request_id}"
    end = time.monotonic() + 30
    while (done := httpx.get(url, headers=headers, timeout=30).json())["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < end, done
        time.sleep(0.05)
    assert done["error"]["code"] == "invalid_request", done
    assert done["error"]["param"] == "messages[0].content[1]"
