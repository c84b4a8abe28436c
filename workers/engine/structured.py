"""Structured output and tool calling: from a request to a grammar and a prompt, and from the
generated text back to tool calls.

`response_format` (chat and completion payloads):
    {"type": "text"}                                  free text
    {"type": "json_object"}                           any JSON object
    {"type": "json_schema", "json_schema": {"schema": {...}, "name": ..., "strict": ...}}
    {"type": "regex", "regex": "..."}                 (extension)
    {"type": "choice", "choices": ["a", "b"]}         (extension)

Tools use one format on every model, whatever its chat template: the tools are described in
the system message, and a call is written as

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

which the grammar enforces (each call's arguments validate against that function's
`parameters` schema). `tool_choice`: "none" (no constraint), "auto" (text, or calls — text
may then not begin with "<"), "required" (one call or more), or a named function (exactly
that one). `parallel_tool_calls: false` allows a single call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schemas.errors import ErrorCode
from schemas.payloads import ChatMessage, ChatPayload, CompletionPayload
from workers.errors import PermanentError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.S)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _bad(message: str, param: str) -> PermanentError:
    """A refusal naming the field at fault (the chat body's name for it)."""
    return PermanentError(message, ErrorCode.INVALID_REQUEST, param=param)


@dataclass(frozen=True)
class Plan:
    """What a request needs beyond plain sampling."""

    #: llguidance grammar text, or None for free text.
    grammar: str | None = None
    #: Where the grammar came from, for error messages.
    description: str = ""
    #: Function names callable in this request ("" mode: no tools).
    tool_names: tuple[str, ...] = ()
    #: "none", "auto", "required" or "named".
    tool_mode: str = "none"
    #: Messages to render instead of the request's (tools described, calls as text).
    messages: list[dict[str, Any]] = field(default_factory=list)


def _strict(schema: Any) -> Any:
    """OpenAI's strict mode: objects take no properties beyond those listed, unless the
    schema says otherwise."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def _response_grammar(fmt: dict[str, Any] | None) -> tuple[str | None, str]:
    from llguidance import LLMatcher, grammar_from

    if fmt is None:
        return None, ""
    kind = fmt.get("type")
    options: JsonCompileOptions = {"whitespace_flexible": False}
    if kind == "text":
        return None, ""
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=options), (
            "response_format"
        )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise _bad(
                "response_format.json_schema.schema must be a JSON Schema object",
                "response_format.json_schema.schema",
            )
        schema = _strict(spec["schema"]) if spec.get("strict") else spec["schema"]
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=options)
        except ValueError as exc:
            raise _bad(
                f"response_format.json_schema.schema: {exc}", "response_format.json_schema.schema"
            ) from None
        return grammar, "response_format.json_schema.schema"
    if kind == "regex":
        regex = fmt.get("regex")
        if not isinstance(regex, str) or not regex:
            raise _bad("response_format.regex must be a non-empty string", "response_format.regex")
        return LLMatcher.grammar_from_regex(regex), "response_format.regex"
    if kind == "choice":
        choices = fmt.get("choices")
        if not (
            isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)
        ):
            raise _bad(
                "response_format.choices must be a non-empty list of non-empty strings",
                "response_format.choices",
            )
        return grammar_from("choice", json.dumps(choices)), "response_format.choices"
    raise _bad(
        f"response_format.type {kind!r} is not one of text, json_object, json_schema, regex, "
        "choice",
        "response_format.type",
    )


def _tools(payload: ChatPayload) -> dict[str, dict[str, Any]]:
    tools: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(payload.tools or []):
        fn = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                f"tools[{i}]",
            )
        name = fn["name"]
        if not _NAME_RE.fullmatch(name):
            raise _bad(
                f"tools[{i}].function.name {name!r}: use 1-64 of A-Z a-z 0-9 _ -",
                f"tools[{i}].function.name",
            )
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise _bad(
                f"tools[{i}].function.parameters must be a JSON Schema object",
                f"tools[{i}].function.parameters",
            )
        tools[name] = {"name": name, "description": fn.get("description", ""), "parameters": params}
    return tools


def _tool_mode(payload: ChatPayload, names: list[str]) -> tuple[str, list[str]]:
    choice = payload.tool_choice
    if not names:
        if choice not in (None, "none", "auto"):
            raise _bad("tool_choice needs tools", "tool_choice")
        return "none", []
    if choice is None or choice == "auto":
        return "auto", names
    if choice == "none":
        return "none", names
    if choice == "required":
        return "required", names
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if name not in names:
            raise _bad(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
        return "named", [str(name)]
    raise _bad("tool_choice must be 'none', 'auto', 'required' or a named function", "tool_choice")


def _calls_grammar(tools: dict[str, dict[str, Any]], names: list[str], parallel: bool) -> str:
    options = [
        {
            "type": "object",
            # Objects closed to their listed properties (unless the schema says otherwise),
            # as in strict mode: a small model otherwise keeps adding keys until max_tokens.
            "properties": {"name": {"const": n}, "arguments": _strict(tools[n]["parameters"])},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for n in names
    ]
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    one = f'"{CALL_OPEN}" call "{CALL_CLOSE}"'
    calls = f"calls: ({one})+" if parallel else f"calls: {one}"
    schema["x-guidance"] = {"whitespace_flexible": False}
    return f"{calls}\ncall: %json {json.dumps(schema)}\n"


def _preamble(tools: dict[str, dict[str, Any]], names: list[str], mode: str) -> str:
    must = (
        "You must call a function."
        if mode in ("required", "named")
        else ("Call a function when it helps; otherwise answer normally.")
    )
    listed = "\n".join(json.dumps(tools[n]) for n in names)
    return (
        f"You can call these functions. {must} To call one, reply with\n"
        f'{CALL_OPEN}{{"name": "<function name>", "arguments": {{...}}}}{CALL_CLOSE}\n'
        f"<tools>\n{listed}\n</tools>"
    )


def _render_messages(
    payload: ChatPayload, preamble: str | None, template_knows_tools: bool
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in payload.messages:
        out.append(_render(m, template_knows_tools))
    if preamble:
        if out and out[0]["role"] in ("system", "developer") and isinstance(out[0]["content"], str):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{preamble}"}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def _render(m: ChatMessage, template_knows_tools: bool) -> dict[str, Any]:
    text = m.text()
    role = "system" if m.role == "developer" else m.role
    if m.tool_calls:
        calls = []
        for call in m.tool_calls:
            fn = call.get("function", {})
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                raise _bad(
                    "messages: tool_calls[].function.arguments must be JSON", "messages"
                ) from None
            calls.append(
                CALL_OPEN + json.dumps({"name": fn.get("name"), "arguments": args}) + CALL_CLOSE
            )
        text = (text + "\n" if text else "") + "".join(calls)
    if role == "tool" and not template_knows_tools:
        return {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
    if isinstance(m.content, list) and any(p.get("type") == "image_url" for p in m.content):
        # Only models that take images get here (the others refuse image parts): their
        # processor's template places an image at each `{"type": "image"}` part.
        parts: list[dict[str, Any]] = []
        for part in m.content:
            if part.get("type") == "image_url":
                parts.append({"type": "image"})
            elif part.get("type") == "text" and part.get("text"):
                parts.append({"type": "text", "text": str(part["text"])})
        return {"role": role, "content": parts}
    return {"role": role, "content": text}


def plan(payload: ChatPayload | CompletionPayload, template: str | None) -> Plan:
    """The grammar and messages for a request; PermanentError naming any invalid field."""
    if isinstance(payload, CompletionPayload):
        grammar, where = _response_grammar(payload.response_format)
        return Plan(grammar, where)
    fmt_grammar, where = _response_grammar(payload.response_format)
    tools = _tools(payload)
    mode, names = _tool_mode(payload, list(tools))
    knows_tools = bool(template) and "tool" in (template or "")
    if mode == "none":
        messages = _render_messages(payload, None, knows_tools)
        return Plan(fmt_grammar, where, (), "none", messages)
    parallel = payload.parallel_tool_calls is not False
    calls = _calls_grammar(tools, names, parallel)
    if mode == "auto":
        if fmt_grammar is not None:
            raise _bad(
                "response_format with tools and tool_choice 'auto' is not supported: "
                "use tool_choice 'none' or 'required'",
                "response_format",
            )
        grammar = "start: TEXT | calls\nTEXT: /[^<](.|\\n)*/\n" + calls
    else:
        grammar = "start: calls\n" + calls
    messages = _render_messages(payload, _preamble(tools, names, mode), knows_tools)
    return Plan(grammar, "tools", tuple(names), mode, messages)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(text outside the calls, OpenAI tool_calls) from generated text."""
    calls = []
    for match in _CALL_RE.finditer(text):
        try:
            call = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue  # an unfinished call (max_tokens); the grammar guarantees finished ones
        calls.append(openai_tool_call(call["name"], call["arguments"]))
    return _CALL_RE.sub("", text).strip(), calls


def openai_tool_call(name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


class ToolCallStream:
    """Splits streamed text into plain deltas and completed tool calls."""

    def __init__(self) -> None:
        self._buffer = ""
        #: Calls completed so far (OpenAI shape, with the ids that were streamed).
        self.calls: list[dict[str, Any]] = []
        self._mode: str | None = None  # "text" or "calls", decided by the first character

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        """(text to stream now, tool-call deltas completed by this text)."""
        if not delta:
            return "", []
        if self._mode is None:
            self._mode = "calls" if delta.lstrip().startswith("<") else "text"
        if self._mode == "text":
            return delta, []
        self._buffer += delta
        out = []
        while True:
            match = _CALL_RE.search(self._buffer)
            if match is None:
                break
            try:
                call = json.loads(match.group(1))
                tool_call = openai_tool_call(call["name"], call["arguments"])
                out.append({"index": len(self.calls), **tool_call})
                self.calls.append(tool_call)
            except (json.JSONDecodeError, KeyError):
                pass
            self._buffer = self._buffer[match.end() :]
        return "", out
