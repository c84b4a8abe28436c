"""The objects the Files, Batches, async-request and webhook routes return: OpenAI's shapes
(`object`, Unix-second timestamps), made from store rows. Pure."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar

import msgspec

from scheduler.store.async_requests import AsyncRow
from scheduler.store.batches import BatchRow
from scheduler.store.files import FileRow
from scheduler.store.webhooks import Endpoint
from schemas.messages import ErrorResult
from schemas.openai_errors import not_found
from schemas.openai_objects import Deleted, ListPage


class _Listed(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=_Listed)
R = TypeVar("R")


def unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


class FileObject(msgspec.Struct, frozen=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class RequestCounts(msgspec.Struct, frozen=True):
    total: int
    completed: int
    failed: int


class ErrorObject(msgspec.Struct, frozen=True):
    code: str
    message: str
    #: The request field at fault (the worker's `ErrorResult.param`), when one is.
    param: str | None = None


class AsyncError(ErrorObject, frozen=True):
    """The error of an async request submitted over NATS (the worker's, as is)."""

    #: `rate_limit_exceeded`: when it may be submitted again (`ErrorResult.retry_after_ms`).
    retry_after_ms: int | None = None


class BatchError(ErrorObject, frozen=True):
    """An error of a batch as a whole, or of one line of its input file."""

    #: The input file's line at fault, when one is.
    line: int | None = None


class BatchErrors(msgspec.Struct, frozen=True):
    data: list[BatchError]
    object: str = "list"


class BatchObject(msgspec.Struct, frozen=True):
    id: str
    object: str
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    model: str | None = None


class ResponseObject(msgspec.Struct, frozen=True):
    status_code: int
    request_id: str
    body: msgspec.Raw


class AsyncRequestObject(msgspec.Struct, frozen=True):
    """`GET /v1/async/requests/{id}`: like a batch output line, with a status."""

    id: str
    status: str
    endpoint: str
    model: str
    created_at: int
    completed_at: int | None
    expires_at: int | None
    response: ResponseObject | None = None
    error: AsyncError | None = None
    object: str = "async.request"


class WebhookEndpointObject(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    url: str
    events: list[str]
    created_at: int
    #: Shown once, when the endpoint is created.
    secret: str | None = None
    object: str = "webhook_endpoint"


class WebhookEndpointList(msgspec.Struct, frozen=True):
    data: list[WebhookEndpointObject]
    object: str = "list"


def file_object(f: FileRow) -> FileObject:
    return FileObject(f.id, f.bytes, int(f.created_at.timestamp()), f.filename, f.purpose)


def batch_object(b: BatchRow) -> BatchObject:
    errors = None
    if b.errors:
        errors = BatchErrors([msgspec.convert(e, BatchError) for e in b.errors])
    return BatchObject(
        id=b.id,
        object="batch",
        endpoint=b.endpoint,
        errors=errors,
        input_file_id=b.input_file_id,
        completion_window=b.completion_window,
        status=str(b.status),
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        created_at=int(b.created_at.timestamp()),
        in_progress_at=unix(b.in_progress_at),
        expires_at=unix(b.expires_at),
        finalizing_at=unix(b.finalizing_at),
        completed_at=unix(b.completed_at),
        failed_at=unix(b.failed_at),
        expired_at=unix(b.expired_at),
        cancelling_at=unix(b.cancelling_at),
        cancelled_at=unix(b.cancelled_at),
        request_counts=RequestCounts(b.total, b.completed, b.failed),
        metadata=b.metadata,
        model=b.model,
    )


def deleted(found: bool, what: str, object_id: str, param: str) -> Deleted:
    """OpenAI's answer to a DELETE; 404 naming `param` if there was nothing to delete."""
    if not found:
        raise not_found(what, object_id, param)
    return Deleted(object_id, what)


def list_page(rows: list[R], limit: int, to_object: Callable[[R], T]) -> ListPage[T]:
    """The page of the first `limit` of `limit + 1` rows (one more tells `has_more`)."""
    data = [to_object(r) for r in rows[:limit]]
    more = len(rows) > limit
    return ListPage(data, data[0].id if data else None, data[-1].id if data else None, more)


def endpoint_object(e: Endpoint, *, with_secret: bool = False) -> WebhookEndpointObject:
    return WebhookEndpointObject(
        e.id, e.url, e.events, int(e.created_at.timestamp()), e.secret if with_secret else None
    )


def async_request_object(
    r: AsyncRow, response: ResponseObject | None = None, error: ErrorResult | None = None
) -> AsyncRequestObject:
    """The object of an async request; `error`: the worker's, when it is passed on as is."""
    return AsyncRequestObject(
        id=r.id,
        status=r.status,
        endpoint=r.endpoint,
        model=r.model,
        created_at=int(r.created_at.timestamp()),
        completed_at=unix(r.completed_at),
        expires_at=unix(r.expires_at),
        response=response,
        error=None
        if error is None
        else AsyncError(error.code, error.message, error.param, error.retry_after_ms),
    )
