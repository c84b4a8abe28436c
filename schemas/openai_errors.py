"""Errors in OpenAI's HTTP shape: `{"error": {"message", "type", "param", "code"}}`.

The error body is part of the HTTP contract, shared by every route the bridge serves (the
OpenAI-compatible routes in `producer/http` and the batch/file routes in `scheduler/api`), so
it lives here. `ApiError` is the one exception those routes raise; the app renders it.
Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"missing required field `([^`]+)`")


class ErrorBody(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct, frozen=True):
    error: ErrorBody


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def envelope(self) -> ErrorEnvelope:
        kind = _TYPES.get(
            self.status, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        return ErrorEnvelope(ErrorBody(self.message, kind, self.param, self.code))

    def body(self) -> bytes:
        return _encoder.encode(self.envelope())


def invalid(message: str, param: str | None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def not_found(what: str, object_id: str, param: str | None = None) -> ApiError:
    return ApiError(
        404, f"No such {what}: '{object_id[:200]}'", code=f"{what}_not_found", param=param
    )


_T = TypeVar("_T")


def require_found(value: _T | None, what: str, object_id: str, param: str | None = None) -> _T:
    """`value`, or the 404 of `not_found` when it is None (what a tenant does not own is not
    found either)."""
    if value is None:
        raise not_found(what, object_id, param)
    return value


def decode_error_param(exc: msgspec.DecodeError) -> str | None:
    """The field a msgspec validation error names (`$.a.b` -> `a.b`), else None."""
    text = str(exc)
    path = _PATH_RE.search(text)
    prefix = path.group(1) if path else ""
    missing = _MISSING_RE.search(text)
    if missing:
        return f"{prefix}.{missing.group(1)}" if prefix else missing.group(1)
    return prefix or None


def request_param(text: str) -> str | None:
    """The request field a worker's error message names (msgspec's `$.payload.messages[0]`),
    as the OpenAI body names it (`messages[0]`): the wire envelope's `payload.` and
    `parameters.` are not the caller's."""
    found = _PATH_RE.search(text)
    if found is None or not found.group(1):
        return None
    return found.group(1).removeprefix("payload.").removeprefix("parameters.")


#: What decoding an untrusted body can raise: msgspec raises UnicodeDecodeError, not a
#: DecodeError, for a string that is not valid UTF-8.
BODY_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)


def from_decode_error(exc: msgspec.DecodeError | UnicodeDecodeError) -> ApiError:
    """A body msgspec refused: the parameter comes from its `$.field` path."""
    if isinstance(exc, UnicodeDecodeError):
        return invalid(f"the body is not valid UTF-8: {exc.reason}", None)
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return invalid(f"invalid JSON body: {text}", None)
    return invalid(text, decode_error_param(exc))
