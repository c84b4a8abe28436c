"""Responses API bodies <-> the chat request jetserve already serves. Pure functions: no I/O.

A Responses request becomes one `chat` `InferenceRequest` (so workers need nothing new):
`instructions` -> a system message first; `input` items -> chat messages
(`responses_input`: text parts joined, image/file/audio parts as chat's, `function_call`
items -> an assistant message's `tool_calls`, `function_call_output` -> a `tool` message);
function `tools` and `tool_choice` -> chat's nested shape; the flat `text.format`
json_schema -> chat's `response_format`. A continued conversation (`previous_response_id`)
is the stored conversation of that response, then the new input; instructions are not
carried over (as OpenAI).
"""

from __future__ import annotations

from typing import Any

import msgspec

from producer.http import convert
from producer.http import responses_types as rt
from producer.http.errors import invalid
from producer.http.responses_input import HISTORY, input_messages
from schemas import names
from schemas.messages import FinalResult, InferenceRequest
from schemas.names import Priority
from schemas.params import SamplingParams
from schemas.payloads import ChatMessage, ChatPayload
from schemas.tiers import resolve_tier

ID_PREFIX = names.RESPONSE_ID_PREFIX
#: Known request fields jetserve does not serve: refused when set, naming the field.
REFUSED = ("reasoning", "conversation", "prompt", "top_logprobs", "max_tool_calls")
_TOOL_CHOICES = ("none", "auto", "required")


class Converted(msgspec.Struct, frozen=True):
    request: InferenceRequest
    #: This request's input items, each with an id (GET .../input_items).
    input_items: list[dict[str, Any]]
    #: The conversation so far without instructions (history + this input).
    conversation: list[ChatMessage]
    #: Where the content of each of the request's chat messages came from (`instructions`,
    #: `previous_response_id`, `input[2].content`): `responses_input.input_param`.
    origins: list[str] = msgspec.field(default_factory=list)


def serving_tier(asked: str | None) -> tuple[Priority, str]:
    """(the subject priority, the tier reported) for the `service_tier` asked: the same
    mapping as chat and completions (schemas/tiers.py)."""
    tier = resolve_tier(asked)
    return tier.queue, tier.reported


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise invalid(
                f"Only function tools are supported, not {str(tool.get('type'))[:40]!r}.",
                f"tools[{i}].type",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise invalid("A function tool needs a name.", f"tools[{i}].name")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or choice in _TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return {"type": "function", "function": {"name": name}}
    raise invalid(
        "tool_choice must be none, auto, required or {type: function, name}.", "tool_choice"
    )


def response_format(text: rt.TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise invalid("A json_schema format needs a name.", "text.format.name")
        if not isinstance(schema, dict):
            raise invalid("schema must be a JSON Schema object.", "text.format.schema")
        spec = {"name": name, "schema": schema, "strict": bool(fmt.get("strict"))}
        return {"type": "json_schema", "json_schema": spec}
    raise invalid("text.format.type must be text, json_object or json_schema.", "text.format.type")


def check_refused(body: rt.ResponsesRequest) -> None:
    for field in REFUSED:
        if getattr(body, field) is not None:
            raise invalid(f"{field} is not supported.", field)


def responses_request(
    body: rt.ResponsesRequest, history: list[ChatMessage], *, stored: bool = True, **fields: Any
) -> Converted:
    """`fields`: id, tenant, deadline_ms, created_ms, idempotency_key (already checked).
    The input items are kept only for a response to be `stored`."""
    model = convert.check_model(body.model)
    check_refused(body)
    response_id = ID_PREFIX + fields["id"]
    new, items, new_origins = input_messages(body.input, response_id, keep_items=stored)
    conversation = [*history, *new]
    messages = conversation
    if body.instructions:
        messages = [ChatMessage(role="system", content=body.instructions), *conversation]
    payload = ChatPayload(
        messages=messages,
        tools=chat_tools(body.tools),
        tool_choice=chat_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=response_format(body.text),
    )
    params = SamplingParams(
        max_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
    )
    priority, _ = serving_tier(body.service_tier)
    request = InferenceRequest(
        model=model,
        kind="chat",
        payload=payload,
        parameters=params,
        stream=bool(body.stream),
        priority=priority,
        **fields,
    )
    return Converted(request, items, conversation, _origins(body, len(history), new_origins))


def _origins(body: rt.ResponsesRequest, history: int, new: list[str]) -> list[str]:
    """`Converted.origins`: the instructions' system message, the stored conversation's
    `history` messages, then those of `input` (`new`)."""
    found = [*(HISTORY for _ in range(history)), *new]
    return ["instructions", *found] if body.instructions else found


def origins(body: rt.ResponsesRequest) -> list[str]:
    """`Converted.origins` of a request that continues no conversation (a batch line)."""
    return _origins(body, 0, input_messages(body.input, ID_PREFIX, keep_items=False)[2])


def standalone_request(body: rt.ResponsesRequest, **fields: Any) -> InferenceRequest:
    """A request that needs nothing stored (a batch line): no `previous_response_id`, not
    streamed, not in the background, not stored."""
    for field in ("previous_response_id", "stream", "background", "store"):
        if getattr(body, field):
            raise invalid(f"{field} is not supported here.", field)
    return responses_request(body, [], stored=False, **fields).request


# ---- results ------------------------------------------------------------------------------


def message_id(response_id: str) -> str:
    return "msg_" + response_id.removeprefix(ID_PREFIX)


def call_item_id(response_id: str, index: int) -> str:
    return f"fc_{index}_{response_id.removeprefix(ID_PREFIX)}"


def function_call(response_id: str, index: int, call: dict[str, Any]) -> rt.FunctionCall:
    function = call.get("function") or {}
    return rt.FunctionCall(
        id=call_item_id(response_id, index),
        call_id=str(call.get("id") or call_item_id(response_id, index)),
        name=str(function.get("name", "")),
        arguments=str(function.get("arguments", "")),
    )


def output_items(
    response_id: str, text: str, tool_calls: list[dict[str, Any]] | None, status: str
) -> list[rt.OutputItem]:
    items: list[rt.OutputItem] = []
    if text or not tool_calls:
        items.append(rt.OutputMessage(message_id(response_id), status, [rt.OutputText(text)]))
    items.extend(function_call(response_id, i, c) for i, c in enumerate(tool_calls or ()))
    return items


def status_of(finish_reason: str | None) -> tuple[rt.Status, rt.IncompleteDetails | None]:
    if finish_reason in ("length", "deadline"):
        return "incomplete", rt.IncompleteDetails("max_output_tokens")
    if finish_reason == "cancelled":
        return "cancelled", None
    return "completed", None


def usage(result: FinalResult) -> rt.ResponseUsage:
    u = result.usage
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    return rt.ResponseUsage(
        u.prompt_tokens,
        rt.InputTokensDetails(cached),
        u.completion_tokens,
        rt.OutputTokensDetails(0),
        u.total_tokens,
    )


def assistant_message(output: list[rt.OutputItem]) -> ChatMessage:
    """The response's output as the assistant turn of the conversation that continues it."""
    text = "".join(p.text for o in output if isinstance(o, rt.OutputMessage) for p in o.content)
    calls = [
        {
            "id": o.call_id,
            "type": "function",
            "function": {"name": o.name, "arguments": o.arguments},
        }
        for o in output
        if isinstance(o, rt.FunctionCall)
    ]
    return ChatMessage(role="assistant", content=text or None, tool_calls=calls or None)


def base_response(
    body: rt.ResponsesRequest, response_id: str, created: int, *, stored: bool
) -> rt.Response:
    """The response object before any output: what `response.created` carries."""
    _, tier = serving_tier(body.service_tier)
    return rt.Response(
        id=response_id,
        created_at=created,
        status="in_progress",
        model=body.model,
        output=[],
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        tool_choice=body.tool_choice or "auto",
        tools=body.tools or [],
        text={"format": (body.text.format if body.text and body.text.format else {"type": "text"})},
        metadata=body.metadata or {},
        store=stored,
        background=bool(body.background),
        service_tier=tier,
        user=body.user,
    )


def finished_response(base: rt.Response, result: FinalResult, completed_at: int) -> rt.Response:
    text, _, tool_calls = convert.text_of(result)
    status, incomplete = status_of(result.finish_reason)
    item_status = "incomplete" if status == "incomplete" else "completed"
    return msgspec.structs.replace(
        base,
        status=status,
        model=result.model,
        output=output_items(base.id, text, tool_calls, item_status),
        incomplete_details=incomplete,
        usage=usage(result),
        completed_at=completed_at,
    )
