"""What a chat message may hold, and what a model takes. Pure: no I/O.

A model declares the kinds of input it takes in the models file (`inputs = ["text", "image"]`;
text only by default); its workers announce them (`WorkerInfo.inputs`) and refuse a content
part of a kind the model does not take, naming it (`messages[0].content[1]`) in the error's
`param`, as OpenAI does: a model must never answer as if an image had not been sent.

The HTTP bridge runs the same structural checks (`check_messages` without `inputs`) before
publishing, so a message without its `content` is a 400 at once, on every way in.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

from schemas.payloads import ChatMessage

#: The kinds of input a model may take.
Input = Literal["text", "image", "audio", "file"]
#: What a model takes when its models-file entry does not say.
DEFAULT_INPUTS: tuple[Input, ...] = ("text",)

#: OpenAI's chat content part types -> the kind of input each carries, and the key holding
#: the part's value.
PART_INPUTS: dict[str, tuple[Input, str]] = {
    "text": ("text", "text"),
    "refusal": ("text", "refusal"),
    "image_url": ("image", "image_url"),
    "input_audio": ("audio", "input_audio"),
    "file": ("file", "file"),
}
#: How a refusal names each kind ("does not take images").
_PLURAL = {"text": "text", "image": "images", "audio": "audio", "file": "files"}
#: Roles whose messages must have `content`.
_CONTENT_REQUIRED = ("system", "developer", "user", "tool")


class InvalidContent(ValueError):
    """A message OpenAI would refuse: `param` names the field, `code` is OpenAI's code."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _missing(param: str) -> InvalidContent:
    return InvalidContent(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def check_messages(
    messages: Sequence[ChatMessage],
    inputs: Collection[str] | None = None,
    model: str = "",
) -> None:
    """Raise `InvalidContent` for the first message OpenAI would refuse: a required field
    missing, a content part of an unknown type or without its value, and, when `inputs` is
    given (what the model takes), a part of a kind the model does not take."""
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        content = message.content
        # An assistant message may be empty: jetserve stores a response that wrote nothing
        # as one, and continues the conversation from it (Responses' previous_response_id).
        if content is None and message.role in _CONTENT_REQUIRED:
            raise _missing(f"{at}.content")
        if message.role == "tool" and not message.tool_call_id:
            raise _missing(f"{at}.tool_call_id")
        if not isinstance(content, list):
            continue
        if not content:
            raise InvalidContent(
                f"Invalid '{at}.content': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                f"{at}.content",
                "empty_array",
            )
        for j, part in enumerate(content):
            _check_part(part, f"{at}.content[{j}]", inputs, model)


def _check_part(part: dict[str, Any], at: str, inputs: Collection[str] | None, model: str) -> None:
    kind = part.get("type")
    if kind is None:
        raise _missing(f"{at}.type")
    found = PART_INPUTS.get(kind) if isinstance(kind, str) else None
    if found is None:
        supported = ", ".join(f"'{k}'" for k in PART_INPUTS)
        raise InvalidContent(
            f"Invalid value: '{str(kind)[:40]}'. Supported values are: {supported}.",
            f"{at}.type",
        )
    needs, key = found
    if part.get(key) is None:
        raise _missing(f"{at}.{key}")
    if inputs is not None and needs not in inputs:
        raise InvalidContent(
            f"Invalid content type. {kind} is only supported by certain models: "
            f"the model `{model}` does not take {_PLURAL[needs]} "
            f"(it takes {', '.join(_PLURAL.get(i, i) for i in sorted(inputs))}).",
            at,
            "invalid_request",
        )
