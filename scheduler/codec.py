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


@dataclass(frozen=True)
class Reply:
    """A request's terminal reply, with what its response body takes from elsewhere."""

    request_id: str
    result: FinalResult | ErrorResult
    #: Unix seconds: the response's `created`.
    created: int
    #: The request's metadata (what the endpoint kept of its body; may be left empty for an
    #: endpoint whose response does not read it).
    metadata: Mapping[str, str]


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

    def response(self, endpoint: str, reply: Reply) -> tuple[int, bytes]:
        """The HTTP status and JSON body the endpoint returns for `reply`: its response
        (200), or its error (a worker's error result, or a result the endpoint cannot
        answer with, e.g. a Responses body that no longer decodes), as the endpoint would."""
        ...
