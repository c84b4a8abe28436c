"""How the scheduler turns request bodies (OpenAI's, and KServe's V1 and V2 inference) into
wire requests and results back into response bodies: the HTTP bridge's own conversion,
injected by the composition root (`jetserve/`), so a batch output line carries exactly the
JSON the synchronous endpoint returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from schemas.messages import ErrorResult, FinalResult, InferenceRequest
from schemas.names import Priority


@dataclass(frozen=True)
class Envelope:
    """What the scheduler adds to a body to make it a wire request."""

    request_id: str
    tenant: str
    priority: Priority
    #: Unix ms after which the request is not worth running (None: no deadline).
    deadline_ms: int | None = None


class Codec(Protocol):
    #: The endpoints it converts, as they are listed to a caller: "/v1/chat/completions", ...,
    #: and patterns such as "/v2/models/{name}/infer".
    endpoints: frozenset[str]

    def accepts(self, endpoint: str) -> bool:
        """Whether `endpoint` is one it converts (a pattern's instance, for patterns)."""
        ...

    def model_param(self, endpoint: str) -> str:
        """Where a request to `endpoint` names its model: "body.model", or "url"."""
        ...

    def request(self, endpoint: str, body: bytes, envelope: Envelope) -> InferenceRequest:
        """The request a body asks for (never streamed). Raises `ApiError` (400, naming the
        parameter; 404 for a model name that cannot exist) exactly as the endpoint would."""
        ...

    def response_body(
        self,
        endpoint: str,
        request_id: str,
        result: FinalResult,
        created: int,
        metadata: Mapping[str, str],
    ) -> bytes:
        """The JSON body the endpoint returns for this result. `metadata`: the request's."""
        ...

    def error_response(
        self, endpoint: str, result: ErrorResult, metadata: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """The HTTP status and error body the endpoint returns for a worker's error.
        `metadata`: the request's, when the endpoint reads it (a Responses body names the
        field at fault as its `input` item)."""
        ...
