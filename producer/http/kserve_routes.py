"""KServe's two REST protocols on the bridge, each request a `predict` on the model's queue.

Open Inference Protocol (V2; errors as `{"error": "..."}`):
    GET  /v2                          server metadata            (key)
    GET  /v2/health/live, /ready      the bridge                 (open)
    GET  /v2/models/{name}            tensors in and out, as the model's workers declare them (key)
    GET  /v2/models/{name}/ready      a worker answers           (open)
    POST /v2/models/{name}/infer      JSON or binary tensors     (key)
KServe V1:
    POST /v1/models/{name}:predict    {"instances": [...]} -> {"predictions": [...]}  (key)
    GET  /v1/models/{name}            OpenAI's model object, plus `ready`              (key)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.types import ControllerRouterHandler
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from producer.http.body import read_body, wanted_headers
from producer.http.errors import ApiError
from producer.http.handlers import Bridge
from producer.http.routes import BridgeHolder
from producer.http.v2 import bad, decode_request, encode_response, v1_payload
from schemas import names
from schemas.codec import decode_worker_info
from schemas.messages import WorkerInfo
from schemas.v2 import HEADER_LENGTH

JSON = "application/json"
_HEADER_LENGTH = HEADER_LENGTH.lower()  # as ASGI delivers header names
SERVER = {"name": "jetserve", "version": "1", "extensions": ["binary_tensor_data"]}
_encoder = msgspec.json.Encoder()
PING_TIMEOUT_S = 0.5


def _v2_error(exc: ApiError) -> Response[Any]:
    body = _encoder.encode({"error": exc.message})
    return Response(body, status_code=exc.status, media_type=JSON, headers=exc.headers)


async def _v2(handler: Callable[[], Awaitable[Response[Any]]]) -> Response[Any]:
    """Run a V2 handler; its errors in the protocol's shape."""
    try:
        return await handler()
    except ApiError as exc:
        return _v2_error(exc)


async def worker_info(bridge: Bridge, model: str) -> WorkerInfo | None:
    """The first answer of the model's workers to a ping; None when no worker is running."""
    with contextlib.suppress(NoRespondersError, NatsTimeoutError, TimeoutError):
        msg = await bridge.client.nc.request(names.ping_subject(model), b"", timeout=PING_TIMEOUT_S)
        if msg.data:
            return decode_worker_info(msg.data)
    return None


async def _known(bridge: Bridge, model: str) -> None:
    if not await bridge.has_model(model):
        raise ApiError(404, f"The model `{model[:100]}` does not exist.", code="model_not_found")


def kserve_routes(holder: BridgeHolder, max_body_bytes: int) -> list[ControllerRouterHandler]:
    @get("/v2", summary="Open Inference Protocol: server metadata")
    async def server_metadata(request: Request[Any, Any, Any]) -> Response[Any]:
        async def run() -> Response[Any]:
            await holder.get().authenticate(request.headers)
            return Response(_encoder.encode(SERVER), media_type=JSON)

        return await _v2(run)

    @get("/v2/health/live", summary="Open Inference Protocol: the bridge is alive")
    async def live() -> Response[Any]:
        return Response(b'{"live":true}', media_type=JSON)

    @get("/v2/health/ready", summary="Open Inference Protocol: connected to NATS")
    async def ready() -> Response[Any]:
        bridge = holder.bridge
        ok = bridge is not None and bridge.client.is_connected
        body = _encoder.encode({"ready": ok})
        return Response(body, status_code=200 if ok else 503, media_type=JSON)

    @get("/v2/models/{name:str}", summary="Open Inference Protocol: model metadata")
    async def model_metadata(request: Request[Any, Any, Any], name: str) -> Response[Any]:
        async def run() -> Response[Any]:
            bridge = holder.get()
            await bridge.authenticate(request.headers)
            await _known(bridge, name)
            info = await worker_info(bridge, name)
            if info is None:
                raise ApiError(503, f"No worker of model {name} is running to declare its tensors.")
            if info.metadata is None:
                raise bad(f"Model {name} does not declare Open Inference Protocol tensors.")
            return Response(_encoder.encode(info.metadata), media_type=JSON)

        return await _v2(run)

    @get("/v2/models/{name:str}/ready", summary="Open Inference Protocol: model readiness")
    async def model_ready(name: str) -> Response[Any]:
        async def run() -> Response[Any]:
            bridge = holder.get()
            await _known(bridge, name)
            info = await worker_info(bridge, name)
            ok = info is not None and not info.draining
            body = _encoder.encode({"name": name, "ready": ok})
            return Response(body, status_code=200 if ok else 503, media_type=JSON)

        return await _v2(run)

    @post("/v2/models/{name:str}/infer", status_code=200, summary="Open Inference Protocol")
    async def infer(request: Request[Any, Any, Any], name: str) -> Response[Any]:
        async def run() -> Response[Any]:
            bridge = holder.get()
            headers = wanted_headers(request.scope["headers"])  # one pass (hot path)
            principal = await bridge.authenticate(headers)
            body = await read_body(request.receive, max_body_bytes)
            decoded = decode_request(body, headers.get(_HEADER_LENGTH))
            result = await bridge.predict(principal, name, decoded.payload, headers)
            content, headers = encode_response(result.output, decoded)
            media = "application/octet-stream" if headers else JSON
            return Response(content, media_type=media, headers=headers)

        return await _v2(run)

    @post("/v1/models/{target:str}", status_code=200, summary="KServe V1: `{name}:predict`")
    async def v1_predict(request: Request[Any, Any, Any], target: str) -> Response[Any]:
        name, sep, verb = target.rpartition(":")
        if not sep or verb != "predict":
            raise ApiError(404, f"Unknown route: POST /v1/models/{target[:100]}")
        bridge = holder.get()
        headers = wanted_headers(request.scope["headers"])
        principal = await bridge.authenticate(headers)
        payload = v1_payload(await read_body(request.receive, max_body_bytes))
        result = await bridge.predict(principal, name, payload, headers)
        return Response(_encoder.encode(result.output), media_type=JSON)

    @get("/v1/models/{name:str}", summary="One model: OpenAI's model object, plus `ready`")
    async def v1_model(request: Request[Any, Any, Any], name: str) -> Response[Any]:
        bridge = holder.get()
        await bridge.authenticate(request.headers)
        await _known(bridge, name)
        info = await worker_info(bridge, name)
        card = {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "jetserve",
            "ready": info is not None and not info.draining,
        }
        return Response(_encoder.encode(card), media_type=JSON)

    return [
        server_metadata,
        live,
        ready,
        model_metadata,
        model_ready,
        infer,
        v1_predict,
        v1_model,
    ]
