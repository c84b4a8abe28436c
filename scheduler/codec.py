"""How the scheduler turns OpenAI bodies into wire requests and results back into OpenAI
bodies: the HTTP bridge's own conversion, injected by the composition root (`jetserve/`), so a
batch output line carries exactly the JSON the synchronous endpoint returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from schemas.messages import ErrorResult, FinalResult, InferenceRequest
from schemas.names import Priority
from schemas.openai_errors import ApiError


class Codec(Protocol):
    #: The endpoints it converts: "/v1/chat/completions", "/v1/completions", ...
    endpoints: frozenset[str]

    def request(
        self,
        endpoint: str,
        body: bytes,
        *,
        request_id: str,
        tenant: str,
        priority: Priority,
        deadline_ms: int | None,
    ) -> InferenceRequest:
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

    def error(self, result: ErrorResult) -> ApiError:
        """The HTTP status and error body the endpoint returns for a worker's error."""
        ...
