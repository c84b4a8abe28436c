"""A Responses request's `input` -> chat messages, and chat error params -> `input` params.
Pure functions: no I/O.

`input_text` (and `output_text`) parts become chat text (one string when a message holds only
text); `input_image`, `input_file` and `input_audio` parts become chat's `image_url`, `file`
and `input_audio` parts, so the worker decides, as for chat, whether its model takes them. A
worker names a refused field in the chat request (`messages[3].content[1]`); `origins` says
where each chat message came from, so the caller is told `input[1].content[1]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from producer.http.errors import invalid
from schemas import names
from schemas.payloads import ChatMessage

ID_PREFIX = names.RESPONSE_ID_PREFIX
_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")
#: Where a message of a continued conversation (`previous_response_id`) came from.
HISTORY = "previous_response_id"
_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](.*)")


def _media_part(part: dict[str, Any], kind: str, at: str) -> dict[str, Any]:
    """The chat part of an `input_image`, `input_file` or `input_audio` part."""
    if kind == "input_image":
        image = {
            k: part[k] for k in ("file_id", "detail") if isinstance(part.get(k), str) and part[k]
        }
        if isinstance(part.get("image_url"), str):
            image["url"] = part["image_url"]
        if "url" not in image and "file_id" not in image:
            raise invalid(
                "Missing required parameter: an input_image needs image_url or file_id.",
                f"{at}.image_url",
                "missing_required_parameter",
            )
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        keys = ("file_id", "file_data", "file_url", "filename")
        file = {k: part[k] for k in keys if isinstance(part.get(k), str)}
        if not file.keys() - {"filename"}:
            raise invalid(
                "Missing required parameter: an input_file needs file_id, file_data or file_url.",
                f"{at}.file_id",
                "missing_required_parameter",
            )
        return {"type": "file", "file": file}
    audio = part.get("input_audio")
    if not isinstance(audio, dict):
        raise invalid(
            f"Missing required parameter: '{at}.input_audio'.",
            f"{at}.input_audio",
            "missing_required_parameter",
        )
    return {"type": "input_audio", "input_audio": audio}


_MEDIA_PARTS = ("input_image", "input_file", "input_audio")


def _content(content: Any, param: str, media: bool = True) -> str | list[dict[str, Any]]:
    """A message's chat content: one string when it holds only text, else chat parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid("content must be a string or a list of content parts.", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{param}[{j}]"
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif media and kind in _MEDIA_PARTS:
            parts.append(_media_part(part, str(kind), at))
        else:
            supported = ", ".join((*_TEXT_PARTS[:1], *(_MEDIA_PARTS if media else ())))
            raise invalid(
                f"Invalid content part {str(kind)[:40]!r}: supported types are {supported}.",
                f"{at}.type",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def input_messages(
    value: str | list[Any], response_id: str, *, keep_items: bool = True
) -> tuple[list[ChatMessage], list[dict[str, Any]], list[str]]:
    """Chat messages, the normalised input items of `input` (none unless `keep_items`: only
    a stored response lists them), and where each message's content came from
    (`input[2].content`)."""
    if isinstance(value, str):
        item = {"type": "message", "role": "user", "content": [_part(value)]}
        kept = [_with_id(item, response_id, 0)] if keep_items else []
        return [ChatMessage(role="user", content=value)], kept, ["input"]
    if not value:
        raise invalid("input must not be empty.", "input")
    messages: list[ChatMessage] = []
    items: list[dict[str, Any]] = []
    origins: list[str] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid("Each input item must be an object.", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise invalid(f"role must be one of {', '.join(_ROLES)}.", f"{param}.role")
            content = _content(item.get("content"), f"{param}.content")
            messages.append(ChatMessage(role=role, content=content))  # type: ignore[arg-type]
            origins.append(f"{param}.content")
            text_part = "output_text" if role == "assistant" else "input_text"
            given = item["content"] if isinstance(content, list) else [_part(content, text_part)]
            norm = {"type": "message", "role": role, "content": given}
        elif kind == "function_call":
            call = _function_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                messages[-1] = msgspec.structs.replace(last, tool_calls=[*last.tool_calls, call])
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
                origins.append(param)
            norm = {
                "type": "function_call",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise invalid("call_id must be a non-empty string.", f"{param}.call_id")
            if not isinstance(output, str):
                text = _content(output, f"{param}.output", media=False)
                assert isinstance(text, str)
                output = text
            messages.append(ChatMessage(role="tool", content=output, tool_call_id=call_id))
            origins.append(f"{param}.output")
            norm = {"type": "function_call_output", "call_id": call_id, "output": output}
        else:
            raise invalid(f"Input items of type {str(kind)[:40]!r} are not supported.", param)
        if keep_items:
            items.append(_with_id(norm, response_id, i))
    return messages, items, origins


def input_param(param: str | None, origins: Sequence[str]) -> str | None:
    """The Responses field of a chat request's field: `messages[k].content[j]` -> the
    `input` item message k came from (`input[i].content[j]`); other params unchanged."""
    found = _MESSAGE_PARAM.fullmatch(param or "")
    if found is None or int(found.group(1)) >= len(origins):
        return param
    origin, rest = origins[int(found.group(1))], found.group(2)
    if rest.startswith(".content"):
        return origin + rest.removeprefix(".content") if origin.endswith(".content") else origin
    # Another field of the message (a tool message's `tool_call_id`): the item it came from.
    return origin.partition(".")[0] if origin.startswith("input[") else origin


def _part(text: str, kind: str = "input_text") -> dict[str, Any]:
    return {"type": kind, "text": text}


def _with_id(item: dict[str, Any], response_id: str, index: int) -> dict[str, Any]:
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}[item["type"]]
    return {"id": f"{prefix}_in{index}_{response_id.removeprefix(ID_PREFIX)}", **item}


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    for field, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
        if not isinstance(value, str) or (field != "arguments" and not value):
            raise invalid(f"{field} must be a string.", f"{param}.{field}")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
