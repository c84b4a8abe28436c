"""Constrained decoding on the tiny *random* model: every output satisfies its schema or
grammar whatever the model prefers (the guarantee must not depend on the model)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import msgspec
import pytest

from schemas.errors import ErrorCode
from schemas.params import SamplingParams
from schemas.payloads import ChatPayload, CompletionPayload
from workers.engine import structured
from workers.engine.constraints import Grammars, MaskComputer
from workers.engine.engine import Engine, EngineConfig
from workers.engine.model_runner import ModelRunner
from workers.engine.prompts import chat_ids, completion_ids
from workers.engine.sequence import EngineRequest, Status
from workers.errors import PermanentError

from .conftest import run_to_end

SCHEMAS: list[dict[str, Any]] = [
    {  # flat, required fields, enum, bounded integer
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "color": {"enum": ["red", "green", "blue"]},
        },
        "required": ["name", "age", "color"],
        "additionalProperties": False,
    },
    {  # nested object and array of objects
        "type": "object",
        "properties": {
            "city": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 10},
                    "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
                },
                "required": ["name", "population"],
                "additionalProperties": False,
            },
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 6},
                "minItems": 1,
                "maxItems": 4,
            },
            "visits": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                        "ok": {"type": "boolean"},
                    },
                    "required": ["year", "ok"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["city", "tags", "visits"],
        "additionalProperties": False,
    },
    {  # array at the top, const, nullable
        "type": "array",
        "minItems": 2,
        "maxItems": 5,
        "items": {
            "type": "object",
            "properties": {
                "kind": {"const": "point"},
                "x": {"type": "integer", "minimum": -100, "maximum": 100},
                "label": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
            },
            "required": ["kind", "x", "label"],
            "additionalProperties": False,
        },
    },
    {  # booleans, enums of numbers, optional property
        "type": "object",
        "properties": {
            "active": {"type": "boolean"},
            "level": {"enum": [1, 2, 3]},
            "note": {"type": "string", "maxLength": 8},
        },
        "required": ["active", "level"],
        "additionalProperties": False,
    },
]

PROMPTS = [
    "Describe a person.",
    "Tell me about a city.",
    "List some points.",
    "Status?",
    "Give me JSON.",
    "Once upon a time",
    "naïve 東京 🙂",
    "def add(a, b):",
]


@pytest.fixture(scope="module")
def grammars(tiny: tuple[Any, Any]) -> Grammars:
    model, tokenizer = tiny
    return Grammars(tokenizer, int(model.config.vocab_size), [tokenizer.eos_token_id])


@pytest.fixture
def engine(tiny: tuple[Any, Any]) -> Iterator[Engine]:
    model, tokenizer = tiny
    config = EngineConfig(max_num_seqs=64, kv_cache_tokens=32768, max_model_len=1024)
    runner = ModelRunner(model, num_blocks=config.num_kv_blocks, block_size=config.block_size)
    masks = MaskComputer(int(model.config.vocab_size))
    yield Engine(runner, tokenizer.backend_tokenizer, config, masks=masks)
    masks.close()
    model.set_attn_implementation("sdpa")


Submit = Callable[..., None]


@pytest.fixture
def submit(tiny: tuple[Any, Any], grammars: Grammars, engine: Engine) -> Submit:
    _, tokenizer = tiny

    def add(
        rid: str,
        payload: dict[str, Any],
        *,
        chat: bool = True,
        seed: int = 0,
        max_tokens: int = 400,
    ) -> None:
        typed: ChatPayload | CompletionPayload
        if chat:
            typed = msgspec.convert(payload, ChatPayload)
        else:
            typed = msgspec.convert(payload, CompletionPayload)
        plan = structured.plan(typed, tokenizer.chat_template)
        if isinstance(typed, ChatPayload):
            ids = chat_ids(tokenizer, plan.messages)
        else:
            ids = completion_ids(tokenizer, typed.prompt)
        constraint = grammars.constraint(plan.grammar, plan.description) if plan.grammar else None
        engine.add(
            EngineRequest(
                id=rid,
                prompt_token_ids=ids,
                max_tokens=max_tokens,
                constraint=constraint,
                params=SamplingParams(temperature=1.0, seed=seed),
                eos_token_ids=frozenset({tokenizer.eos_token_id}),
            )
        )

    return add


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def test_json_schema_outputs_always_validate(
    engine: Engine, submit: Submit, grammars: Grammars
) -> None:
    """100 requests, 4 schemas, sampled at temperature 1 from a random model."""
    for i in range(100):
        schema = SCHEMAS[i % len(SCHEMAS)]
        fmt = {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": schema, "strict": True},
        }
        submit(f"r{i}", _chat(PROMPTS[i % len(PROMPTS)], response_format=fmt), seed=i)
    outputs = run_to_end(engine)
    assert len(outputs) == 100
    for i in range(100):
        final = outputs[f"r{i}"][-1]
        assert final.finish is Status.FINISHED_STOP, (i, final.text)
        value = json.loads(final.text or "")
        jsonschema.validate(value, SCHEMAS[i % len(SCHEMAS)])
    assert grammars.compiles <= len(SCHEMAS) + 2  # compiled once per schema, then cached


def test_prefix_cache_does_not_change_constrained_output(engine: Engine, submit: Submit) -> None:
    """The same seeded, schema-constrained request twice: the second reuses the first's
    prompt blocks and produces the same text."""
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": SCHEMAS[0], "strict": True},
    }
    texts, cached = [], []
    for rid in ("first", "second"):
        submit(rid, _chat("Describe the weather today. " * 12, response_format=fmt), seed=5)
        final = run_to_end(engine)[rid][-1]
        texts.append(final.text)
        cached.append(final.num_cached_tokens)
    assert cached[0] == 0
    assert cached[1] > 0
    assert cached[1] % engine.config.block_size == 0
    assert texts[1] == texts[0]


def test_json_object_regex_and_choice(engine: Engine, submit: Submit) -> None:
    for i in range(8):
        submit(
            f"obj{i}", _chat("x", response_format={"type": "json_object"}), seed=i, max_tokens=1000
        )
        submit(
            f"re{i}",
            {
                "prompt": "Date:",
                "response_format": {"type": "regex", "regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"},
            },
            chat=False,
            seed=i,
        )
        submit(
            f"ch{i}",
            _chat("?", response_format={"type": "choice", "choices": ["yes", "no", "maybe"]}),
            seed=i,
        )
    outputs = run_to_end(engine)
    for i in range(8):
        obj = outputs[f"obj{i}"][-1]
        if obj.finish is Status.FINISHED_STOP:  # an unbounded object may hit max_tokens
            assert isinstance(json.loads(obj.text or ""), dict)
        assert outputs[f"re{i}"][-1].text is not None
        text = outputs[f"re{i}"][-1].text or ""
        assert len(text) == 10
        assert text[4] == text[7] == "-"
        assert text.replace("-", "").isdigit()
        assert outputs[f"ch{i}"][-1].text in ("yes", "no", "maybe")


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 8}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("tool_choice", ["required", "named", "single"])
def test_tool_calls_always_parse_and_validate(
    engine: Engine, submit: Submit, tool_choice: str
) -> None:
    choice: Any = {
        "required": "required",
        "single": "required",
        "named": {"type": "function", "function": {"name": "get_time"}},
    }[tool_choice]
    for i in range(10):
        submit(
            f"t{i}",
            _chat(
                "What's the weather?",
                tools=[WEATHER, TIME],
                tool_choice=choice,
                parallel_tool_calls=tool_choice != "single",
            ),
            seed=i,
        )
    outputs = run_to_end(engine)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for i in range(10):
        final = outputs[f"t{i}"][-1]
        assert final.finish is Status.FINISHED_STOP, final.text
        text, calls = structured.parse_tool_calls(final.text or "")
        assert calls
        assert text == ""
        if tool_choice == "single":
            assert len(calls) == 1
        for call in calls:
            name = call["function"]["name"]
            if tool_choice == "named":
                assert name == "get_time"
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[name])


def test_tool_choice_auto_text_or_valid_calls(engine: Engine, submit: Submit) -> None:
    for i in range(10):
        submit(f"a{i}", _chat("hi", tools=[WEATHER], tool_choice="auto"), seed=i, max_tokens=60)
    for outs in run_to_end(engine).values():
        text = outs[-1].text or ""
        if text.startswith(structured.CALL_OPEN) and outs[-1].finish is Status.FINISHED_STOP:
            _, calls = structured.parse_tool_calls(text)
            assert calls
        else:
            assert not text.startswith("<")


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}
                    },
                }
            },
            "nonsense",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "regex", "regex": "[a-"}}, "response_format.regex"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "choice", "choices": []}}, "response_format.choices"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
    ],
)
def test_invalid_schemas_and_tools_name_the_problem(
    submit: Submit, payload: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PermanentError) as info:
        submit("bad", _chat("x", **payload))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert problem in info.value.message
    # The error record names the field (the bridge's 400 `param`).
    param = "response_format.json_schema.schema" if problem == "nonsense" else problem
    assert info.value.param == param


def test_tool_call_stream_splits_calls_from_text() -> None:
    stream = structured.ToolCallStream()
    assert stream.feed('<tool_call>{"name": "f", "argu') == ("", [])
    text, calls = stream.feed(
        'ments": {"a": 1}}</tool_call><tool_call>{"name": "g", "arguments": {}}</tool_call>'
    )
    assert text == ""
    assert [
        (c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls
    ] == [(0, "f", {"a": 1}), (1, "g", {})]
    assert stream.calls[0]["id"] == calls[0]["id"]
    plain = structured.ToolCallStream()
    assert plain.feed("Hello") == ("Hello", [])


def test_tool_arguments_take_only_the_listed_properties(engine: Engine, submit: Submit) -> None:
    """A tool whose schema leaves `additionalProperties` open still gets arguments with only
    its listed keys (objects closed as in strict mode): without that, a model may add keys
    until it runs out of tokens."""
    open_tool: dict[str, Any] = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string", "maxLength": 8}},
                "required": ["q"],
            },
        },
    }
    choice = {"type": "function", "function": {"name": "lookup"}}
    for i in range(10):
        submit(f"o{i}", _chat("Look it up", tools=[open_tool], tool_choice=choice), seed=i)
    outputs = run_to_end(engine)
    for i in range(10):
        final = outputs[f"o{i}"][-1]
        assert final.finish is Status.FINISHED_STOP, final.text
        _text, calls = structured.parse_tool_calls(final.text or "")
        assert calls
        for call in calls:
            assert call["function"]["name"] == "lookup"
            assert set(json.loads(call["function"]["arguments"])) == {"q"}, call
