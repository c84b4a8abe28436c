"""The scheduler's `Codec`, made of the HTTP bridge's own conversion (`producer/http`), so that
batch output lines and async results carry exactly the bodies the synchronous endpoints return:
OpenAI's endpoints here, KServe's inference endpoints in `jetserve/kserve_codec.py`. Composed
here because `scheduler` must not import `producer`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from jetserve import kserve_codec
from producer.http import convert
from producer.http import responses_convert as rc
from producer.http.endpoints import CHAT, COMPLETION, EMBEDDING, RESPONSES, Endpoint
from producer.http.errors import from_error_result
from producer.http.responses_input import input_param
from scheduler.codec import Envelope, Reply
from schemas.messages import ErrorResult, FinalResult, InferenceRequest
from schemas.openai_errors import BODY_ERRORS, ApiError, from_decode_error

_ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETION,
    "/v1/embeddings": EMBEDDING,
    "/v1/responses": RESPONSES,
}
#: Request metadata key: the embeddings `encoding_format` the response must use.
ENCODING_FORMAT = "encoding_format"
#: Request metadata key: a Responses body (its response object echoes the request's fields).
RESPONSES_BODY = "responses_body"
_encoder = msgspec.json.Encoder()


class OpenAICodec:
    endpoints = frozenset(_ENDPOINTS) | kserve_codec.PATTERNS

    def accepts(self, endpoint: str) -> bool:
        return endpoint in _ENDPOINTS or kserve_codec.target(endpoint) is not None

    def model_param(self, endpoint: str) -> str:
        return "body.model" if endpoint in _ENDPOINTS else "url"

    def request(self, endpoint: str, body: bytes, envelope: Envelope) -> InferenceRequest:
        kserve = kserve_codec.target(endpoint)
        if kserve is not None:
            return kserve_codec.request(kserve, body, envelope)
        ep = _ENDPOINTS[endpoint]
        try:
            parsed: Any = ep.decoder.decode(body)
        except BODY_ERRORS as exc:
            raise from_decode_error(exc) from None
        request: InferenceRequest = ep.to_request(
            parsed,
            id=envelope.request_id,
            tenant=envelope.tenant,
            created_ms=int(time.time() * 1000),
            deadline_ms=envelope.deadline_ms,
            idempotency_key=None,
        )
        metadata: dict[str, str] = {}
        if ep is EMBEDDING and parsed.encoding_format != "float":
            metadata[ENCODING_FORMAT] = parsed.encoding_format
        if ep is RESPONSES:
            metadata[RESPONSES_BODY] = body.decode()
        return msgspec.structs.replace(
            request, stream=False, priority=envelope.priority, metadata=metadata
        )

    def response(self, endpoint: str, reply: Reply) -> tuple[int, bytes]:
        result, metadata = reply.result, reply.metadata
        if isinstance(result, ErrorResult):
            return self._error(endpoint, result, metadata)
        try:
            return 200, self._body(endpoint, reply.request_id, result, reply.created, metadata)
        except ApiError as exc:
            return exc.status, exc.body()

    def _body(
        self,
        endpoint: str,
        request_id: str,
        result: FinalResult,
        created: int,
        metadata: Mapping[str, str],
    ) -> bytes:
        if endpoint not in _ENDPOINTS:
            return kserve_codec.response_body(result)
        ep = _ENDPOINTS[endpoint]
        response_id = ep.id_prefix + request_id
        if ep is CHAT:
            return _encoder.encode(convert.chat_response(result, response_id, created))
        if ep is COMPLETION:
            return _encoder.encode(convert.completion_response(result, response_id, created))
        if ep is RESPONSES:
            parsed = RESPONSES.decoder.decode(metadata[RESPONSES_BODY])
            base = rc.base_response(parsed, response_id, created, stored=False)
            return _encoder.encode(rc.finished_response(base, result, created))
        encoding = metadata.get(ENCODING_FORMAT, "float")
        return _encoder.encode(convert.embedding_response(result, encoding))

    def _error(
        self, endpoint: str, result: ErrorResult, metadata: Mapping[str, str]
    ) -> tuple[int, bytes]:
        kserve = kserve_codec.target(endpoint)
        if kserve is not None:
            return kserve_codec.error_response(kserve, result)
        api = from_error_result(result)
        body = metadata.get(RESPONSES_BODY)
        if _ENDPOINTS.get(endpoint) is RESPONSES and body is not None:
            # The worker names a chat field; the line's body named its `input` item.
            api.param = input_param(api.param, rc.origins(RESPONSES.decoder.decode(body)))
        return api.status, api.body()
