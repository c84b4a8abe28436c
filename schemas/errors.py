"""Machine-readable error codes carried by `ErrorResult.code` (and the HTTP bridge's `code`)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    #: The message could not be decoded, or a field is invalid. Not retried.
    INVALID_REQUEST = "invalid_request"
    #: The `type` tag names a schema version this worker does not know.
    UNSUPPORTED_VERSION = "unsupported_version"
    #: The model does not serve this request kind (e.g. `embedding` on a chat model).
    UNSUPPORTED_KIND = "unsupported_kind"
    #: The request names a model other than the subject it was published on.
    MODEL_MISMATCH = "model_mismatch"
    #: No such model (no stream for it).
    UNKNOWN_MODEL = "unknown_model"
    #: Prompt plus `max_tokens` does not fit the model's context.
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    #: The deadline passed before the request finished (or before it started).
    DEADLINE_EXCEEDED = "deadline_exceeded"
    #: The requester cancelled.
    CANCELLED = "cancelled"
    #: The model failed on every delivery; the message is kept in the dead-letter stream.
    DEAD_LETTERED = "dead_lettered"
    #: The model raised; the request will be retried.
    MODEL_ERROR = "model_error"
    #: The model's backlog is at its bound; try later.
    BACKLOG_FULL = "backlog_full"
    #: No worker took the request in time.
    NO_WORKERS = "no_workers"
    #: Over one of the tenant's limits (requests or tokens per minute, requests in flight);
    #: `ErrorResult.retry_after_ms` says when to send it again.
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    INTERNAL_ERROR = "internal_error"
