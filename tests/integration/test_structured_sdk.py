"""Structured output and tool calling with the real SmolLM2-135M-Instruct, through the
official openai SDK, a real bridge and a real engine worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from jetserve.servers import NatsServer, free_port

from ..conftest import REPO, child_env

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "sdk-smollm2"
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def sdk(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    logs = tmp_path_factory.mktemp("structured")
    models = logs / "models.toml"
    models.write_text(
        f'[[models]]\nname = "{MODEL}"\nengine = "llm"\npath = "builtin:smollm2"\n'
        "capacity = 8\n[models.options]\nkv_cache_mib = 256\nmax_model_len = 2048\n"
    )
    env = child_env(nats_server.url, JETSERVE_AUTH="off")
    port = free_port()
    procs = [
        _spawn(
            ["worker", "--model", MODEL, "--models-file", str(models)], env, logs / "worker.log"
        ),
        _spawn(["bridge", "--port", str(port)], env, logs / "bridge.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, procs, 300)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        yield client
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


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
    end = time.monotonic() + timeout_s  # the first start converts the GGUF model once
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
    raise TimeoutError("bridge and SmolLM2 worker not ready")


def test_weather_tool_call_round_trip(sdk: Any) -> None:
    first = sdk.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    assert args["city"] == "Paris"

    # The caller runs the function and sends the result back, as a `tool` message.
    result = {"city": args["city"], "temperature_c": 22, "conditions": "sunny"}
    follow_up: list[Any] = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    second = sdk.chat.completions.create(
        model=MODEL,
        messages=follow_up,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    answer = second.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content
    assert answer.finish_reason in ("stop", "length")


def test_streamed_tool_call_deltas(sdk: Any) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        temperature=0,
    )
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function and delta.function.name:
                    entry["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    entry["arguments"] += delta.function.arguments
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert "city" in json.loads(calls[0]["arguments"])
    assert reasons[-1] == "tool_calls"


def test_json_schema_strict(sdk: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    out = sdk.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=60,
        messages=[{"role": "user", "content": "Give me a person as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    value = json.loads(out.choices[0].message.content or "")
    jsonschema.validate(value, {**schema, "additionalProperties": False})


def test_invalid_schema_is_a_400_naming_the_problem(sdk: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "bad",
                    "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}},
                },
            },
        )
    assert "nonsense" in str(info.value)
