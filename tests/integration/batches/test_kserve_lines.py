"""KServe's inference requests on the scheduler's ways in: batch lines whose url is
`/v2/models/{name}/infer` or `/v1/models/{name}:predict`, and the same bodies as async
requests (`/v1/async/v2/models/{name}/infer`, `/v1/async/models/{name}:predict`) with a
callback. A real scikit-learn model behind a runtime worker process; every answer compared
with the synchronous route's and with the library's own."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
import pytest
from standardwebhooks.webhooks import Webhook

from ...conftest import wait_for_workers
from ...runtimes.classic_models import ClassicModels, make_classic_models
from .conftest import BatchStack, Receiver, jsonl, read_lines, wait_batch
from .test_webhooks import register, unregister, wait_for

pytestmark = pytest.mark.integration

IRIS = "b-iris"
V2_URL = f"/v2/models/{IRIS}/infer"
V1_URL = f"/v1/models/{IRIS}:predict"


@pytest.fixture(scope="module")
def iris(batch_stack: BatchStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The stack plus a `sklearn` runtime worker for IRIS (predict_proba)."""
    classic: ClassicModels = make_classic_models(tmp_path_factory.mktemp("kserve-lines"))
    path: Path = classic.folder / "iris.joblib"
    proc = batch_stack.start_worker(
        IRIS, "workers.runtimes.sklearn:SklearnModel", f"path={path}", "method=predict_proba"
    )

    async def up() -> None:
        nc = await nats.connect(batch_stack.nats_url)
        try:
            await wait_for_workers(nc, IRIS, 1, timeout_s=60)
        finally:
            await nc.close()

    asyncio.run(up())
    yield classic
    proc.terminate()
    proc.wait(30)


def _v2(rows: np.ndarray[Any, Any], **tensor: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "data": rows.tolist(),
                **tensor,
            }
        ]
    }


def _headers(stack: BatchStack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.keys['alpha']}"}


def _line(custom_id: str, url: str, body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _run(stack: BatchStack, endpoint: str, lines: list[Any]) -> Any:
    client = stack.sdk()
    f = client.files.create(file=("k.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    return wait_batch(client, batch.id, {"completed", "failed"})


def test_v2_and_v1_batch_lines(batch_stack: BatchStack, iris: ClassicModels) -> None:
    x = iris.x[::5]  # 30 rows
    want = iris.sklearn.predict_proba(x)
    bad_shape = _v2(x[:1], shape=[2, 4])
    lines = [_line(f"r{i}", V2_URL, _v2(x[i : i + 1])) for i in range(len(x))]
    lines.append(_line("bad", V2_URL, bad_shape))
    lines.append(_line("two", V2_URL, {**_v2(x[:2]), "id": "mine"}))
    batch = _run(batch_stack, V2_URL, lines)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(x) + 1, 1)
    client = batch_stack.sdk()
    out = {line["custom_id"]: line for line in read_lines(client, batch.output_file_id)}
    sync = httpx.post(
        f"{batch_stack.url}{V2_URL}", headers=_headers(batch_stack), json=_v2(x[:1]), timeout=30
    ).json()
    for i in range(len(x)):
        response = out[f"r{i}"]["response"]
        assert response["status_code"] == 200
        data = response["body"]["outputs"][0]["data"]
        assert data == pytest.approx(want[i].tolist(), rel=1e-12)
        assert response["body"]["model_name"] == IRIS
    # The synchronous route's body. Its numbers to rounding: a worker may predict rows of
    # several requests in one call (workers/batcher.py), which sums in another order.
    body = out["r0"]["response"]["body"]
    assert body["outputs"][0]["data"] == pytest.approx(sync["outputs"][0]["data"], rel=1e-12)
    for answer in (body, sync):
        answer["outputs"][0]["data"] = None
    assert body == sync
    two = out["two"]["response"]["body"]
    assert two["id"] == "mine"
    assert two["outputs"][0]["shape"] == [2, 3]
    # A bad tensor fails alone, with the synchronous route's status and body.
    errors = read_lines(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["bad"]
    sync_bad = httpx.post(
        f"{batch_stack.url}{V2_URL}", headers=_headers(batch_stack), json=bad_shape, timeout=30
    )
    assert sync_bad.status_code == 400
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"] == sync_bad.json()
    assert "`input-0`" in errors[0]["response"]["body"]["error"]

    # KServe V1 lines: `instances` -> `predictions`.
    v1_lines = [_line(f"v{i}", V1_URL, {"instances": x[i : i + 3].tolist()}) for i in range(4)]
    batch = _run(batch_stack, V1_URL, v1_lines)
    assert batch.status == "completed", batch
    v1_out = {line["custom_id"]: line for line in read_lines(client, batch.output_file_id)}
    for i in range(4):
        body = v1_out[f"v{i}"]["response"]["body"]
        assert body == {"predictions": iris.sklearn.predict_proba(x[i : i + 3]).tolist()}


def test_bad_v2_batches_fail_validation(batch_stack: BatchStack, iris: ClassicModels) -> None:
    client = batch_stack.sdk()
    with pytest.raises(Exception, match="endpoint must be one of"):
        client.batches.create(
            input_file_id="file-x",
            endpoint="/v2/models/bad name/infer",  # type: ignore[arg-type]
            completion_window="24h",
        )
    row = iris.x[:1]
    unknown = "/v2/models/no-such-model/infer"
    batch = _run(batch_stack, unknown, [_line("a", unknown, _v2(row))])
    assert batch.status == "failed"
    assert [(e.code, e.param) for e in batch.errors.data] == [("model_not_found", "url")]
    lines = [
        _line("a", V2_URL, _v2(row)),
        _line("b", V1_URL, {"instances": row.tolist()}),  # not the batch's endpoint
        _line("c", V2_URL, [1, 2, 3]),  # not an inference request
    ]
    batch = _run(batch_stack, V2_URL, lines)
    assert batch.status == "failed"
    codes = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert codes == [(2, "invalid_url", "url"), (3, "invalid_request", "body")]


def _poll(stack: BatchStack, request_id: str) -> dict[str, Any]:
    end = time.monotonic() + 30
    while True:
        r = httpx.get(
            f"{stack.v1}/async/requests/{request_id}", headers=_headers(stack), timeout=30
        )
        body: dict[str, Any] = r.json()
        if body.get("status") in ("completed", "failed"):
            return body
        assert time.monotonic() < end, body
        time.sleep(0.05)


def test_v2_and_v1_async_requests_with_callback(
    batch_stack: BatchStack, iris: ClassicModels, receiver: Receiver
) -> None:
    endpoint = register(batch_stack, receiver.url, events=["request.completed"])
    headers = {**_headers(batch_stack), "x-jetserve-callback-url": receiver.url}
    x = iris.x[40:43]
    try:
        accepted = httpx.post(
            f"{batch_stack.v1}/async/v2/models/{IRIS}/infer",
            headers=headers,
            json=_v2(x),
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        request_id = accepted.json()["id"]
        done = _poll(batch_stack, request_id)
        assert done["status"] == "completed"
        assert done["endpoint"] == V2_URL
        body = done["response"]["body"]
        assert done["response"]["status_code"] == 200
        want = iris.sklearn.predict_proba(x)
        assert body["outputs"][0]["data"] == want.reshape(-1).tolist()
        sync = httpx.post(
            f"{batch_stack.url}{V2_URL}", headers=_headers(batch_stack), json=_v2(x), timeout=30
        )
        assert body == sync.json()
        wait_for(lambda: len(receiver.posts) >= 1)
        event = Webhook(endpoint["secret"]).verify(receiver.posts[0][1], receiver.posts[0][0])
        assert (event["type"], event["data"]["id"]) == ("request.completed", request_id)

        # KServe V1.
        accepted = httpx.post(
            f"{batch_stack.v1}/async/models/{IRIS}:predict",
            headers=_headers(batch_stack),
            json={"instances": x.tolist()},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        done = _poll(batch_stack, accepted.json()["id"])
        assert done["response"]["body"] == {"predictions": want.tolist()}

        # A bad tensor: the synchronous route's 400 and body, kept as the request's response.
        bad = _v2(x, datatype="BYTES", data=["a"] * 12)
        accepted = httpx.post(
            f"{batch_stack.v1}/async/v2/models/{IRIS}/infer",
            headers=_headers(batch_stack),
            json=bad,
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        done = _poll(batch_stack, accepted.json()["id"])
        sync_bad = httpx.post(
            f"{batch_stack.url}{V2_URL}", headers=_headers(batch_stack), json=bad, timeout=30
        )
        assert sync_bad.status_code == 400
        assert done["response"]["status_code"] == 400
        assert done["response"]["body"] == sync_bad.json()
    finally:
        unregister(batch_stack, endpoint["id"])


def test_async_refusals(batch_stack: BatchStack, iris: ClassicModels) -> None:
    headers = _headers(batch_stack)
    row = _v2(iris.x[:1])
    for path, status in [
        ("/async/v2/models/no-such-model/infer", 404),
        (f"/async/models/{IRIS}:explain", 404),
        (f"/async/models/{uuid.uuid4().hex}:predict", 404),
    ]:
        r = httpx.post(f"{batch_stack.v1}{path}", headers=headers, json=row, timeout=30)
        assert r.status_code == status, (path, r.text)
    not_json = httpx.post(
        f"{batch_stack.v1}/async/v2/models/{IRIS}/infer", headers=headers, content=b"{", timeout=30
    )
    assert not_json.status_code == 400
    no_rows = httpx.post(
        f"{batch_stack.v1}/async/models/{IRIS}:predict", headers=headers, json={}, timeout=30
    )
    assert no_rows.status_code == 400
    assert no_rows.json()["error"]["param"] == "instances"
