"""The scheduler's conversion of KServe's endpoints (batch lines, async requests): which
urls are KServe's, the queue request made of a body, and the bodies of results and errors."""

from __future__ import annotations

import json

import msgspec
import pytest

from jetserve.openai_codec import OpenAICodec
from scheduler.codec import Envelope, Reply
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, InferenceRequest
from schemas.names import Priority
from schemas.openai_errors import ApiError

codec = OpenAICodec()
V2 = "/v2/models/iris/infer"
V1 = "/v1/models/iris:predict"


def _request(endpoint: str, body: bytes) -> InferenceRequest:
    return codec.request(endpoint, body, Envelope("r1", "t", Priority.BATCH, deadline_ms=5))


def test_which_endpoints_are_accepted() -> None:
    assert {"/v2/models/{name}/infer", "/v1/models/{name}:predict"} <= codec.endpoints
    for endpoint in (V2, V1, "/v1/chat/completions", "/v2/models/a-b_1/infer"):
        assert codec.accepts(endpoint), endpoint
    for endpoint in (
        "/v2/models/iris/infer/x",
        "/v2/models//infer",
        "/v2/models/bad name/infer",
        "/v2/models/a.b/infer",
        "/v1/models/iris:explain",
        "/v1/models/iris",
        "/v1/async/chat/completions",
    ):
        assert not codec.accepts(endpoint), endpoint
    assert codec.model_param(V2) == codec.model_param(V1) == "url"
    assert codec.model_param("/v1/embeddings") == "body.model"


def test_v2_body_goes_on_the_queue_as_it_came() -> None:
    body = b'{"inputs":[{"name":"input-0","shape":[1,2],"datatype":"FP64","data":[1,2]}]}'
    request = _request(V2, body)
    assert (request.model, request.kind, request.priority) == ("iris", "predict", Priority.BATCH)
    assert (request.id, request.tenant, request.deadline_ms) == ("r1", "t", 5)
    wire = json.loads(msgspec.json.encode(request))
    assert wire["payload"] == json.loads(body)


def test_v1_body_becomes_instances() -> None:
    request = _request(V1, b'{"inputs": [[1, 2]]}')
    assert request.payload == {"instances": [[1, 2]]}
    with pytest.raises(ApiError) as err:
        _request(V1, b"{}")
    assert (err.value.status, err.value.param) == (400, "instances")
    with pytest.raises(ApiError) as err:
        _request(V2, b"[1]")
    assert err.value.status == 400


def test_results_and_errors_as_the_routes_answer() -> None:
    output = {"model_name": "iris", "outputs": [{"name": "o", "shape": [1], "datatype": "FP64"}]}
    result = FinalResult(id="r1", model="iris", output=output)
    status, body = codec.response(V2, Reply("r1", result, 0, {}))
    assert (status, json.loads(body)) == (200, output)
    error = ErrorResult(id="r1", code=ErrorCode.INVALID_REQUEST, message="input `x`: bad")
    status, body = codec.response(V2, Reply("r1", error, 0, {}))
    assert (status, json.loads(body)) == (400, {"error": "input `x`: bad"})
    status, body = codec.response(V1, Reply("r1", error, 0, {}))
    assert status == 400
    assert json.loads(body)["error"]["message"] == "input `x`: bad"
    status, body = codec.response("/v1/chat/completions", Reply("r1", error, 0, {}))
    assert json.loads(body)["error"]["code"] == "invalid_request"
