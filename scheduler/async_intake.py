"""Async single requests: taking them in over NATS, and publishing the ones left behind.

Over NATS a client publishes an `InferenceRequest` to `jetserve.async.submit` (JetStream: the
PubAck means it is stored); a tenant's own NATS user publishes to
`jetserve.async.submit.<tenant>`, and the request is that tenant's, whatever its body says (one
naming another tenant is terminated unrecorded), and counts against its limits here (the
bridge counted those it took over HTTP: `producer/direct_limits.py`); one over a limit is
recorded failed, `rate_limit_exceeded` with `retry_after_ms`, and not published. This loop
records it in Postgres, publishes it to its model's online subject with the durable reply subject
`jetserve.results.async.<id>` (a streamed one, a background response: its event log
`jetserve.revents.<id>`), and only then acks it. Over HTTP the bridge records and publishes
the request itself; a request it recorded but could not publish (it died in between) stays
`queued` and is published again here.
"""

from __future__ import annotations

import logging

import asyncpg
import msgspec
from nats.aio.msg import Msg

from natsio.acks import Outcome
from natsio.inbox import AckInbox, Message
from natsio.routes import RouteTable, shadow_request
from producer.direct_limits import DirectLimits, Refused
from scheduler.mirror import publish_mirrors
from scheduler.store import async_requests as ar
from scheduler.store.webhooks import endpoint_by_url
from scheduler.urlguard import registered_form
from schemas import names
from schemas.codec import decode_request, encode, encoding_of
from schemas.errors import ErrorCode
from schemas.messages import DEFAULT_TENANT, ErrorResult, InferenceRequest
from schemas.names import Header

log = logging.getLogger(__name__)

NATS_ENDPOINT = "nats"


def dispatch_message(request: InferenceRequest, data: bytes) -> Message:
    return Message(
        names.request_subject(request.model, request.priority),
        data,
        {
            Header.MSG_ID.value: request.id,
            # A streamed one (a background response) replies to its event log.
            Header.REPLY_TO.value: names.async_reply_subject(request.id, events=request.stream),
        },
    )


class AsyncIntake:
    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: AckInbox,
        *,
        keep_s: float,
        routes: RouteTable | None = None,
        limits: DirectLimits | None = None,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._routes = routes
        self._publisher = publisher
        self._keep_s = keep_s

    async def take(self, msgs: list[Msg]) -> None:
        """Record and publish submitted requests; each is acked once that is done (a request
        that cannot be decoded is terminated: it can never run)."""
        for msg in msgs:
            try:
                request = decode_request(msg.data, encoding_of(msg.headers))
            except msgspec.DecodeError as exc:
                log.warning("async submission on NATS refused: %s", exc)
                await msg.term()
                continue
            owner = names.tenant_of_async_subject(msg.subject)
            if owner is not None and request.tenant != owner:
                if request.tenant != DEFAULT_TENANT:
                    log.warning(
                        "async submission %s on tenant %s's subject claims tenant %s: refused",
                        request.id,
                        owner,
                        request.tenant,
                    )
                    await msg.term()
                    continue
                request = msgspec.structs.replace(request, tenant=owner)
            refused = None
            if owner is not None and self._limits is not None:
                # Counted at submission, not held in flight (as the bridge counts its own).
                verdict = await self._limits.admit(
                    owner,
                    request.model,
                    len(msg.data),
                    request.parameters.max_tokens,
                    hold=False,
                )
                refused = verdict if isinstance(verdict, Refused) else None
            await self._take_one(request, refused)
            await msg.ack()

    async def _take_one(self, request: InferenceRequest, refused: Refused | None = None) -> None:
        mirror = None
        if self._routes is not None:  # a served name: recorded and published for its version
            served = request.model
            sticky = request.metadata.get(names.ROUTE_KEY_METADATA)
            request, shadow = self._routes.resolve(request, sticky)
            if shadow is not None:
                mirror = (served, shadow_request(request, shadow))
        data = encode(request)
        raw_callback = request.metadata.get(names.CALLBACK_URL_METADATA)
        callback = registered_form(raw_callback) if raw_callback else None
        await ar.insert(
            self._pool,
            request_id=request.id,
            tenant=request.tenant,
            endpoint=NATS_ENDPOINT,
            model=request.model,
            request=data,
            callback_url=callback,
        )
        if refused is not None:
            await self._fail(
                request.id,
                ErrorCode.RATE_LIMIT_EXCEEDED,
                refused.message,
                retry_after_ms=refused.retry_after_ms,
            )
            return
        if callback and await endpoint_by_url(self._pool, request.tenant, callback) is None:
            await self._fail(
                request.id,
                ErrorCode.INVALID_REQUEST,
                f"callback_url {callback[:200]!r} is not a webhook endpoint of tenant "
                f"{request.tenant!r}: register it first (POST /v1/webhooks)",
            )
            return
        await self.publish([(request, data)])
        if mirror is not None and self._routes is not None:
            await publish_mirrors(self._publisher, self._routes, [mirror])

    async def publish(self, requests: list[tuple[InferenceRequest, bytes]]) -> None:
        results = await self._publisher.publish_many([dispatch_message(r, d) for r, d in requests])
        for (request, _), (outcome, _ack) in zip(requests, results, strict=True):
            if outcome is Outcome.STORED:
                await ar.mark_dispatched(self._pool, request.id)
            elif outcome is Outcome.NO_STREAM:
                await self._fail(
                    request.id, ErrorCode.UNKNOWN_MODEL, f"model {request.model!r} does not exist"
                )
            elif not outcome.later:  # too large, or refused for another reason
                await self._fail(request.id, ErrorCode.INVALID_REQUEST, "refused by the queue")
            # RETRY, FULL: stays queued; `requeue` publishes it again later.

    async def _fail(
        self, request_id: str, code: ErrorCode, message: str, retry_after_ms: int | None = None
    ) -> None:
        result = ErrorResult(
            id=request_id,
            code=code,
            message=message,
            retryable=retry_after_ms is not None,
            retry_after_ms=retry_after_ms,
        )
        reply = encode(result)
        async with self._pool.acquire() as conn, conn.transaction():
            await ar.store_results(conn, [(request_id, False, reply)], self._keep_s)

    async def requeue(self, older_than_s: float) -> int:
        """Publish again the requests still `queued` after `older_than_s`."""
        rows = await ar.stale_queued(self._pool, older_than_s)
        if rows:
            await self.publish([(decode_request(r.request), r.request) for r in rows])
            log.info("published %d async requests left queued", len(rows))
        return len(rows)
