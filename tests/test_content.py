"""What a chat message may hold and what a model takes (schemas/content.py): OpenAI's refusals,
each naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.content import InvalidContent, check_messages
from schemas.payloads import ChatMessage
from schemas.settings import ConfigError
from workers.config import load_models_file

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
FILE = {"type": "file", "file": {"file_id": "file-abc"}}
TEXT = {"type": "text", "text": "what is this?"}
MISSING = "missing_required_parameter"


def messages(*raw: dict[str, Any]) -> list[ChatMessage]:
    return msgspec.convert(list(raw), list[ChatMessage])


def refusal(msgs: list[ChatMessage], inputs: Any = None) -> InvalidContent:
    with pytest.raises(InvalidContent) as info:
        check_messages(msgs, inputs, "smollm2")
    return info.value


@pytest.mark.parametrize(
    ("part", "kind"), [(IMAGE, "images"), (AUDIO, "audio"), (FILE, "files")], ids=str
)
def test_a_part_the_model_does_not_take_is_refused_naming_it(
    part: dict[str, Any], kind: str
) -> None:
    msgs = messages(
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [TEXT, part]},
    )
    error = refusal(msgs, {"text"})
    assert error.param == "messages[1].content[1]"
    # OpenAI's wording, and which kind of input the model does not take.
    assert error.message.startswith(f"Invalid content type. {part['type']} is only supported")
    assert f"the model `smollm2` does not take {kind}" in error.message


def test_a_model_that_takes_images_accepts_them_and_text_only_is_always_fine() -> None:
    check_messages(messages({"role": "user", "content": [TEXT, IMAGE]}), {"text", "image"})
    check_messages(messages({"role": "user", "content": [TEXT, TEXT]}), {"text"})
    check_messages(messages({"role": "user", "content": "plain"}), {"text"})
    # Without `inputs` (the bridge, which does not know the model) nothing is refused for
    # its kind.
    check_messages(messages({"role": "user", "content": [IMAGE, AUDIO, FILE]}))


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_a_message_without_content_is_missing_a_required_parameter(role: str) -> None:
    for msgs in (
        messages({"role": "user", "content": "hi"}, {"role": role}),
        messages({"role": "user", "content": "hi"}, {"role": role, "content": None}),
    ):
        error = refusal(msgs)
        assert error.param == "messages[1].content"
        assert error.code == "missing_required_parameter"
        assert error.message == "Missing required parameter: 'messages[1].content'."


def test_tool_messages_need_content_and_a_call_id_assistant_messages_need_neither() -> None:
    error = refusal(messages({"role": "tool", "content": "42"}))
    assert (error.param, error.code) == ("messages[0].tool_call_id", "missing_required_parameter")
    assert refusal(messages({"role": "tool", "tool_call_id": "c1"})).param == "messages[0].content"
    check_messages(messages({"role": "assistant"}, {"role": "user", "content": "go on"}))


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        ({"text": "no type"}, "messages[0].content[0].type", MISSING),
        ({"type": "video_url"}, "messages[0].content[0].type", "invalid_value"),
        ({"type": "text"}, "messages[0].content[0].text", MISSING),
        ({"type": "image_url"}, "messages[0].content[0].image_url", MISSING),
        ({"type": "file", "file": None}, "messages[0].content[0].file", MISSING),
    ],
)
def test_malformed_parts_are_refused_before_what_the_model_takes(
    part: dict[str, Any], param: str, code: str
) -> None:
    error = refusal(messages({"role": "user", "content": [part]}), {"text", "image", "file"})
    assert (error.param, error.code) == (param, code)


def test_an_empty_list_of_parts_is_refused() -> None:
    error = refusal(messages({"role": "user", "content": []}))
    assert (error.param, error.code) == ("messages[0].content", "empty_array")


def test_models_file_rejects_audio_for_the_llm_engine(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nname = "m"\nengine = "llm"\ninputs = ["text", "audio"]\n')
    with pytest.raises(ConfigError, match="takes text and images"):
        load_models_file(models)
    # Images: when the model is a vision-language one (checked as it loads).
    models.write_text('[[models]]\nname = "m"\nengine = "llm"\ninputs = ["text", "image"]\n')
    load_models_file(models)
    models.write_text('[[models]]\nname = "m"\ninputs = ["text", "smell"]\n')
    with pytest.raises(ConfigError, match="inputs"):
        load_models_file(models)
