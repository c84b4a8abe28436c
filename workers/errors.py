"""One error tree, keyed by what the queue should do with the message.

    RetryableError   -> nak with a backoff delay; redelivered (to any replica)
    PermanentError   -> term, and an `ErrorResult` to the requester
    EngineDeadError  -> nak at once, stop pulling, exit the process (the pod restarts)

Any other exception from a model counts as retryable: a model that fails on every delivery is
dead-lettered after `max_attempts` deliveries. `disposition()` is the one place that maps an
exception to an action.
"""

from __future__ import annotations

import asyncio
from enum import Enum, auto

from schemas.errors import ErrorCode


class WorkerError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    #: The request field at fault (`ErrorResult.param`), when one is.
    param: str | None = None

    def __init__(
        self, message: str, code: ErrorCode | None = None, *, param: str | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.param = param

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.value


class RetryableError(WorkerError):
    """A transient failure: the same request may succeed later or elsewhere."""

    code = ErrorCode.MODEL_ERROR


class PermanentError(WorkerError):
    """The request itself is bad: retrying cannot help."""

    code = ErrorCode.INVALID_REQUEST


class DeadlineExceeded(PermanentError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Cancelled(PermanentError):
    code = ErrorCode.CANCELLED


class EngineDeadError(WorkerError):
    """The model runtime is broken (e.g. the engine thread died): this process must exit."""


class Disposition(Enum):
    #: Hand the message back for redelivery after a delay.
    RETRY = auto()
    #: Terminate it and tell the requester why.
    TERM = auto()
    #: Hand it back at once and stop this worker.
    STOP = auto()


def disposition(exc: BaseException) -> Disposition:
    if isinstance(exc, EngineDeadError):
        return Disposition.STOP
    if isinstance(exc, PermanentError):
        return Disposition.TERM
    if isinstance(exc, asyncio.CancelledError):
        return Disposition.RETRY
    return Disposition.RETRY


def public_message(exc: BaseException) -> str:
    """What the requester is told of a failure. A `WorkerError`'s message is written for the
    requester; any other exception's text is the model's internals (it may quote input,
    paths, other state), so it is summarised by its type. The full text goes only to the
    dead-letter headers (for operators) and to DEBUG logs."""
    if isinstance(exc, WorkerError):
        return exc.message
    return f"the model raised {type(exc).__name__}"


def detail_message(exc: BaseException) -> str:
    """The full text of a failure, for operators (the dead-letter headers)."""
    if isinstance(exc, WorkerError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def retry_delay_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Exponential backoff for the `attempt`-th failed delivery (1-based)."""
    return float(min(cap_s, base_s * 2 ** max(0, attempt - 1)))
