"""Property test of the request schema: whatever the body, the bridge never answers 5xx,
and every refusal is in OpenAI's error shape. Bounded: ~200 requests, a few seconds."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ECHO, BridgeStack

pytestmark = pytest.mark.integration

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = [
    "model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
    "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "logit_bias",
    "user", "top_k", "repetition_penalty", "ignore_eos", "stop_token_ids", "tools",
    "tool_choice", "response_format", "encoding_format", "dimensions", "echo", "best_of",
]  # fmt: skip
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]), "content": _json}
)
_value = {
    "model": st.sampled_from([ECHO, "nope", "a.b", "*", ""]) | _json,
    "messages": st.lists(_message, max_size=3) | _json,
}
_body = st.dictionaries(
    st.sampled_from(_FIELDS),
    _json,
    max_size=8,
).flatmap(
    lambda d: st.fixed_dictionaries(
        {k: _value.get(k, _json) if k in _value else st.just(v) for k, v in d.items()}
    )
)
_raw = st.binary(max_size=64) | _json.map(lambda v: json.dumps(v).encode())


@pytest.fixture(scope="module")
def http(bridge_stack: BridgeStack) -> Any:
    headers = {"Authorization": f"Bearer {bridge_stack.key}", "X-Jetserve-Timeout-S": "5"}
    with httpx.Client(base_url=bridge_stack.v1, headers=headers, timeout=15) as client:
        yield client


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}


_PATHS = st.sampled_from(["/chat/completions", "/completions", "/embeddings"])
_SETTINGS = settings(
    max_examples=70, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(path=_PATHS, body=_body)
def test_structured_bodies_never_5xx(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    _check(http.post(path, json=body))


@_SETTINGS
@given(path=_PATHS, raw=_raw)
def test_arbitrary_bytes_never_5xx(http: httpx.Client, path: str, raw: bytes) -> None:
    _check(http.post(path, content=raw, headers={"Content-Type": "application/json"}))
