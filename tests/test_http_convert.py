"""Pure tests of the bridge's conversion, error mapping, auth cache and settings."""

from __future__ import annotations

import base64
import struct

import msgspec
import pytest

from producer.http import convert, responses_convert
from producer.http import openai_types as oa
from producer.http.auth import CachedAuthenticator, Principal, bearer_token
from producer.http.config import AuthMode, BridgeConfig
from producer.http.errors import ApiError, from_decode_error, from_error_result
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, PromptTokensDetails, Usage
from schemas.settings import ConfigError

FIELDS = {"id": "r1", "tenant": "t", "created_ms": 1, "deadline_ms": 2, "idempotency_key": None}


def chat(**body: object) -> oa.ChatCompletionRequest:
    base = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    return msgspec.json.decode(msgspec.json.encode({**base, **body}), type=oa.ChatCompletionRequest)


def test_chat_parameters_map_onto_the_wire_request() -> None:
    body = chat(
        max_completion_tokens=7,
        temperature=0,
        top_p=0.5,
        stop="END",
        seed=3,
        top_k=-1,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        tools=[{"type": "function"}],
        unknown_new_field=1,
    )
    request = convert.chat_request(body, **FIELDS)
    p = request.parameters
    assert (p.max_tokens, p.temperature, p.top_p, p.stop, p.seed, p.top_k) == (
        7, 0.0, 0.5, ["END"], 3, 0
    )  # fmt: skip
    assert (p.logprobs, p.top_logprobs, request.stream, request.kind) == (True, 2, True, "chat")
    assert request.payload.tools == [{"type": "function"}]
    # The wire request is valid by the wire schema's own rules.
    from schemas.codec import decode_request, encode
    from schemas.payloads import typed_payload

    decoded = decode_request(encode(request))
    assert decoded.parameters == request.parameters
    assert typed_payload(decoded) == request.payload


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logit_bias": {"1": 1}}, "logit_bias"),
        ({"top_logprobs": 1}, "top_logprobs"),
    ],
)
def test_unsupported_chat_parameters_are_refused_by_name(
    body: dict[str, object], param: str
) -> None:
    with pytest.raises(ApiError) as info:
        convert.chat_request(chat(**body), **FIELDS)
    assert (info.value.status, info.value.param) == (400, param)


@pytest.mark.parametrize("model", ["a.b", "*", ">", "a b", "", "x" * 65])
def test_names_that_cannot_be_subjects_are_404(model: str) -> None:
    with pytest.raises(ApiError) as info:
        convert.check_model(model)
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "m", "messages": [], "temperature": 3}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user"}], "temperature": 3}', "temperature"),
        (b'{"messages": [{"role": "user"}]}', "model"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b"{not json", None),
    ],
)
def test_decode_errors_name_the_parameter(raw: bytes, param: str | None) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.json.decode(raw, type=oa.ChatCompletionRequest)
    error = from_decode_error(info.value)
    assert (error.status, error.param) == (400, param)


def test_prompt_and_embedding_inputs() -> None:
    def completion(prompt: object) -> oa.CompletionRequest:
        return msgspec.convert({"model": "m", "prompt": prompt}, oa.CompletionRequest)

    assert convert.completion_request(completion([1, 2]), **FIELDS).payload.prompt == [1, 2]
    assert convert.completion_request(completion(["one"]), **FIELDS).payload.prompt == "one"
    with pytest.raises(ApiError):
        convert.completion_request(completion(["a", "b"]), **FIELDS)
    emb = msgspec.convert({"model": "m", "input": [[1, 2]]}, oa.EmbeddingRequest)
    with pytest.raises(ApiError) as info:
        convert.embedding_request(emb, **FIELDS)
    assert info.value.param == "input"


def test_results_in_openai_shapes() -> None:
    result = FinalResult(
        id="r1", model="m", output={"text": "hey"}, finish_reason="deadline", usage=Usage(1, 2, 3)
    )
    body = msgspec.to_builtins(convert.chat_response(result, "chatcmpl-r1", 5))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hey"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    emb = FinalResult(id="r", model="m", output={"embeddings": [[0.5, -1.0]]})
    encoded = convert.embedding_response(emb, "base64").data[0].embedding
    assert isinstance(encoded, str)
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -1.0)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.CONTEXT_LENGTH_EXCEEDED, 400),
        (ErrorCode.UNSUPPORTED_KIND, 400),
        (ErrorCode.DEADLINE_EXCEEDED, 504),
        (ErrorCode.DEAD_LETTERED, 500),
        (ErrorCode.INVALID_REQUEST, 400),
    ],
)
def test_worker_errors_map_to_statuses(code: ErrorCode, status: int) -> None:
    error = from_error_result(ErrorResult(id="r", code=code, message="m"))
    assert (error.status, error.code) == (status, code.value)
    body = msgspec.json.decode(error.body())
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_key_cache_remembers_hits_and_misses_for_its_ttl() -> None:
    calls: list[str] = []
    now = [0.0]

    async def lookup(token: str) -> Principal | None:
        calls.append(token)
        return Principal("t", "k") if token == "good" else None

    auth = CachedAuthenticator(lookup, ttl_s=10, clock=lambda: now[0])
    assert await auth.authenticate("good") == Principal("t", "k")
    assert await auth.authenticate("good") == Principal("t", "k")
    assert await auth.authenticate("bad") is None
    assert await auth.authenticate("bad") is None
    assert calls == ["good", "bad"]
    now[0] = 11  # past the TTL: asked again (a revoked key stops working)
    await auth.authenticate("good")
    assert calls == ["good", "bad", "good"]
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None


async def test_unknown_keys_cannot_push_verified_keys_out_of_the_cache() -> None:
    """Before, refused keys shared the LRU with verified ones: a flood of made-up keys evicted
    every tenant's key, and each of their next requests cost a database query."""
    calls: list[str] = []

    async def lookup(token: str) -> Principal | None:
        calls.append(token)
        return Principal("t", "k") if token == "good" else None

    auth = CachedAuthenticator(lookup, ttl_s=60, max_entries=100)
    assert await auth.authenticate("good") == Principal("t", "k")
    for i in range(1000):
        assert await auth.authenticate(f"made-up-{i}") is None
    assert await auth.authenticate("good") == Principal("t", "k")
    assert calls.count("good") == 1
    assert await auth.authenticate("made-up-999") is None  # a repeated one: from memory
    assert len(calls) == 1001


async def test_a_string_that_cannot_be_a_key_costs_no_query() -> None:
    class NoDatabase:
        async def fetchrow(self, *args: object) -> None:
            raise AssertionError("queried")

    from scheduler.store.keys import lookup_key

    for secret in ("js-short", "js-" + "a" * 44, "js-" + "a" * 42 + "!", "xx-" + "a" * 43):
        assert await lookup_key(NoDatabase(), secret) is None


def test_config_from_env() -> None:
    with pytest.raises(ConfigError, match="JETSERVE_DATABASE_URL"):
        BridgeConfig.from_env({})
    with pytest.raises(ConfigError, match="JETSERVE_AUTH"):
        BridgeConfig.from_env({"JETSERVE_AUTH": "maybe"})
    config = BridgeConfig.from_env({"JETSERVE_AUTH": "off", "JETSERVE_HTTP_TIMEOUT_S": "5"})
    assert (config.auth, config.timeout_s) == (AuthMode.OFF, 5.0)


def test_every_process_reads_one_duplicate_window() -> None:
    """The bridge keeps idempotent results as long as the streams de-duplicate: one setting."""
    from scheduler.config import SchedulerConfig
    from workers.config import WorkerConfig

    env = {"JETSERVE_AUTH": "off", "JETSERVE_DATABASE_URL": "postgresql://db/x"}
    defaults = (
        BridgeConfig.from_env(env).duplicate_window_s,
        WorkerConfig.from_env(env).queue.duplicate_window_s,
        SchedulerConfig.from_env(env).duplicate_window_s,
    )
    assert defaults == (120.0, 120.0, 120.0)
    env["JETSERVE_DUPLICATE_WINDOW_S"] = "30"
    assert BridgeConfig.from_env(env).duplicate_window_s == 30.0
    assert WorkerConfig.from_env(env).queue.duplicate_window_s == 30.0
    assert SchedulerConfig.from_env(env).duplicate_window_s == 30.0
    env["JETSERVE_DUPLICATE_WINDOW_S"] = "0.5"
    with pytest.raises(ConfigError, match="JETSERVE_DUPLICATE_WINDOW_S"):
        WorkerConfig.from_env(env)


def test_cached_prompt_tokens_are_reported_as_openai_does() -> None:
    usage = Usage(40, 2, 42, PromptTokensDetails(cached_tokens=32))
    result = FinalResult(id="r1", model="m", output={"text": "hey"}, usage=usage)
    expected = {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 32},
    }
    for response in (convert.chat_response, convert.completion_response):
        assert msgspec.to_builtins(response(result, "id", 5))["usage"] == expected
    # The Responses API's shape of the same.
    usage_r = responses_convert.usage(result)
    assert (usage_r.input_tokens, usage_r.input_tokens_details.cached_tokens) == (40, 32)
    # A result from a worker that predates the field decodes, and reports no details.
    old = b'{"type":"result.v1","id":"r","model":"m","output":{"text":"x"},"finish_reason":"stop",'
    old += b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
    decoded = msgspec.json.decode(old, type=FinalResult)
    assert decoded.usage.prompt_tokens_details is None
    assert "prompt_tokens_details" not in msgspec.to_builtins(convert.usage(decoded))


def test_prompt_cache_key_is_accepted() -> None:
    assert chat(prompt_cache_key="app-1").prompt_cache_key == "app-1"
    with pytest.raises(msgspec.ValidationError, match="prompt_cache_key"):
        chat(prompt_cache_key="k" * 2000)
