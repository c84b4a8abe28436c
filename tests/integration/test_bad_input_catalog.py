# The catalog's tables keep one case a line, however long.
# ruff: noqa: E501
"""The bad-input catalog: every kind of bad input, on every way in (a NATS subject, the HTTP
API, a batch file line), each with its documented error, against real servers and worker
processes. After each case the system still serves: a request accepted before the bad input
completes (nothing accepted is lost) and a good request after it succeeds.

`CATALOG` is the whole table (docs/RELIABILITY.md lists it). Cases whose test lives in
another module name it in `covered_by`; `test_the_catalog_is_complete` checks that each
such test exists and that every other case has a test here.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from jetserve.servers import NatsServer
from producer.client import Client
from producer.errors import InvalidRequest, RequestTooLarge
from schemas import names

from ..conftest import REPO
from .conftest import ECHO, LONG_PROMPT, SLOW, BridgeStack, worker_process

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    #: The test id (`<way>-<what>`).
    id: str
    #: nats | http | batch
    way: str
    what: str
    #: The documented answer.
    expect: str
    #: `module::test` when another module tests it.
    covered_by: str | None = None


# Model names that must never become a subject token: NATS wildcards and separators, spaces,
# and unicode that looks like a valid name (full-width letters, a zero-width space, an
# right-to-left override).
TRICKY_MODELS = {
    "dot": "a.b",
    "star": "*",
    "gt": ">",
    "space": "ec ho",
    "fullwidth": "\uff45\uff43\uff48\uff4f",
    "zero-width": "ec\u200bho",
    "rtl-override": "\u202eohce",
}

_B = "tests/integration/batches/test_bad_lines.py"
_C = "tests/integration/batches/test_content_refusals.py"

CATALOG: list[Case] = [
    # ---- NATS (raw publishes to jetserve.req.<model>.online, replies on an inbox) ----
    Case("nats-malformed-json", "nats", "body is not JSON", "error.v1 invalid_request"),
    Case("nats-not-utf8", "nats", "JSON whose string is not UTF-8", "error.v1 invalid_request"),
    Case("nats-malformed-msgpack", "nats", "msgpack header, body not msgpack", "error.v1 invalid_request (msgpack)"),
    Case("nats-unknown-encoding", "nats", "Jetserve-Encoding: xml", "error.v1 invalid_request"),
    Case("nats-wrong-version", "nats", "type request.v9", "error.v1 unsupported_version"),
    Case("nats-missing-field", "nats", "no `kind`", "error.v1 invalid_request naming $.kind"),
    Case("nats-wrong-type", "nats", "max_tokens a string", "error.v1 invalid_request naming $.parameters.max_tokens"),
    Case("nats-negative-max-tokens", "nats", "max_tokens -1", "error.v1 invalid_request naming the field"),
    Case("nats-huge-max-tokens", "nats", "max_tokens 10**9", "error.v1 invalid_request naming the field"),
    Case("nats-temperature-out-of-range", "nats", "temperature 5", "error.v1 invalid_request naming the field"),
    Case("nats-top-p-out-of-range", "nats", "top_p 1.5", "error.v1 invalid_request naming the field"),
    Case("nats-unknown-parameter", "nats", "parameters.n = 2", "error.v1 invalid_request naming the field"),
    *[
        Case(f"nats-model-{k}", "nats", f"model {v!r} in the body", "error.v1 invalid_request; the client refuses it before sending")
        for k, v in TRICKY_MODELS.items()
    ],
    Case("nats-model-mismatch", "nats", "body names another model than the subject", "error.v1 model_mismatch"),
    Case("nats-bad-request-id", "nats", "id `a.b>`", "error.v1 invalid_request"),
    Case("nats-deadline-passed", "nats", "deadline_ms in the past", "error.v1 deadline_exceeded, not run"),
    Case("nats-bad-reply-subject", "nats", "Jetserve-Reply-To `x.*`, `a b`, `$JS.API...`, `jetserve.req...`", "terminated, not run, no reply", "tests/test_handler.py::test_a_reply_subject_no_one_may_publish_to_is_terminated_unrun"),
    Case("nats-unknown-model", "nats", "subject of a model without a stream", "no responders: ModelNotFound", "tests/integration/test_request_path.py::test_unknown_model"),
    Case("nats-wildcard-subject", "nats", "publish to jetserve.req.*.online", "refused by the server (no stream)", "tests/integration/test_request_path.py::test_wildcard_subject_is_refused_by_the_server"),
    Case("nats-unsupported-kind", "nats", "chat to a predict-only model", "error.v1 unsupported_kind", "tests/integration/test_request_path.py::test_unsupported_kind_is_an_error_result"),
    Case("nats-over-max-payload", "nats", "body over the server's max_payload", "RequestTooLarge before anything is stored"),
    Case("nats-over-stream-max-msg-size", "nats", "body over the stream's max_msg_size", "RequestTooLarge (JetStream 10054), nothing stored"),
    Case("nats-prompt-over-context", "nats", "prompt (or prompt + max_tokens) longer than the context", "error.v1 context_length_exceeded", "tests/integration/test_llm_worker.py::test_prompt_longer_than_the_context"),
    Case("nats-duplicate-id", "nats", "the same id (or idempotency key) twice", "stored and run once", "tests/integration/test_request_path.py::test_duplicate_publish_runs_once"),
    Case("nats-content-not-taken", "nats", "a chat image_url, input_audio or file part for a text-only model", "error.v1 invalid_request, param messages[0].content[1], not run", f"{_C}::test_nats_error_records_name_the_field"),
    Case("nats-missing-content", "nats", "a user message without content", "error.v1 invalid_request, param messages[0].content", f"{_C}::test_nats_error_records_name_the_field"),
    Case("nats-backlog-full", "nats", "publish past the backlog bound", "BacklogFull (10077), nothing stored", "tests/integration/test_request_path.py::test_backlog_bound_refuses_new_publishes"),
    # ---- HTTP (the OpenAI-compatible bridge) ----
    Case("http-malformed-json", "http", "body is not JSON", "400 invalid_request"),
    Case("http-not-utf8", "http", "JSON whose string is not UTF-8", "400 invalid_request"),
    Case("http-not-an-object", "http", "body is a JSON array", "400 invalid_request"),
    Case("http-negative-max-tokens", "http", "max_tokens -1", "400 invalid_request, param max_tokens"),
    Case("http-huge-max-tokens", "http", "max_tokens 10**9", "400 invalid_request, param max_tokens"),
    Case("http-top-p-out-of-range", "http", "top_p 2", "400 invalid_request, param top_p"),
    Case("http-n-too-large", "http", "n 1000", "400 invalid_request, param n"),
    Case("http-top-logprobs-too-large", "http", "top_logprobs 50", "400 invalid_request, param top_logprobs"),
    Case("http-too-many-stops", "http", "17 stop strings", "400 invalid_request, param stop"),
    Case("http-stream-not-bool", "http", "stream: \"yes\"", "400 invalid_request, param stream"),
    Case("http-temperature-out-of-range", "http", "temperature 5", "400 invalid_request, param temperature", "tests/integration/test_http_bridge.py::test_400_names_the_parameter"),
    Case("http-n-2", "http", "n 2", "400 invalid_request, param n", "tests/integration/test_http_bridge.py::test_400_names_the_parameter"),
    Case("http-bad-service-tier", "http", "service_tier \"turbo\", \"\", 5, a list, an object (chat and completions)", "400 invalid_request, param service_tier", "tests/integration/batches/test_service_tiers.py::test_a_bad_service_tier_is_refused_naming_the_param"),
    *[
        Case(f"http-model-{k}", "http", f"model {v!r}", "404 model_not_found, param model")
        for k, v in TRICKY_MODELS.items()
        if k in ("fullwidth", "zero-width", "rtl-override")
    ],
    Case("http-model-wildcards", "http", "model `a.b`, `*`, `>`, `has space`, 80 chars", "404 model_not_found, param model", "tests/integration/test_http_bridge.py::test_404_unknown_model"),
    Case("http-body-over-limit", "http", "body over JETSERVE_HTTP_MAX_BODY_BYTES (with and without Content-Length)", "413 request_too_large", "tests/integration/test_http_bridge.py::test_413_body_too_large"),
    Case("http-over-nats-max-payload", "http", "body under the HTTP limit, over NATS max_payload", "413 request_too_large"),
    Case("http-prompt-over-context", "http", "prompt longer than the model's context", "400 context_length_exceeded"),
    Case("http-bad-idempotency-key", "http", "Idempotency-Key with spaces, non-ASCII, 300 chars", "400 invalid_request, param Idempotency-Key"),
    Case("http-bad-timeout-header", "http", "X-Jetserve-Timeout-S abc, -1, nan", "400 invalid_request, param X-Jetserve-Timeout-S"),
    Case("http-bad-auth-scheme", "http", "Authorization: Basic ..., `Bearer` alone", "401 invalid_api_key"),
    Case("http-missing-wrong-revoked-key", "http", "no key, an unknown key, a revoked key", "401 invalid_api_key", "tests/integration/test_http_bridge.py::test_401_missing_invalid_and_revoked_keys"),
    Case("http-other-tenants-files-batches", "http", "another tenant's file and batch ids", "404", "tests/integration/batches/test_batch_api.py::test_tenants_cannot_see_each_other"),
    Case("http-other-tenants-async-webhook", "http", "another tenant's async request and webhook ids", "404", f"{_B}::test_other_tenants_async_and_webhook_ids"),
    Case("http-webhook-private-address", "http", "webhook URL on loopback, private, link-local, CGNAT, unspecified, IPv4-mapped addresses", "400 invalid_url, param url"),
    Case("http-webhook-bad-url", "http", "webhook URL ftp://, unknown event, bad secret", "400, param names the field", "tests/integration/batches/test_webhooks.py::test_registration_refusals"),
    Case("http-fuzz", "http", "arbitrary bodies and bytes (hypothesis)", "never 5xx; OpenAI error shape", "tests/integration/test_http_fuzz.py::test_structured_bodies_never_5xx"),
    Case("http-content-not-taken", "http", "an image, audio or file part for a text model (echo, the tiny LLM); Responses' input_image; the official SDK", "400 invalid_request_error, param messages[0].content[1] (Responses: input[1].content[1]), \"does not take images\"", f"{_C}::test_http_chat_refuses_a_part_the_model_does_not_take"),
    Case("http-missing-content", "http", "a user message without content (sync and async)", "400 missing_required_parameter, param messages[1].content", f"{_C}::test_a_user_message_without_content_is_refused_as_openai_does"),
    Case("http-engine-refusals", "http", "a response_format json_schema that is not a schema; prompt token ids out of range", "400 invalid_request, param response_format.json_schema.schema / prompt", f"{_C}::test_every_400_names_its_param"),
    Case("http-backlog-full", "http", "a model at its backlog bound", "429 backlog_full, Retry-After", "tests/integration/test_http_bridge.py::test_429_backlog_full_with_retry_after"),
    Case("http-database-down", "http", "any keyed request while PostgreSQL is down", "503 service_unavailable, Retry-After", "tests/integration/batches/test_batch_faults.py::test_postgres_crash_and_restart_mid_batch_completes_exactly"),
    # ---- batch file lines ----
    Case("batch-line-errors", "batch", "invalid JSON, wrong url, duplicate custom_id, unknown model, bad parameter, no body", "batch failed; errors.data per line", "tests/integration/batches/test_batch_api.py::test_line_errors_are_reported_per_line"),
    Case("batch-line-not-an-object", "batch", "a JSON array as a line", "invalid_request", f"{_B}::test_bad_line"),
    Case("batch-line-not-utf8", "batch", "bytes that are not UTF-8", "invalid_json_line", f"{_B}::test_bad_line"),
    Case("batch-line-body-not-utf8", "batch", "a body whose string is not UTF-8", "invalid_request, param body", f"{_B}::test_bad_line"),
    Case("batch-line-wrong-method", "batch", "method GET", "invalid_method, param method", f"{_B}::test_bad_line"),
    *[
        Case(f"batch-line-model-{k}", "batch", f"model {v!r}", "model_not_found, param body.model", f"{_B}::test_bad_line")
        for k, v in TRICKY_MODELS.items()
    ],
    Case("batch-line-mismatched-model", "batch", "two models in one file", "mismatched_model", f"{_B}::test_bad_line"),
    Case("batch-line-negative-max-tokens", "batch", "max_tokens -1", "invalid_request, param body.max_tokens", f"{_B}::test_bad_line"),
    Case("batch-line-n-2", "batch", "n 2", "invalid_request, param body.n", f"{_B}::test_bad_line"),
    Case("batch-line-missing-content", "batch", "a user message without content", "batch failed; missing_required_parameter, param body.messages[0].content", f"{_C}::test_batch_lines_name_the_field"),
    Case("batch-line-content-not-taken", "batch", "an image part for a text model", "the item's error line: 400, param messages[0].content[1]; the batch completes", f"{_C}::test_batch_lines_name_the_field"),
    Case("batch-empty-file", "batch", "only blank lines", "empty_file", f"{_B}::test_empty_file"),
    Case("batch-line-prompt-over-context", "batch", "prompt longer than the context", "the item's error line: 400 context_length_exceeded; the batch completes", f"{_B}::test_line_prompt_longer_than_the_context"),
    Case("batch-file-over-limits", "batch", "a file over the line or byte limit", "400 too_many_lines / 413 file_too_large while streaming, nothing stored", "tests/integration/batches/test_batch_api.py::test_upload_limits_apply_while_streaming"),
    Case("batch-create-refusals", "batch", "bad endpoint, window, file id, purpose", "400 / 404", "tests/integration/batches/test_batch_api.py::test_create_refusals"),
]  # fmt: skip

CASES = {c.id: c for c in CATALOG}


def test_the_catalog_is_complete() -> None:
    assert len(CASES) == len(CATALOG), "duplicate case ids"
    here = {name for name in globals() if name.startswith("test_")}
    tested_here = {c.id for c in CATALOG if c.covered_by is None}
    for case in CATALOG:
        if case.covered_by is None:
            continue
        path, _, test = case.covered_by.partition("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, test, None)), case.covered_by
    # Each case tested here is a parameter of a test below (its id is the parameter id).
    assert tested_here <= set(_HERE_IDS), sorted(tested_here - set(_HERE_IDS))
    assert here  # the module has its tests
    # docs/RELIABILITY.md lists every case.
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    assert [c.id for c in CATALOG if f"`{c.id}`" not in doc] == []
    ways = {w: sum(1 for c in CATALOG if c.way == w) for w in ("nats", "http", "batch")}
    print(
        f"FIGURE catalog: {len(CATALOG)} cases ({ways['nats']} NATS, {ways['http']} HTTP, "
        f"{ways['batch']} batch), {len(tested_here)} tested in this module"
    )


_HERE_IDS: list[str] = []


def cases(way: str, *prefixes: str) -> list[Any]:
    """pytest parameters for the catalog cases of `way` whose id starts with a prefix."""
    chosen = [
        c
        for c in CATALOG
        if c.way == way and c.covered_by is None and c.id.startswith(prefixes or (way,))
    ]
    _HERE_IDS.extend(c.id for c in chosen)
    return [pytest.param(c, id=c.id) for c in chosen]


# ---- NATS -------------------------------------------------------------------------------

CAT = f"cat-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def cat_worker(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A worker process (SlowModel) for the NATS cases; yields its completion record."""
    logs = tmp_path_factory.mktemp("catalog")
    record = logs / "runs.txt"
    args = ["--class", "tests.models:SlowModel", f"--option=record={record}"]
    with worker_process(nats_server.url, CAT, args, logs / "worker.log") as proc:
        yield record
        assert proc.poll() is None, "the worker died during the catalog"


@asynccontextmanager
async def keeps_serving(nc: NATS, model: str = CAT) -> AsyncIterator[None]:
    """A request accepted before the bad input completes; a good one after it succeeds."""
    client = Client(nc)
    before = asyncio.create_task(client.request(model, "predict", {"sleep_s": 0.3}, timeout_s=30))
    await asyncio.sleep(0.05)
    yield
    assert (await before).output == {"sleep_s": 0.3}
    after = await client.request(model, "predict", {"after": True}, timeout_s=30)
    assert after.output == {"after": True}
    await client.close()


def request_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "request.v1",
        "id": f"bad-{uuid.uuid4().hex[:8]}",
        "model": CAT,
        "kind": "predict",
        "payload": {"x": 1},
    }
    body.update(fields)
    return body


async def publish_raw(
    nc: NATS, data: bytes, headers: dict[str, str] | None = None, model: str = CAT
) -> dict[str, Any]:
    """Publish bytes (JetStream) as a request of `model`; the error reply, decoded."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.jetstream().publish(
            names.request_subject(model),
            data,
            headers={"Jetserve-Reply-To": inbox, **(headers or {})},
        )
        msg = await sub.next_msg(timeout=15)
    finally:
        await sub.unsubscribe()
    if (headers or {}).get("Jetserve-Encoding") == "msgpack":
        return dict(msgspec.msgpack.decode(msg.data))
    return dict(json.loads(msg.data))


_NATS_BODIES: dict[str, tuple[bytes, dict[str, str], str, str | None]] = {
    # id -> (data, headers, expected code, text the message must contain)
    "nats-malformed-json": (b'{"type": "request.v1", "id": ', {}, "invalid_request", "malformed"),
    "nats-not-utf8": (b'{"type": "request.v1", "id": "u8", "model": "' + CAT.encode() + b'", "kind": "predict", "payload": "\xff"}', {}, "invalid_request", "UTF-8"),
    "nats-malformed-msgpack": (b"\xc1\xff\x00", {"Jetserve-Encoding": "msgpack"}, "invalid_request", "malformed"),
    "nats-unknown-encoding": (json.dumps(request_body()).encode(), {"Jetserve-Encoding": "xml"}, "invalid_request", "xml"),
    "nats-wrong-version": (json.dumps(request_body(type="request.v9")).encode(), {}, "unsupported_version", "$.type"),
    "nats-missing-field": (json.dumps({k: v for k, v in request_body().items() if k != "kind"}).encode(), {}, "invalid_request", "kind"),
    "nats-wrong-type": (json.dumps(request_body(parameters={"max_tokens": "ten"})).encode(), {}, "invalid_request", "$.parameters.max_tokens"),
    "nats-negative-max-tokens": (json.dumps(request_body(parameters={"max_tokens": -1})).encode(), {}, "invalid_request", "$.parameters.max_tokens"),
    "nats-huge-max-tokens": (json.dumps(request_body(parameters={"max_tokens": 10**9})).encode(), {}, "invalid_request", "$.parameters.max_tokens"),
    "nats-temperature-out-of-range": (json.dumps(request_body(parameters={"temperature": 5})).encode(), {}, "invalid_request", "$.parameters.temperature"),
    "nats-top-p-out-of-range": (json.dumps(request_body(parameters={"top_p": 1.5})).encode(), {}, "invalid_request", "$.parameters.top_p"),
    "nats-unknown-parameter": (json.dumps(request_body(parameters={"n": 2})).encode(), {}, "invalid_request", "n"),
    **{
        f"nats-model-{k}": (json.dumps(request_body(model=v)).encode(), {}, "invalid_request", "$.model")
        for k, v in TRICKY_MODELS.items()
    },
    "nats-model-mismatch": (json.dumps(request_body(model="some-other-model")).encode(), {}, "model_mismatch", "some-other-model"),
    "nats-bad-request-id": (json.dumps(request_body(id="a.b>")).encode(), {}, "invalid_request", "$.id"),
    "nats-deadline-passed": (json.dumps(request_body(deadline_ms=int(time.time() * 1000) - 1000)).encode(), {}, "deadline_exceeded", "deadline"),
}  # fmt: skip


@pytest.mark.parametrize("case", cases("nats", *_NATS_BODIES))
async def test_nats_bad_message(case: Case, nc: NATS, cat_worker: Path) -> None:
    data, headers, code, text = _NATS_BODIES[case.id]
    async with keeps_serving(nc):
        reply = await publish_raw(nc, data, headers)
    assert reply["type"] == "error.v1"
    assert reply["code"] == code, reply
    assert reply["retryable"] is False
    if text:
        assert text in reply["message"], reply
    # Refused before running: the model never saw it.
    text_ = await asyncio.to_thread(cat_worker.read_text)
    ran = {line.split()[0] for line in text_.splitlines()}
    assert reply["id"] not in ran


@pytest.mark.parametrize("model", list(TRICKY_MODELS.values()), ids=list(TRICKY_MODELS))
async def test_nats_client_refuses_tricky_model_names_before_sending(nc: NATS, model: str) -> None:
    client = Client(nc)
    with pytest.raises(InvalidRequest, match="model"):
        await client.request(model, "predict", 1, timeout_s=1)
    with pytest.raises(names.InvalidName):
        names.request_subject(model)


@pytest.mark.parametrize("case", cases("nats", "nats-over-"))
async def test_nats_payload_over_the_limits(
    case: Case, own_nats_small: NatsServer, inproc_worker: Any
) -> None:
    """A server with max_payload 64 KiB, a stream with max_msg_size 32 KiB."""
    model = f"t-{uuid.uuid4().hex[:8]}"
    await inproc_worker(model, nats_url=own_nats_small.url, max_msg_bytes=32 * 1024)
    nc = await nats.connect(own_nats_small.url)
    client = Client(nc)
    size = 70_000 if case.id == "nats-over-max-payload" else 40_000
    with pytest.raises(RequestTooLarge) as info:
        await client.request(model, "predict", {"x": "a" * size}, timeout_s=5)
    assert "larger than" in info.value.message
    info_ = await nc.jetstream().stream_info(names.stream_name(model))
    assert info_.state.messages == 0  # nothing stored
    assert (await client.request(model, "predict", {"x": "fine"}, timeout_s=10)).output == {
        "x": "fine"
    }
    assert nc.is_connected
    await nc.close()


@pytest.fixture
def own_nats_small(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "store", max_payload=64 * 1024).start()
    yield server
    server.stop()


# ---- HTTP -------------------------------------------------------------------------------


@contextmanager
def http_keeps_serving(stack: BridgeStack) -> Iterator[httpx.Client]:
    """A request in flight before the bad input completes; a good one after it succeeds."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    with (
        httpx.Client(base_url=stack.v1, headers=headers, timeout=30) as http,
        ThreadPoolExecutor(1) as pool,
    ):

        def slow() -> httpx.Response:
            return http.post(
                "/chat/completions", json={"model": SLOW, "messages": user("sleep 0.3")}
            )

        before = pool.submit(slow)
        time.sleep(0.05)
        yield http
        first = before.result(30)
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == "slept 0.3"
        after = http.post("/chat/completions", json={"model": ECHO, "messages": user("after")})
        assert after.status_code == 200, after.text


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def check_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error


_CHAT = {"model": ECHO, "messages": user("x")}
_HTTP_BODIES: dict[str, tuple[bytes, int, str, str | None]] = {
    "http-malformed-json": (b'{"model": "x", ', 400, "invalid_request", None),
    "http-not-utf8": (b'{"model": "\xff", "messages": []}', 400, "invalid_request", None),
    "http-not-an-object": (b"[1, 2, 3]", 400, "invalid_request", None),
    "http-negative-max-tokens": (json.dumps({**_CHAT, "max_tokens": -1}).encode(), 400, "invalid_request", "max_tokens"),
    "http-huge-max-tokens": (json.dumps({**_CHAT, "max_tokens": 10**9}).encode(), 400, "invalid_request", "max_tokens"),
    "http-top-p-out-of-range": (json.dumps({**_CHAT, "top_p": 2}).encode(), 400, "invalid_request", "top_p"),
    "http-n-too-large": (json.dumps({**_CHAT, "n": 1000}).encode(), 400, "invalid_request", "n"),
    "http-top-logprobs-too-large": (json.dumps({**_CHAT, "logprobs": True, "top_logprobs": 50}).encode(), 400, "invalid_request", "top_logprobs"),
    "http-too-many-stops": (json.dumps({**_CHAT, "stop": [f"s{i}" for i in range(17)]}).encode(), 400, "invalid_request", "stop"),
    "http-stream-not-bool": (json.dumps({**_CHAT, "stream": "yes"}).encode(), 400, "invalid_request", "stream"),
    **{
        f"http-model-{k}": (json.dumps({**_CHAT, "model": v}).encode(), 404, "model_not_found", "model")
        for k, v in TRICKY_MODELS.items()
    },
}  # fmt: skip


@pytest.mark.parametrize("case", cases("http", *_HTTP_BODIES))
def test_http_bad_body(case: Case, bridge_stack: BridgeStack) -> None:
    body, status, code, param = _HTTP_BODIES[case.id]
    with http_keeps_serving(bridge_stack) as http:
        response = http.post(
            "/chat/completions", content=body, headers={"Content-Type": "application/json"}
        )
    check_error(response, status, code, param)


@pytest.mark.parametrize("case", cases("http", "http-bad-idempotency-key"))
@pytest.mark.parametrize("key", ["has space", "caf\u00e9", "k" * 300])
def test_http_bad_idempotency_key(case: Case, key: str, bridge_stack: BridgeStack) -> None:
    with http_keeps_serving(bridge_stack) as http:
        response = http.post(
            "/chat/completions",
            json=_CHAT,
            headers={b"Idempotency-Key": key.encode()},
        )
    check_error(response, 400, "invalid_request", "Idempotency-Key")


@pytest.mark.parametrize("case", cases("http", "http-bad-timeout-header"))
@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan"])
def test_http_bad_timeout_header(case: Case, value: str, bridge_stack: BridgeStack) -> None:
    with http_keeps_serving(bridge_stack) as http:
        response = http.post(
            "/chat/completions", json=_CHAT, headers={"X-Jetserve-Timeout-S": value}
        )
    check_error(response, 400, "invalid_request", "X-Jetserve-Timeout-S")


@pytest.mark.parametrize("case", cases("http", "http-bad-auth-scheme"))
@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "js-no-scheme", "Bearer  js-"])
def test_http_bad_auth_scheme(case: Case, header: str, bridge_stack: BridgeStack) -> None:
    with http_keeps_serving(bridge_stack):
        response = httpx.post(
            f"{bridge_stack.v1}/chat/completions",
            json=_CHAT,
            headers={"Authorization": header},
            timeout=30,
        )
    check_error(response, 401, "invalid_api_key")


PRIVATE_URLS = [
    "http://127.0.0.1:9/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://172.16.5.4/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[::1]/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
]


@pytest.mark.parametrize("case", cases("http", "http-webhook-private-address"))
@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_http_webhook_on_a_private_address(case: Case, url: str, bridge_stack: BridgeStack) -> None:
    """The bridge of `bridge_stack` runs with JETSERVE_WEBHOOKS_ALLOW_PRIVATE unset. Only IP
    literals and `localhost` here: nothing is looked up outside this machine."""
    with http_keeps_serving(bridge_stack) as http:
        response = http.post("/webhooks", json={"url": url})
    check_error(response, 400, "invalid_url", "url")
    assert "internal address" in response.json()["error"]["message"]


@pytest.mark.parametrize("case", cases("http", "http-over-nats-max-payload"))
async def test_http_body_over_the_nats_max_payload(
    case: Case, own_nats_small: NatsServer, inproc_worker: Any, bridge_on: Callable[..., str]
) -> None:
    model = f"t-{uuid.uuid4().hex[:8]}"
    await inproc_worker(model, nats_url=own_nats_small.url)
    url = bridge_on(own_nats_small.url, JETSERVE_HTTP_MAX_BODY_BYTES=str(1024 * 1024))
    async with httpx.AsyncClient(base_url=f"{url}/v1", timeout=30) as http:
        big = await http.post(
            "/chat/completions", json={"model": model, "messages": user("y" * 100_000)}
        )
        check_error(big, 413, "request_too_large")
        ok = await http.post("/chat/completions", json={"model": model, "messages": user("ok")})
        assert ok.status_code == 200, ok.text


# ---- the tiny LLM, for prompts longer than the context -----------------------------------


@pytest.mark.parametrize("case", cases("http", "http-prompt-over-context"))
def test_http_prompt_longer_than_the_context(
    case: Case, bridge_stack: BridgeStack, llm_worker: str
) -> None:
    with http_keeps_serving(bridge_stack) as http:
        response = http.post(
            "/chat/completions", json={"model": llm_worker, "messages": user(LONG_PROMPT)}
        )
        check_error(response, 400, "context_length_exceeded")
        fits = http.post(
            "/chat/completions",
            json={"model": llm_worker, "messages": user("hi"), "max_tokens": 4},
        )
        assert fits.status_code == 200, fits.text
