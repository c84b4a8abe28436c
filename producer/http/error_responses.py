"""The app's exception handlers: every error leaves as an OpenAI-shaped body
(`schemas.openai_errors.ApiError`); 500 only for a bug."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from producer.http.errors import ApiError

log = logging.getLogger("producer.http.app")
JSON = "application/json"

Handler = Callable[[Request[Any, Any, Any], Any], Response[Any]]


def exception_handlers(
    retry_after_s: int, unavailable: Sequence[type[Exception]]
) -> dict[type[Exception], Handler]:
    """`unavailable`: exceptions that mean a backing service is down (e.g. the database's
    connection errors), answered 503 `service_unavailable` with `Retry-After`, not 500."""
    return {
        ApiError: _api_error,
        HTTPException: _http_error,
        **{cls: _unavailable(retry_after_s) for cls in unavailable},
        Exception: _internal_error,
    }


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return Response(exc.body(), status_code=exc.status, media_type=JSON, headers=exc.headers)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Framework-level refusals (413 while reading the body, unknown route, wrong method)."""
    status = exc.status_code
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        error = ApiError(
            413, f"The request body is larger than {limit} bytes.", code="request_too_large"
        )
    elif status == 404:
        error = ApiError(
            404, f"Unknown URL: {request.method} {request.url.path}", code="unknown_url"
        )
    elif status == 405:
        error = ApiError(
            405, f"Method {request.method} not allowed here.", code="method_not_allowed"
        )
    else:
        error = ApiError(status, str(exc.detail), code=None)
    return _api_error(request, error)


def _unavailable(
    retry_after_s: int,
) -> Callable[[Request[Any, Any, Any], Exception], Response[Any]]:
    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.warning(
            "%s %s: a backing service is unavailable: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        error = ApiError(
            503,
            "A backing service is unavailable; retry later.",
            code="service_unavailable",
            headers={"Retry-After": str(retry_after_s)},
        )
        return _api_error(request, error)

    return handle


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    error = ApiError(500, "Internal server error.", code="internal_error")
    return _api_error(request, error)
