# The tables keep one case a line, however long.
# ruff: noqa: E501
"""The batch-side cases of the bad-input catalog (`tests/integration/test_bad_input_catalog.py`
holds the table): bad lines in a batch file, each failing the batch with its documented line
error before anything runs; another tenant's async request and webhook ids. After each case
a good batch still completes."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest

from ..conftest import LONG_PROMPT
from ..test_bad_input_catalog import CATALOG, TRICKY_MODELS, Case, check_error, user
from .conftest import ECHO as B_ECHO
from .conftest import BatchStack, chat_line, jsonl, wait_batch

pytestmark = pytest.mark.integration


def covered(test: str) -> list[Any]:
    """The catalog cases this module's `test` covers."""
    return [
        pytest.param(c, id=c.id)
        for c in CATALOG
        if c.covered_by is not None and c.covered_by.endswith(f"test_bad_lines.py::{test}")
    ]


def run_lines(stack: BatchStack, lines: list[Any]) -> Any:
    client = stack.sdk()
    uploaded = client.files.create(file=("c.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return wait_batch(client, batch.id, {"failed", "completed"})


def batch_keeps_serving(stack: BatchStack) -> None:
    done = run_lines(stack, [chat_line("good", B_ECHO, "fine")])
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.completed == 1


_GOOD = chat_line("good-0", B_ECHO, "fine")
_BATCH_LINES: dict[str, tuple[Any, str, str | None]] = {
    "batch-line-not-an-object": (b"[1, 2, 3]", "invalid_request", None),
    "batch-line-not-utf8": (b'{"custom_id": "\xff\xfe", "method": "POST"}', "invalid_json_line", None),
    "batch-line-body-not-utf8": (b'{"custom_id": "u", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "\xff"}}', "invalid_request", "body"),
    "batch-line-wrong-method": ({**chat_line("m", B_ECHO, "x"), "method": "GET"}, "invalid_method", "method"),
    **{
        f"batch-line-model-{k}": (chat_line("m", v, "x"), "model_not_found", "body.model")
        for k, v in TRICKY_MODELS.items()
    },
    "batch-line-mismatched-model": (chat_line("m", "b-slow", "x"), "mismatched_model", None),
    "batch-line-negative-max-tokens": (chat_line("m", B_ECHO, "x", max_tokens=-1), "invalid_request", "body.max_tokens"),
    "batch-line-n-2": (chat_line("m", B_ECHO, "x", n=2), "invalid_request", "body.n"),
}  # fmt: skip


@pytest.mark.parametrize("case", covered("test_bad_line"))
def test_bad_line(case: Case, batch_stack: BatchStack) -> None:
    bad, code, param = _BATCH_LINES[case.id]
    failed = run_lines(batch_stack, [_GOOD, bad])
    assert failed.status == "failed"
    assert failed.errors is not None
    ((line, got, got_param),) = [(e.line, e.code, e.param) for e in failed.errors.data]
    assert (line, got) == (2, code), failed.errors
    if param is not None:
        assert got_param == param
    assert failed.output_file_id is None  # nothing ran
    batch_keeps_serving(batch_stack)


@pytest.mark.parametrize("case", covered("test_empty_file"))
def test_empty_file(case: Case, batch_stack: BatchStack) -> None:
    failed = run_lines(batch_stack, [b"", b"  "])
    assert failed.status == "failed"
    assert failed.errors is not None
    assert [e.code for e in failed.errors.data] == ["empty_file"]
    batch_keeps_serving(batch_stack)


@pytest.mark.parametrize("case", covered("test_line_prompt_longer_than_the_context"))
def test_line_prompt_longer_than_the_context(
    case: Case, batch_stack: BatchStack, llm_worker: str
) -> None:
    lines = [
        chat_line("fits", llm_worker, "hi", max_tokens=4),
        chat_line("too-long", llm_worker, LONG_PROMPT),
    ]
    done = run_lines(batch_stack, lines)
    assert done.status == "completed"
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (2, 1, 1)
    client = batch_stack.sdk()
    (error,) = [
        json.loads(x) for x in client.files.content(str(done.error_file_id)).text.splitlines()
    ]
    assert error["custom_id"] == "too-long"
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"
    batch_keeps_serving(batch_stack)


@pytest.mark.parametrize("case", covered("test_other_tenants_async_and_webhook_ids"))
def test_other_tenants_async_and_webhook_ids(case: Case, batch_stack: BatchStack) -> None:
    alpha = {"authorization": f"Bearer {batch_stack.keys['alpha']}"}
    beta = {"authorization": f"Bearer {batch_stack.keys['beta']}"}
    submitted = httpx.post(
        f"{batch_stack.v1}/async/chat/completions",
        headers=alpha,
        json={"model": B_ECHO, "messages": user("mine")},
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    request_id = submitted.json()["id"]
    hook = httpx.post(
        f"{batch_stack.v1}/webhooks",
        headers=alpha,
        json={"url": "http://127.0.0.1:9/x"},
        timeout=30,
    )
    assert hook.status_code == 200, hook.text
    hook_id = hook.json()["id"]
    try:
        for response in (
            httpx.get(f"{batch_stack.v1}/async/requests/{request_id}", headers=beta, timeout=30),
            httpx.delete(f"{batch_stack.v1}/webhooks/{hook_id}", headers=beta, timeout=30),
        ):
            check_error(response, 404, response.json()["error"]["code"])
        assert hook_id not in httpx.get(f"{batch_stack.v1}/webhooks", headers=beta, timeout=30).text
        mine = httpx.get(f"{batch_stack.v1}/async/requests/{request_id}", headers=alpha, timeout=30)
        assert mine.status_code == 200
    finally:
        httpx.delete(f"{batch_stack.v1}/webhooks/{hook_id}", headers=alpha, timeout=30)
