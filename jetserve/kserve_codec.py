"""KServe's inference endpoints for the scheduler: batch lines and async requests whose url
is `/v2/models/{name}/infer` (Open Inference Protocol, JSON tensors) or
`/v1/models/{name}:predict` (KServe V1). The model is named by the url, not the body.

A body goes on the queue as the bridge's route puts it (`producer/http/v2.py`: a V2 body as
it came, checked by the worker; a V1 body as `{"instances": rows}`), and a result comes back
as the route answers it: the worker's response JSON; a worker's error as `{"error": "..."}`
(V2) or OpenAI's error body (V1, as on the bridge). A JSONL line has no binary part, so
binary tensors are not offered here: outputs asked for in binary come back as JSON.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import msgspec

from producer.http.errors import from_error_result
from producer.http.v2 import decode_request, v1_payload
from scheduler.codec import Envelope
from schemas import names
from schemas.messages import ErrorResult, FinalResult, InferenceRequest
from schemas.openai_errors import ApiError

#: As the Batches API lists them.
PATTERNS = frozenset({"/v2/models/{name}/infer", "/v1/models/{name}:predict"})
_V2 = re.compile(r"/v2/models/([^/]+)/infer")
_V1 = re.compile(r"/v1/models/([^/:]+):predict")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Target:
    model: str
    #: True: Open Inference Protocol (V2); False: KServe V1.
    v2: bool


def target(endpoint: str) -> Target | None:
    """The model and protocol of a KServe endpoint; None when it is not one (or names a
    model that cannot exist)."""
    for pattern, v2 in ((_V2, True), (_V1, False)):
        match = pattern.fullmatch(endpoint)
        if match:
            try:
                names.validate_model_name(match.group(1))
            except names.InvalidName:
                return None
            return Target(match.group(1), v2)
    return None


def request(where: Target, body: bytes, envelope: Envelope) -> InferenceRequest:
    """The `predict` request of a body; `ApiError` (400) as the bridge's route raises it."""
    payload = decode_request(body, None).payload if where.v2 else v1_payload(body)
    return InferenceRequest(
        id=envelope.request_id,
        model=where.model,
        kind="predict",
        payload=payload,
        tenant=envelope.tenant,
        priority=envelope.priority,
        created_ms=int(time.time() * 1000),
        deadline_ms=envelope.deadline_ms,
    )


def response_body(result: FinalResult) -> bytes:
    return _encoder.encode(result.output)


def error_response(where: Target, result: ErrorResult) -> tuple[int, bytes]:
    api: ApiError = from_error_result(result)
    if where.v2:
        return api.status, _encoder.encode({"error": api.message})
    return api.status, api.body()
