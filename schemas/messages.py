"""Messages on the request and reply subjects.

A request is published (JetStream) on `jetserve.req.<model>.<priority>`; everything a worker
sends back for it goes to the subject named in the request's `Jetserve-Reply-To` header:
zero or more `StreamChunk`s, then exactly one `FinalResult` or `ErrorResult` per attempt.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schemas.errors import ErrorCode
from schemas.names import MODEL_NAME_PATTERN, REQUEST_ID_PATTERN, Priority
from schemas.params import SamplingParams
from schemas.v2 import ModelMetadata

ModelName = Annotated[str, Meta(pattern=MODEL_NAME_PATTERN)]
RequestId = Annotated[str, Meta(pattern=REQUEST_ID_PATTERN)]
Tenant = Annotated[str, Meta(min_length=1, max_length=128)]
#: The tenant of a request that names none (and of every request with auth off).
DEFAULT_TENANT = "default"

#: What the request asks for; decides the shape of `payload` (see `schemas.payloads`).
Kind = Literal["chat", "completion", "embedding", "predict"]
FinishReason = Literal["stop", "length", "cancelled", "deadline", "tool_calls"]


class InferenceRequest(
    msgspec.Struct, frozen=True, tag="request.v1", tag_field="type", omit_defaults=True
):
    """One unit of work for one model. Immutable once published."""

    id: RequestId
    model: ModelName
    kind: Kind
    #: Kind-specific body: `ChatPayload`, `CompletionPayload`, `EmbeddingPayload`, or any
    #: JSON value for `predict`.
    payload: Any = None
    parameters: SamplingParams = msgspec.field(default_factory=SamplingParams)
    tenant: Tenant = DEFAULT_TENANT
    priority: Priority = Priority.ONLINE
    #: Send `StreamChunk`s as output is produced, not only the final result.
    stream: bool = False
    #: Unix epoch milliseconds after which the result is no longer wanted.
    deadline_ms: int | None = None
    #: Unix epoch milliseconds when the client created the request (for e2e timing).
    created_ms: int | None = None
    #: Client-chosen key: requests with the same key (per tenant) run once.
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    #: Opaque client data (batch id, custom_id, ...), echoed nowhere, logged nowhere.
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class PromptTokensDetails(msgspec.Struct, frozen=True):
    #: Prompt tokens whose keys/values came from the worker's prefix cache (whole blocks).
    cached_tokens: int = 0


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: Added after v1's first release (absent or null from older workers, ignored by older
    #: readers); set by models that report cached prompt tokens.
    prompt_tokens_details: PromptTokensDetails | None = None


class Timings(msgspec.Struct, frozen=True, omit_defaults=True):
    #: Time in the queue: stored in JetStream -> taken by a worker.
    queue_ms: float = 0.0
    #: Created (or stored, when `created_ms` is absent) -> first output token.
    ttft_ms: float | None = None
    #: Mean time per output token after the first.
    tpot_ms: float | None = None
    #: Created (or stored) -> final result sent.
    e2e_ms: float = 0.0


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    token_id: int
    logprob: float


class TokenLogprobs(msgspec.Struct, frozen=True):
    """Log-probability of one chosen token, and its most likely alternatives if asked."""

    token: str
    token_id: int
    logprob: float
    top: list[TokenLogprob] = msgspec.field(default_factory=list)


class StreamChunk(
    msgspec.Struct, frozen=True, tag="chunk.v1", tag_field="type", omit_defaults=True
):
    id: RequestId
    #: 0, 1, 2, ... within one attempt.
    seq: int
    #: Newly decoded text (never a partial UTF-8 character).
    delta: str = ""
    token_ids: list[int] = msgspec.field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    #: Tool calls completed by this chunk, OpenAI's streaming shape:
    #: [{"index", "id", "type": "function", "function": {"name", "arguments"}}].
    tool_calls: list[dict[str, Any]] | None = None
    #: JetStream delivery count: a chunk with a higher attempt than seen before means the
    #: request was handed to another worker and its output restarts from seq 0.
    attempt: int = 1


class FinalResult(msgspec.Struct, frozen=True, tag="result.v1", tag_field="type"):
    id: RequestId
    model: ModelName
    #: `TextOutput` for chat/completion, `EmbeddingOutput` for embedding, any JSON for predict.
    output: Any
    finish_reason: FinishReason | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    timings: Timings = msgspec.field(default_factory=Timings)


class ErrorResult(msgspec.Struct, frozen=True, tag="error.v1", tag_field="type"):
    id: str
    code: ErrorCode
    message: str
    #: True when the same request may succeed if sent again later.
    retryable: bool = False
    #: The request field at fault, in OpenAI's notation without the wire envelope
    #: (`messages[0].content[1]`, `response_format`); None when no one field is. Added after
    #: v1's first release: absent from older workers, ignored by older readers.
    param: str | None = None
    #: `rate_limit_exceeded`: the milliseconds after which the request may be admitted
    #: (OpenAI's `retry-after-ms`). Added after v1's first release, like `param`.
    retry_after_ms: int | None = None


class CancelRequest(msgspec.Struct, frozen=True, tag="cancel.v1", tag_field="type"):
    """Published on `jetserve.cancel.<model>.<id>`: stop work on that request."""

    id: RequestId
    reason: str = "client"


class WorkerInfo(msgspec.Struct, frozen=True, tag="worker.v1", tag_field="type"):
    """A worker's answer on `jetserve.ping.<model>`."""

    worker_id: str
    model: ModelName
    capacity: int
    in_flight: int
    kinds: list[str]
    draining: bool = False
    #: `loading`: the model is still loading (requests queue and are served once it is
    #: ready); `serving`; `draining`.
    state: Literal["loading", "serving", "draining"] = "serving"
    #: Tensors in and out (Open Inference Protocol), for models that declare them.
    metadata: ModelMetadata | None = None
    #: The kinds of input the model takes (`schemas.content.Input`); older workers, which
    #: do not send it, took text only.
    inputs: list[str] = msgspec.field(default_factory=lambda: ["text"])


Reply = StreamChunk | FinalResult | ErrorResult


class DeliveryRecord(
    msgspec.Struct, frozen=True, tag="delivery-record.v1", tag_field="type", omit_defaults=True
):
    """What workers know of one request message's deliveries: the value kept per message in
    the KV bucket `names.HANDBACK_BUCKET` (workers/handbacks.py). Delivery numbers are
    JetStream's delivery counts (1-based)."""

    #: Deliveries that do not count as attempts: hand-backs of draining workers, and deliveries
    #: that ended in a crash while the message was not running alone.
    free: int = 0
    #: The last delivery whose end is accounted for (handed back, failed, or resolved as a
    #: crash when the next delivery arrived).
    ended: int = 0
    #: The last delivery that ran in a quarantine group, and that group's size (1: alone).
    run: int = 0
    group: int = 0
    #: The largest group the message may run in next; 0: not a suspect of a group crash.
    bound: int = 0
