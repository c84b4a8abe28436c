"""Exceptions raised by the producer client. One tree; `retryable` says if trying again later
can help."""

from __future__ import annotations

from schemas.errors import ErrorCode


class JetserveError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    retryable: bool = False

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidRequest(JetserveError):
    """Refused before sending: a bad model name, id or parameter."""

    code = ErrorCode.INVALID_REQUEST


class RequestTooLarge(InvalidRequest):
    """Larger than NATS (`max_payload`) or the model's stream (`max_msg_size`) accepts;
    nothing was stored."""


class ModelNotFound(JetserveError):
    """No stream exists for the model (it was never provisioned)."""

    code = ErrorCode.UNKNOWN_MODEL


class BacklogFull(JetserveError):
    """The model's stream is at its backlog bound; nothing was accepted."""

    code = ErrorCode.BACKLOG_FULL
    retryable = True


class Unavailable(JetserveError):
    """NATS did not acknowledge the publish in time; it may or may not have been stored.
    Retrying with the same request id is safe (de-duplicated)."""

    code = ErrorCode.INTERNAL_ERROR
    retryable = True


class RequestTimeout(JetserveError):
    """No result before the request's deadline."""

    code = ErrorCode.DEADLINE_EXCEEDED
    retryable = True


class RequestFailed(JetserveError):
    """The worker answered with an `ErrorResult`."""

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        retryable: bool | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retryable=retryable)
        #: The request field at fault (`ErrorResult.param`), when one is.
        self.param = param
