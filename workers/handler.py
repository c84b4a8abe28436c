"""One message in, one result out, one acknowledgement.

The handler decodes and checks the request, runs it on the backend, publishes chunks and the
final (or error) result to the reply subject, then acks. What happens to the message on
failure is decided by `errors.disposition()`:

    bad input / cancelled / deadline passed   -> ErrorResult, term
    a reply subject no one may publish to      -> term, no reply (nowhere safe to send it)
    model failure, attempts left              -> nak with backoff (redelivered, maybe elsewhere)
    model failure on the last attempt          -> dead-letter stream, ErrorResult, term
    more than `max_attempts` attempts          -> dead-letter without running (a request that
                                                  crashed the process each time it ran alone);
                                                  hand-backs of draining workers and crashes
                                                  beside other work do not count
                                                  (workers/handbacks.py)
    engine dead                               -> nak at once, worker stops
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import msgspec

from producer.direct_limits import DirectLimits, Refused
from schemas.codec import DecodeError, decode_request, encoding_of
from schemas.content import DEFAULT_INPUTS, InvalidContent, check_messages
from schemas.errors import ErrorCode
from schemas.messages import (
    DEFAULT_TENANT,
    ErrorResult,
    FinalResult,
    InferenceRequest,
    Timings,
    TokenLogprobs,
)
from schemas.names import (
    Encoding,
    Header,
    InvalidName,
    dlq_subject,
    tenant_of_request_subject,
    validate_reply_subject,
)
from schemas.openai_errors import request_param
from schemas.payloads import ChatPayload, typed_payload
from workers.backend import Backend, ChunkSink, Completion
from workers.cancels import CancelRegistry
from workers.errors import (
    Disposition,
    PermanentError,
    detail_message,
    disposition,
    public_message,
    retry_delay_s,
)
from workers.handbacks import HandBacks
from workers.jsmeta import ack_info
from workers.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: A plain string: looking a StrEnum member up in a dict costs ~3 times as much.
_REPLY_TO = Header.REPLY_TO.value


class Delivery(Protocol):
    """The parts of a JetStream message the handler uses (nats-py's `Msg` has them)."""

    subject: str
    data: bytes

    @property
    def headers(self) -> Mapping[str, str] | None: ...

    @property
    def metadata(self) -> Any: ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


class Sink(Protocol):
    """Where one request's replies go (`replies.ReplySink` on NATS)."""

    request_id: str

    @property
    def chunk(self) -> ChunkSink:
        """Publishes one chunk (the backend's `ChunkSink`)."""
        ...

    async def final(self, result: FinalResult | ErrorResult) -> None: ...


class Publisher(Protocol):
    """Makes reply sinks and publishes to the dead-letter stream."""

    def sink(
        self, subject: str | None, encoding: Encoding, request_id: str, attempt: int
    ) -> Sink: ...

    async def dead_letter(self, subject: str, data: bytes, headers: dict[str, str]) -> None: ...


class Handler:
    def __init__(
        self,
        *,
        model: str,
        backend: Backend,
        publisher: Publisher,
        cancels: CancelRegistry,
        metrics: WorkerMetrics,
        max_attempts: int,
        on_engine_dead: Callable[[BaseException], None],
        clock: Callable[[], float] = time.time,
        handbacks: HandBacks | None = None,
        max_deliveries: int | None = None,
        inputs: Collection[str] = DEFAULT_INPUTS,
        limits: DirectLimits | None = None,
    ) -> None:
        """`handbacks`: where hand-backs are recorded, so that they do not count as attempts
        (None: every delivery counts). `max_deliveries`: the consumer's `max_deliver`; the
        last delivery JetStream makes is treated as the last attempt. `inputs`: the kinds of
        input the model takes (`schemas.content`); chat content of any other is refused.
        `limits`: the tenants' limits, applied to requests on a tenant's own subject (those
        came straight from the tenant; the bridge counted the others: `direct_limits.py`)."""
        self._model = model
        self._inputs = frozenset(inputs)
        self._backend = backend
        self._publisher = publisher
        self._cancels = cancels
        self._max_attempts = max_attempts
        self._handbacks = handbacks
        self._max_deliveries = max_deliveries or max_attempts + 1
        self._on_engine_dead = on_engine_dead
        self._clock = clock
        self._limits = limits
        # Bound metric children: label lookups are too slow for the per-message path.
        self._count = {
            o: metrics.requests.labels(model, o)
            for o in ("ok", "error", "retry", "dead_letter", "handed_back")
        }
        self._queue_time = metrics.queue_time.labels(model)
        self._e2e = metrics.e2e.labels(model)
        self._ttft = metrics.ttft.labels(model)
        self._tpot = metrics.tpot.labels(model)
        self._prompt_tokens = metrics.prompt_tokens.labels(model)
        self._generation_tokens = metrics.generation_tokens.labels(model)
        #: Error results by code: rare, so labelled when they happen.
        self._errors = metrics.errors

    async def __call__(self, msg: Delivery) -> None:
        pulled = self._clock()
        delivered, stored = _delivery_info(msg, pulled)
        attempt = delivered
        headers = msg.headers or {}
        reply_to = headers.get(_REPLY_TO)
        if reply_to:
            try:
                validate_reply_subject(reply_to)
            except InvalidName:
                await self._unanswerable(msg)
                return
        try:
            encoding = encoding_of(headers)
        except DecodeError as exc:
            sink = self._publisher.sink(reply_to, Encoding.JSON, _guess_id(msg), attempt)
            await self._reject(msg, sink, ErrorCode.INVALID_REQUEST, str(exc))
            return
        try:
            request = decode_request(msg.data, encoding)
        except DecodeError as exc:
            sink = self._publisher.sink(reply_to, encoding, _guess_id(msg), attempt)
            code = (
                ErrorCode.UNSUPPORTED_VERSION
                if "`$.type`" in str(exc)
                else (ErrorCode.INVALID_REQUEST)
            )
            message = f"malformed request: {exc}"
            await self._reject(msg, sink, code, message, request_param(message))
            return
        sink = self._publisher.sink(reply_to, encoding, request.id, attempt)
        owner = tenant_of_request_subject(msg.subject)
        if owner is not None and request.tenant != owner:  # a tenant's own NATS user sent it
            if request.tenant != DEFAULT_TENANT:
                message = (
                    f"$.tenant: {request.tenant!r} is not the tenant of the subject {owner!r} "
                    "(a tenant's NATS user publishes only as that tenant)"
                )
                await self._reject(msg, sink, ErrorCode.INVALID_REQUEST, message, "tenant")
                return
            request = msgspec.structs.replace(request, tenant=owner)
        problem = self._precheck(request, pulled)
        if problem is not None:
            await self._reject(msg, sink, *problem)
            return
        if delivered > 1 and self._handbacks is not None:  # redeliveries only
            attempt = await self._handbacks.attempt(msg, delivered)  # type: ignore[arg-type]
        if attempt > self._max_attempts:
            await self._dead_letter(
                msg,
                sink,
                request.id,
                attempt,
                f"not finished after {self._max_attempts} deliveries "
                "(the worker died or timed out on each)",
            )
            return
        self._queue_time.observe(max(0.0, pulled - stored))
        admission = None
        if owner is not None and self._limits is not None and delivered == 1:
            # Counted once, at its first delivery (a redelivery was counted then).
            verdict = await self._limits.admit(
                owner, request.model, len(msg.data), request.parameters.max_tokens
            )
            if isinstance(verdict, Refused):
                await self._refuse(msg, sink, verdict)
                return
            admission = verdict
        # JetStream's last delivery is the last attempt, whatever the hand-backs.
        last = attempt >= self._max_attempts or delivered >= self._max_deliveries
        if admission is None:
            await self._run(msg, sink, request, attempt, last, pulled, stored)
            return
        used = None
        try:
            used = await self._run(msg, sink, request, attempt, last, pulled, stored)
        finally:
            admission.finish(used)

    def _precheck(
        self, request: InferenceRequest, now: float
    ) -> tuple[ErrorCode, str, str | None] | None:
        """Why the request cannot run here: (code, message, the field at fault), or None."""
        if request.model != self._model:
            message = f"request for model {request.model!r} published on {self._model!r}'s subject"
            return ErrorCode.MODEL_MISMATCH, message, "model"
        if request.kind not in self._backend.kinds:
            message = (
                f"model {self._model!r} does not serve {request.kind!r} requests "
                f"(serves {sorted(self._backend.kinds)})"
            )
            return ErrorCode.UNSUPPORTED_KIND, message, "model"
        if request.kind == "chat":
            problem = self._content_problem(request)
            if problem is not None:
                return ErrorCode.INVALID_REQUEST, problem.message, problem.param
        if self._cancels.is_cancelled(request.id):
            return ErrorCode.CANCELLED, "cancelled before it started", None
        if request.deadline_ms is not None and request.deadline_ms <= now * 1000:
            return ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued", None
        return None

    def _content_problem(self, request: InferenceRequest) -> InvalidContent | None:
        """A chat message the model cannot take (a missing field, an image for a text
        model). A payload that does not decode is the backend's to refuse."""
        try:
            payload = typed_payload(request)
        except msgspec.ValidationError:
            return None
        assert isinstance(payload, ChatPayload)
        try:
            check_messages(payload.messages, self._inputs, self._model)
        except InvalidContent as exc:
            return exc
        return None

    async def _run(
        self,
        msg: Delivery,
        sink: Sink,
        request: InferenceRequest,
        attempt: int,
        last: bool,
        pulled: float,
        stored: float,
    ) -> int | None:
        """Run the request and answer it: the tokens it used, if it ran to the end."""
        emit = sink.chunk if request.stream else _discard
        task = asyncio.current_task()
        assert task is not None
        # A backend that handles deadlines itself (the engine) finishes first and returns
        # partial output; the registry's cancel half a second later is the backstop.
        backstop = None if request.deadline_ms is None else request.deadline_ms / 1000 + 0.5
        self._cancels.register(request.id, task, backstop)
        try:
            completion = await self._backend.run(request, emit)
        except asyncio.CancelledError:
            if self._cancels.is_cancelled(request.id):
                task.uncancel()
                await self._reject(msg, sink, ErrorCode.CANCELLED, "cancelled by the requester")
                return None
            if self._cancels.expired(request.id):
                task.uncancel()
                await self._reject(msg, sink, ErrorCode.DEADLINE_EXCEEDED, "deadline passed")
                return None
            # The worker is shutting down and the drain timed out: hand the message back
            # (recorded: the delivery does not count as an attempt).
            with contextlib.suppress(Exception):
                if self._handbacks is not None:
                    await self._handbacks.hand_back(msg)  # type: ignore[arg-type]
                else:
                    await msg.nak()
            self._count["handed_back"].inc()
            raise
        except Exception as exc:
            await self._failed(msg, sink, attempt, last, exc)
            return None
        finally:
            self._cancels.unregister(request.id)
        await sink.final(self._result(request, completion, pulled, stored))
        await msg.ack()
        self._count["ok"].inc()
        return completion.usage.total_tokens

    def _result(
        self, request: InferenceRequest, done: Completion, pulled: float, stored: float
    ) -> FinalResult:
        now = self._clock()
        created = request.created_ms / 1000 if request.created_ms else stored
        ttft_ms = tpot_ms = None
        if done.first_token_at is not None:
            ttft_ms = (done.first_token_at - created) * 1000
            if done.output_tokens > 1:
                tpot_ms = (now - done.first_token_at) * 1000 / (done.output_tokens - 1)
        timings = Timings(
            queue_ms=max(0.0, (pulled - stored) * 1000),
            ttft_ms=ttft_ms,
            tpot_ms=tpot_ms,
            e2e_ms=max(0.0, (now - created) * 1000),
        )
        self._e2e.observe(timings.e2e_ms / 1000)
        if ttft_ms is not None:
            self._ttft.observe(max(0.0, ttft_ms / 1000))
        if tpot_ms is not None:
            self._tpot.observe(tpot_ms / 1000)
        if done.usage.prompt_tokens:
            self._prompt_tokens.inc(done.usage.prompt_tokens)
        if done.usage.completion_tokens:
            self._generation_tokens.inc(done.usage.completion_tokens)
        # Each field named: the result is built from the request's and the completion's.
        return FinalResult(
            id=request.id,
            model=request.model,
            output=done.output,
            finish_reason=done.finish_reason,
            usage=done.usage,
            timings=timings,
        )

    async def _failed(
        self, msg: Delivery, sink: Sink, attempt: int, last: bool, exc: Exception
    ) -> None:
        request_id = sink.request_id
        action = disposition(exc)
        message = public_message(exc)
        if action is Disposition.TERM:
            code = exc.code if isinstance(exc, PermanentError) else ErrorCode.INVALID_REQUEST
            param = exc.param if isinstance(exc, PermanentError) else None
            await self._reject(msg, sink, code, message, param)
        elif action is Disposition.STOP:
            log.error("engine dead while running %s: %s", request_id, type(exc).__name__)
            await msg.nak()
            self._count["handed_back"].inc()
            self._on_engine_dead(exc)
        elif last:
            await self._dead_letter(msg, sink, request_id, attempt, message, detail_message(exc))
        else:
            # The model's message may quote its input: by default only its type is logged
            # (it reaches the requester, and the dead-letter headers if it comes to that).
            log.warning(
                "request %s failed on attempt %d (will retry): %s",
                request_id,
                attempt,
                type(exc).__name__,
            )
            log.debug("request %s: %s", request_id, detail_message(exc))
            if self._handbacks is not None:  # an attempt that ended, not a crash
                await self._handbacks.failed(msg)  # type: ignore[arg-type]
            await msg.nak(delay=retry_delay_s(attempt))
            self._count["retry"].inc()

    async def _reject(
        self,
        msg: Delivery,
        sink: Sink,
        code: ErrorCode,
        message: str,
        param: str | None = None,
    ) -> None:
        log.info("request %s rejected: %s", sink.request_id, code.value)
        await sink.final(ErrorResult(id=sink.request_id, code=code, message=message, param=param))
        await msg.term()
        self._count_error(code)

    async def _refuse(self, msg: Delivery, sink: Sink, refused: Refused) -> None:
        """Over one of its tenant's limits: `rate_limit_exceeded`, not run."""
        result = ErrorResult(
            id=sink.request_id,
            code=ErrorCode.RATE_LIMIT_EXCEEDED,
            message=refused.message,
            retryable=True,
            retry_after_ms=refused.retry_after_ms,
        )
        await sink.final(result)
        await msg.term()
        self._count_error(ErrorCode.RATE_LIMIT_EXCEEDED)

    async def _unanswerable(self, msg: Delivery) -> None:
        """The reply subject is not one a worker may publish to (a wildcard, whitespace, a
        system or jetserve control subject): terminate without running or replying."""
        log.warning("request %r refused: invalid %s", _guess_id(msg), Header.REPLY_TO.value)
        await msg.term()
        self._count_error(ErrorCode.INVALID_REQUEST)

    async def _dead_letter(
        self,
        msg: Delivery,
        sink: Sink,
        request_id: str,
        attempt: int,
        reason: str,
        detail: str | None = None,
    ) -> None:
        """Park the message in the dead-letter stream (with `detail`, the full reason, in its
        headers) and tell the requester `reason`."""
        log.error("request %s dead-lettered after %d deliveries", request_id, attempt)
        headers = {k: v for k, v in (msg.headers or {}).items() if k != Header.MSG_ID}
        headers.update(
            {
                Header.ERROR_CODE.value: ErrorCode.DEAD_LETTERED.value,
                Header.ERROR_MESSAGE.value: (detail or reason)[:1000],
                Header.DELIVERIES.value: str(attempt),
                Header.ORIGINAL_SUBJECT.value: msg.subject,
            }
        )
        await self._publisher.dead_letter(dlq_subject(self._model), msg.data, headers)
        await sink.final(
            ErrorResult(
                id=request_id,
                code=ErrorCode.DEAD_LETTERED,
                message=f"failed on {attempt} deliveries; kept in the dead-letter stream: {reason}",
            )
        )
        await msg.term()
        self._count_error(ErrorCode.DEAD_LETTERED, outcome="dead_letter")

    def _count_error(self, code: ErrorCode, outcome: str = "error") -> None:
        self._count[outcome].inc()
        self._errors.labels(self._model, code.value).inc()


async def _discard(
    delta: str,
    token_ids: list[int] | None = None,
    logprobs: list[TokenLogprobs] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> None:
    return None


def _delivery_info(msg: Delivery, now: float) -> tuple[int, float]:
    """(delivery count, time the message was stored) from the JetStream ack subject."""
    info = ack_info(getattr(msg, "reply", None))
    if info is not None:
        return info.delivered, info.timestamp_s
    try:  # fakes and anything without a JetStream reply subject
        meta = msg.metadata
        return int(meta.num_delivered), float(meta.timestamp.timestamp())
    except Exception:
        return 1, now


def _guess_id(msg: Delivery) -> str:
    """The request id of an undecodable message, for its error reply."""
    try:
        value = msgspec.json.decode(msg.data)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"])[:128]
    except Exception:
        pass
    return (msg.headers or {}).get(Header.MSG_ID, "")[:128]
