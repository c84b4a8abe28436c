"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

The shape and `ApiError` live in `schemas/openai_errors.py` (the batch routes raise it too);
re-exported here. `ApiError` is the one exception the routes raise; `from_*` functions map
everything else (bad JSON, producer exceptions, worker `ErrorResult`s) onto it. 500 is never
used for bad input.
"""

from __future__ import annotations

from producer.errors import (
    BacklogFull,
    InvalidRequest,
    JetserveError,
    ModelNotFound,
    RequestTimeout,
    RequestTooLarge,
)
from schemas.errors import ErrorCode
from schemas.messages import ErrorResult
from schemas.openai_errors import (
    ApiError,
    ErrorBody,
    ErrorEnvelope,
    from_decode_error,
    invalid,
    request_param,
)

__all__ = ["ApiError", "ErrorBody", "ErrorEnvelope", "from_decode_error", "invalid"]


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model `{model[:100]}` does not exist.", code="model_not_found", param="model"
    )


def from_producer_error(exc: JetserveError, model: str, retry_after_s: int) -> ApiError:
    """The one mapping of the client's errors (a request not taken: too large, invalid,
    unknown model, full backlog, NATS unavailable) to HTTP errors; the OpenAI routes and
    the batch API both use it."""
    if isinstance(exc, RequestTooLarge):
        return ApiError(413, exc.message, code="request_too_large")
    if isinstance(exc, InvalidRequest):
        return invalid(exc.message, None)
    if isinstance(exc, ModelNotFound):
        return model_not_found(model)
    if isinstance(exc, BacklogFull):
        return ApiError(
            429,
            f"The backlog of model `{model}` is full; retry later.",
            code=ErrorCode.BACKLOG_FULL.value,
            headers={"Retry-After": str(retry_after_s)},
        )
    if isinstance(exc, RequestTimeout):
        return deadline_exceeded()
    return ApiError(503, f"The queue is unavailable: {exc.message}", code="unavailable")


def deadline_exceeded() -> ApiError:
    return ApiError(
        504, "The request did not finish before its deadline.", code="deadline_exceeded"
    )


def no_workers(model: str, waited_s: float) -> ApiError:
    return ApiError(
        503,
        f"No worker of model `{model}` took the request within {waited_s:g}s, and none is "
        "running; the request was cancelled.",
        code=ErrorCode.NO_WORKERS.value,
    )


#: Worker error codes -> HTTP status. Anything not listed is a 500.
_RESULT_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.UNSUPPORTED_KIND: 400,
    ErrorCode.MODEL_MISMATCH: 400,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 400,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CANCELLED: 409,
    ErrorCode.BACKLOG_FULL: 429,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.NO_WORKERS: 503,
    ErrorCode.MODEL_ERROR: 500,
    ErrorCode.DEAD_LETTERED: 500,
    ErrorCode.INTERNAL_ERROR: 500,
}


def from_error_result(result: ErrorResult) -> ApiError:
    """The worker's `param` when it names one; for older workers, which do not, the field
    their message names."""
    status = _RESULT_STATUS.get(result.code, 500)
    message = result.message
    param = result.param
    if result.code is ErrorCode.DEAD_LETTERED:
        message = f"The model failed on every attempt; the request was set aside. {message}"
    elif param is None and result.code is ErrorCode.UNSUPPORTED_KIND:
        param = "model"
    elif param is None and result.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED:
        param = "messages"
    elif param is None and status == 400:
        param = request_param(message)
    return ApiError(status, message, code=result.code.value, param=param)
