"""The official `openai` SDK's Files and Batches calls against a real bridge, scheduler, echo
worker, NATS and PostgreSQL: the whole flow, line errors, paging, tenants, limits."""

from __future__ import annotations

import io
import json

import httpx
import openai
import pytest

from .conftest import ECHO, MAX_FILE_LINES, BatchStack, chat_line, jsonl, read_lines, wait_batch

pytestmark = pytest.mark.integration


def test_sdk_batch_flow_results_match_by_custom_id(batch_stack: BatchStack) -> None:
    client = batch_stack.sdk()
    lines = [chat_line(f"req-{i}", ECHO, f"hello number {i}") for i in range(200)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert uploaded.object == "file"
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == len(jsonl(lines))
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
    assert client.files.content(uploaded.id).content == jsonl(lines)
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "test"},
    )
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert batch.metadata == {"purpose": "test"}
    assert batch.expires_at is not None
    assert batch.expires_at - batch.created_at == 24 * 3600
    done = wait_batch(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (200, 200)
    assert done.request_counts.failed == 0
    assert done.in_progress_at
    assert done.finalizing_at
    assert done.completed_at
    assert done.error_file_id is None
    out = read_lines(client, done.output_file_id)
    assert len(out) == 200
    by_id = {line["custom_id"]: line for line in out}
    assert len(by_id) == 200
    for i in range(200):
        line = by_id[f"req-{i}"]
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        assert response["request_id"] == line["id"]
        body = response["body"]
        # The same JSON as POST /v1/chat/completions returns.
        assert body["object"] == "chat.completion"
        assert body["id"] == "chatcmpl-" + line["id"]
        assert body["model"] == ECHO
        assert body["choices"][0]["message"] == {
            "role": "assistant",
            "content": f"hello number {i}",
        }
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["total_tokens"] == 6
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    listed = client.batches.list(limit=100)
    assert batch.id in [b.id for b in listed.data]


def test_line_errors_are_reported_per_line(batch_stack: BatchStack) -> None:
    client = batch_stack.sdk()
    content = jsonl(
        [
            chat_line("ok-1", ECHO, "fine"),
            b"{not json",
            {**chat_line("bad-url", ECHO, "x"), "url": "/v1/embeddings"},
            chat_line("ok-1", ECHO, "duplicate id"),
            chat_line("no-model", "no-such-model", "x"),
            b"",
            chat_line("bad-temp", ECHO, "x", temperature=7),
            {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"},
        ]
    )
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_batch(client, batch.id, {"failed", "completed"})
    assert failed.status == "failed"
    assert failed.failed_at is not None
    assert failed.errors is not None
    errors = [(e.line, e.code, e.param) for e in failed.errors.data]
    assert errors == [
        (2, "invalid_json_line", None),
        (3, "invalid_url", "url"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "model_not_found", "body.model"),
        (7, "invalid_request", "body.temperature"),
        (8, "invalid_request", "body"),
    ]
    assert failed.output_file_id is None


def test_create_refusals(batch_stack: BatchStack) -> None:
    client = batch_stack.sdk()
    uploaded = client.files.create(
        file=("one.jsonl", io.BytesIO(jsonl([chat_line("a", ECHO, "x")]))), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as bad_endpoint:
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/moderations",
            completion_window="24h",
        )
    assert bad_endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="48h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=batch_stack.v1, api_key="js-wrong", max_retries=0).batches.list()


def test_paging_with_after_and_limit(batch_stack: BatchStack) -> None:
    client = batch_stack.sdk("beta")
    uploaded = client.files.create(
        file=("p.jsonl", io.BytesIO(jsonl([chat_line("a", ECHO, "x")]))), purpose="batch"
    )
    ids = [
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert first.has_more is True
    assert [b.id for b in first.data] == ids[::-1][:2]
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data][:1] == [ids[0]]
    seen = [b.id for b in client.batches.list(limit=1)]  # the SDK follows `after` itself
    assert seen[:3] == ids[::-1]
    for batch_id in ids:
        wait_batch(client, batch_id, {"completed"})


def test_tenants_cannot_see_each_other(batch_stack: BatchStack) -> None:
    alpha, beta = batch_stack.sdk("alpha"), batch_stack.sdk("beta")
    uploaded = alpha.files.create(
        file=("mine.jsonl", io.BytesIO(jsonl([chat_line("a", ECHO, "secret")]))), purpose="batch"
    )
    batch = alpha.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        lambda: beta.files.retrieve(uploaded.id),
        lambda: beta.files.content(uploaded.id),
        lambda: beta.files.delete(uploaded.id),
        lambda: beta.batches.retrieve(batch.id),
        lambda: beta.batches.cancel(batch.id),
        lambda: beta.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert uploaded.id not in [f.id for f in beta.files.list()]
    assert batch.id not in [b.id for b in beta.batches.list()]
    done = wait_batch(alpha, batch.id, {"completed"})
    with pytest.raises(openai.NotFoundError):
        beta.files.content(str(done.output_file_id))
    assert alpha.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        alpha.files.retrieve(uploaded.id)


def test_upload_limits_apply_while_streaming(batch_stack: BatchStack) -> None:
    client = batch_stack.sdk()
    before = batch_stack.query("SELECT count(*) AS n FROM files")[0]["n"]
    too_many = jsonl([chat_line(f"r{i}", ECHO, "x") for i in range(MAX_FILE_LINES + 1)])
    with pytest.raises(openai.BadRequestError) as lines:
        client.files.create(file=("many.jsonl", io.BytesIO(too_many)), purpose="batch")
    assert lines.value.code == "too_many_lines"
    # Over the size limit (4 MiB here) in lines under the line limit (2 MiB).
    big = (b'{"x": "' + b"a" * (64 * 1024) + b'"}\n') * 80
    response = httpx.post(
        f"{batch_stack.v1}/files",
        headers={"authorization": f"Bearer {batch_stack.keys['alpha']}"},
        data={"purpose": "batch"},
        files={"file": ("big.jsonl", big)},
        timeout=60,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert batch_stack.query("SELECT count(*) AS n FROM files")[0]["n"] == before
    not_multipart = httpx.post(
        f"{batch_stack.v1}/files",
        headers={"authorization": f"Bearer {batch_stack.keys['alpha']}"},
        content=json.dumps({"purpose": "batch"}),
        timeout=30,
    )
    assert not_multipart.status_code == 400
