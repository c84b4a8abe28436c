"""KServe's protocols on the bridge, in front of the ready-made runtimes served from a models
file: Triton's HTTP client unchanged (JSON and binary tensors), KServe V1, NATS `predict`,
bad tensors, dynamic batching."""

from __future__ import annotations

import asyncio
import math
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import numpy as np
import onnxruntime
import pytest
import xgboost

from jetserve.servers import NatsServer
from producer.client import Client
from producer.errors import RequestFailed
from workers.config import WorkerConfig, find_model, load_models_file
from workers.runtimes.base import TensorModel
from workers.worker import Worker, build_backend

from ..conftest import REPO, child_env, wait_for_workers
from ..runtimes.classic_models import ClassicModels, make_classic_models
from .conftest import BridgeStack

pytestmark = pytest.mark.integration

IRIS, XGB, ONNX, LGB = "kserve-iris", "kserve-xgb", "kserve-onnx", "kserve-lgb"
WORKER = [sys.executable, "-m", "jetserve", "worker", "--model"]


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory) -> ClassicModels:
    return make_classic_models(tmp_path_factory.mktemp("classic"))


@pytest.fixture
def served(
    classic: ClassicModels, nats_server: NatsServer, tmp_path: Path
) -> Iterator[ClassicModels]:
    """`jetserve worker` processes for every model of a models file, as `jetserve up` runs them."""
    models = classic.models_file(sklearn=IRIS, xgboost=XGB, onnx=ONNX, lightgbm=LGB)
    procs = []
    for name in (IRIS, XGB, ONNX, LGB):
        with (tmp_path / f"{name}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [*WORKER, name, "--models-file", str(models)],
                    env=child_env(nats_server.url),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )

    async def up() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            for name in (IRIS, XGB, ONNX, LGB):
                await wait_for_workers(nc, name, 1, timeout_s=60)
        finally:
            await nc.close()

    asyncio.run(up())
    yield classic
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def test_triton_client_json_and_binary(
    served: ClassicModels, nats_server: NatsServer, bridge_on: Callable[..., str]
) -> None:
    import tritonclient.http as triton

    url = bridge_on(nats_server.url)
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(IRIS)
    meta = client.get_model_metadata(IRIS)
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [-1, 3]}]
    onnx_meta = client.get_model_metadata(ONNX)
    assert onnx_meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert onnx_meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]

    x = served.x[::10]
    for binary in (False, True):
        # scikit-learn: predict_proba, as the library computes it.
        inp = triton.InferInput("input-0", list(x.shape), "FP64")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("output-0", binary_data=binary)
        got = client.infer(IRIS, [inp], outputs=[out]).as_numpy("output-0")
        np.testing.assert_array_equal(got, served.sklearn.predict_proba(x))
        # XGBoost, FP32 rows.
        x32 = x.astype(np.float32)
        inp = triton.InferInput("input-0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x32, binary_data=binary)
        got = client.infer(XGB, [inp]).as_numpy("output-0")  # no outputs: binary answers
        np.testing.assert_array_equal(got, served.xgboost.predict(xgboost.DMatrix(x32)))
        # ONNX: onnxruntime's own answer for the exported graph.
        inp = triton.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x32, binary_data=binary)
        got = client.infer(ONNX, [inp]).as_numpy("logits")
        session = onnxruntime.InferenceSession(str(served.onnx), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(got, session.run(["logits"], {"features": x32})[0])
    # LightGBM over plain JSON.
    body = {
        "inputs": [
            {"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.tolist()}
        ]
    }
    r = httpx.post(f"{url}/v2/models/{LGB}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == served.lightgbm.predict(x).tolist()


def test_v1_predict_and_model_object(
    served: ClassicModels, nats_server: NatsServer, bridge_on: Callable[..., str]
) -> None:
    url = bridge_on(nats_server.url)
    x = served.x[:7]
    r = httpx.post(f"{url}/v1/models/{IRIS}:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": served.sklearn.predict_proba(x).tolist()}
    r = httpx.post(f"{url}/v1/models/{XGB}:predict", json={"inputs": x.tolist()}, timeout=30)
    want = served.xgboost.predict(xgboost.DMatrix(x.astype(np.float32))).tolist()
    assert r.json() == {"predictions": want}
    card = httpx.get(f"{url}/v1/models/{IRIS}", timeout=30).json()
    assert (card["id"], card["object"], card["ready"]) == (IRIS, "model", True)
    assert httpx.get(f"{url}/v1/models/no-such-model", timeout=30).status_code == 404
    paths = httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]
    assert {"/v2/models/{name}/infer", "/v1/models/{target}"} <= set(paths)
    r = httpx.post(f"{url}/v1/models/{IRIS}:predict", json={"instances": [[1, 2]]}, timeout=30)
    assert r.status_code == 400
    assert "input-0" in r.json()["error"]["message"]


def _binary_bytes_request(raw: bytes) -> tuple[bytes, dict[str, str]]:
    header = (
        b'{"inputs":[{"name":"input-0","shape":[1],"datatype":"BYTES",'
        b'"parameters":{"binary_data_size":' + str(len(raw) + 4).encode() + b"}}]}"
    )
    body = header + struct.pack("<I", len(raw)) + raw
    return body, {"Inference-Header-Content-Length": str(len(header))}


def test_bad_tensors_are_400_naming_the_tensor(
    served: ClassicModels, nats_server: NatsServer, bridge_on: Callable[..., str]
) -> None:
    url = bridge_on(nats_server.url)
    infer = f"{url}/v2/models/{IRIS}/infer"

    def tensor(**fields: Any) -> dict[str, Any]:
        return {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "data": [1, 2, 3, 4],
                    **fields,
                }
            ]
        }

    cases = {
        "wrong datatype": tensor(datatype="BYTES", data=["a", "b", "c", "d"]),
        "shape mismatch": tensor(shape=[2, 4]),
        "unknown input": tensor(name="petals"),
        "over the size limit": tensor(shape=[1025, 4], data=[0.0] * 4100),
        "unknown datatype": tensor(datatype="FP33"),
        "not numbers": tensor(data=["a", "b", "c", "d"]),
    }
    for case, body in cases.items():
        r = httpx.post(infer, json=body, timeout=30)
        assert r.status_code == 400, (case, r.text)
        message = r.json()["error"]
        assert isinstance(message, str)
        assert "`input-0`" in message or "`petals`" in message, (case, message)
    raw, headers = _binary_bytes_request(b"\xff\xfe")
    r = httpx.post(infer, content=raw, headers=headers, timeout=30)
    assert r.status_code == 400
    assert "`input-0`" in r.json()["error"]
    assert "UTF-8" in r.json()["error"]
    r = httpx.get(f"{url}/v2/models/no-such-model", timeout=30)
    assert r.status_code == 404
    assert "error" in r.json()
    # The model keeps serving.
    r = httpx.post(infer, json=tensor(), timeout=30)
    assert r.status_code == 200
    want = served.sklearn.predict_proba(np.array([[1.0, 2, 3, 4]]))
    assert r.json()["outputs"][0]["data"] == want.reshape(-1).tolist()


async def test_nats_predict_same_payload_same_errors(
    served: ClassicModels, nats_server: NatsServer
) -> None:
    client = await Client.connect(nats_server.url)
    try:
        x = served.x[:3]
        body = {
            "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": x.tolist()}]
        }
        result = await client.request(IRIS, "predict", body, timeout_s=20)
        assert (
            result.output["outputs"][0]["data"]
            == served.sklearn.predict_proba(x).reshape(-1).tolist()
        )
        bad = {"inputs": [{**body["inputs"][0], "shape": [4, 4]}]}
        with pytest.raises(RequestFailed, match="`input-0`: 12 values do not fill shape"):
            await client.request(IRIS, "predict", bad, timeout_s=20)
    finally:
        await client.close()


async def test_dynamic_batching_64_single_rows(
    classic: ClassicModels, nats_server: NatsServer, bridge_on: Callable[..., str]
) -> None:
    """64 concurrent single-row requests: a few model calls, each answer its own row's."""
    name = "kserve-batched"
    spec = find_model(load_models_file(classic.models_file(sklearn=name)), name)
    # A wait far longer than the 64 requests take to arrive on a loaded 2-core machine (a CI
    # run with 50 ms made 4 calls): 64 is two full batches, each run as soon as it fills.
    options = {**spec.options, "max_batch_size": 32, "max_batch_wait_ms": 2000}
    spec = msgspec.structs.replace(spec, options=options)
    backend = build_backend(spec)
    worker = Worker(spec, WorkerConfig(nats_url=nats_server.url), backend)
    task = asyncio.create_task(worker.run())
    try:
        nc = await nats.connect(nats_server.url)
        await wait_for_workers(nc, name, 1, timeout_s=20)
        await nc.close()
        url = await asyncio.to_thread(bridge_on, nats_server.url)
        model = backend.model  # type: ignore[attr-defined]
        assert isinstance(model, TensorModel)
        rows = classic.x[:64]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await http.post(f"/v2/models/{name}/infer", json=_row(rows[0]))  # warm
            before = model.calls
            answers = await asyncio.gather(
                *[http.post(f"/v2/models/{name}/infer", json=_row(r)) for r in rows]
            )
        calls = model.calls - before
        assert calls <= math.ceil(64 / 32) + 1, calls
        want = classic.sklearn.predict_proba(rows)
        for i, answer in enumerate(answers):
            assert answer.status_code == 200
            assert answer.json()["outputs"][0]["data"] == want[i].tolist()
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


def _row(row: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row.tolist()}]
    }


def test_bearer_auth_on_infer_and_metadata_not_health(
    served: ClassicModels, bridge_stack: BridgeStack
) -> None:
    url = bridge_stack.url
    key = {"Authorization": f"Bearer {bridge_stack.key}"}
    row = _row(served.x[0])
    for method, path, body in [
        ("POST", f"/v2/models/{IRIS}/infer", row),
        ("GET", f"/v2/models/{IRIS}", None),
        ("GET", "/v2", None),
        ("POST", f"/v1/models/{IRIS}:predict", {"instances": [served.x[0].tolist()]}),
        ("GET", f"/v1/models/{IRIS}", None),
    ]:
        assert httpx.request(method, url + path, json=body, timeout=30).status_code == 401, path
        r = httpx.request(method, url + path, json=body, headers=key, timeout=30)
        assert r.status_code == 200, (path, r.text)
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{IRIS}/ready"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path
