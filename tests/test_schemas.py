from __future__ import annotations

import msgspec
import pytest

from schemas import codec, names
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult, FinalResult, InferenceRequest, StreamChunk, Usage
from schemas.names import Encoding, InvalidName, Priority
from schemas.payloads import ChatPayload, CompletionPayload, typed_payload


def _request(**fields: object) -> bytes:
    body = {"type": "request.v1", "id": "r1", "model": "echo", "kind": "predict", "payload": 1}
    body.update(fields)
    return msgspec.json.encode(body)


def test_request_json_round_trip() -> None:
    req = codec.decode_request(_request(parameters={"temperature": 0, "max_tokens": 5}))
    assert req.parameters.temperature == 0
    assert req.priority is Priority.ONLINE
    assert codec.decode_request(codec.encode(req)) == req


def test_request_msgpack_round_trip() -> None:
    req = codec.decode_request(_request(stream=True, tenant="acme"))
    data = codec.encode(req, Encoding.MSGPACK)
    assert codec.decode_request(data, Encoding.MSGPACK) == req


def test_missing_type_tag_means_current_version() -> None:
    body = msgspec.json.decode(_request())
    del body["type"]
    assert codec.decode_request(msgspec.json.encode(body)).id == "r1"


def test_wrong_schema_version_is_rejected_at_type() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.type"):
        codec.decode_request(_request(type="request.v9"))


@pytest.mark.parametrize(
    "model",
    ["a.b", "*", ">", "a b", "a\tb", "", "\uff45cho", "é", "a*", "x" * 65, "-lead", "a\u200bb"],
)
def test_bad_model_names_never_become_subject_tokens(model: str) -> None:
    with pytest.raises(InvalidName):
        names.validate_model_name(model)
    with pytest.raises(InvalidName):
        names.request_subject(model)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.model"):
        codec.decode_request(_request(model=model))


@pytest.mark.parametrize("request_id", ["a.b", "a>", "*", "a b", "", "x" * 129])
def test_bad_request_ids(request_id: str) -> None:
    with pytest.raises(InvalidName):
        names.cancel_subject("echo", request_id)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.id"):
        codec.decode_request(_request(id=request_id))


def test_subject_layout() -> None:
    assert names.request_subject("m1", Priority.BATCH) == "jetserve.req.m1.batch"
    assert names.request_subjects("m1") == [
        "jetserve.req.m1.priority",
        "jetserve.req.m1.priority.>",
        "jetserve.req.m1.online",
        "jetserve.req.m1.online.>",
        "jetserve.req.m1.batch",
        "jetserve.req.m1.batch.>",
    ]
    assert names.stream_name("m1") == "jetserve-req-m1"
    assert names.model_from_request_subject("jetserve.req.m1.online") == "m1"
    # A tenant's own subject: the tenant is the rest of it (tenant names may hold dots).
    own = names.tenant_request_subject("m1", "acme.eu", Priority.BATCH)
    assert own == "jetserve.req.m1.batch.acme.eu"
    assert names.model_from_request_subject(own) == "m1"
    assert names.tenant_of_request_subject(own) == "acme.eu"
    assert names.tenant_of_request_subject("jetserve.req.m1.online") is None
    for bad in ("a..b", "a.", ".a", "a*", "a>", "a b", ""):
        with pytest.raises(InvalidName):
            names.tenant_request_subject("m1", bad)
    assert names.cancel_subject("m1", "abc") == "jetserve.cancel.m1.abc"
    assert names.is_durable_reply(names.results_subject("batch", "b1"))
    assert not names.is_durable_reply("_INBOX.x.y")
    # A background response's event log: durable, keeps chunks, a worker may reply there.
    log = names.response_events_subject("r1")
    assert log == "jetserve.revents.r1"
    assert names.async_reply_subject("r1", events=True) == log
    assert names.async_reply_subject("r1", events=False) == "jetserve.results.async.r1"
    assert names.is_durable_reply(log)
    assert names.keeps_chunks(log)
    assert not names.keeps_chunks(names.results_subject("async", "r1"))
    assert names.validate_reply_subject(log) == log
    assert names.request_of_events_subject(log) == "r1"
    assert names.request_of_events_subject("jetserve.revents.a.b") is None
    assert names.request_of_events_subject(names.results_subject("async", "r1")) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -1),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 10**9),
        ("top_p", 0),
        ("top_k", -1),
        ("top_logprobs", 50),
        ("presence_penalty", 3),
        ("stop", ["a"] * 17),
        ("bogus", 1),
    ],
)
def test_invalid_parameters_name_the_field(field: str, value: object) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.parameters"):
        codec.decode_request(_request(parameters={field: value}))


def test_replies_decode_by_tag() -> None:
    chunk = StreamChunk(id="r", seq=0, delta="hé")
    final = FinalResult(
        id="r", model="m", output={"text": "x"}, finish_reason="stop", usage=Usage(1, 2, 3)
    )
    error = ErrorResult(id="r", code=ErrorCode.CANCELLED, message="gone")
    for msg in (chunk, final, error):
        for enc in Encoding:
            assert codec.decode_reply(codec.encode(msg, enc), enc) == msg


def test_encoding_header() -> None:
    assert codec.encoding_of(None) is Encoding.JSON
    assert codec.encoding_of({"Jetserve-Encoding": "msgpack"}) is Encoding.MSGPACK
    with pytest.raises(msgspec.ValidationError, match="Jetserve-Encoding"):
        codec.encoding_of({"Jetserve-Encoding": "xml"})


def test_typed_payload_by_kind() -> None:
    chat = InferenceRequest(
        id="a", model="m", kind="chat", payload={"messages": [{"role": "user", "content": "hi"}]}
    )
    typed = typed_payload(chat)
    assert isinstance(typed, ChatPayload)
    assert typed.messages[0].text() == "hi"
    comp = InferenceRequest(id="a", model="m", kind="completion", payload={"prompt": [1, 2]})
    assert typed_payload(comp) == CompletionPayload(prompt=[1, 2])
    bad = InferenceRequest(id="a", model="m", kind="chat", payload={"messages": []})
    with pytest.raises(msgspec.ValidationError, match=r"\$\.payload\.messages"):
        typed_payload(bad)
    assert typed_payload(InferenceRequest(id="a", model="m", kind="predict", payload=[1])) == [1]
