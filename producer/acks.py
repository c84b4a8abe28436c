"""Acknowledgement tracking: a request is published until JetStream stores or refuses it.

The one publish path of the client (`Client.begin`, and `Client.submit` built on it). A
publish's PubAck comes to the client's `AckInbox` and is handled the moment it arrives (no
future, task or callback per publish); its absence is noticed by a coarse timer at the
publish timeout. A publish that may not have been stored (no PubAck, JetStream unavailable,
the connection failing) is made again, with the same `Nats-Msg-Id` so JetStream stores it
once, until `publish_timeout_s` has passed.

    tracker = AckTracker(nc, CoarseTimers(), publish_timeout_s=5.0, on_reply=router.on_reply)
    await tracker.inbox.start()
    await tracker.publish(owner, subject, data, headers)
    # later: owner.stored(Accepted) or owner.refuse(JetserveError), once
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Protocol

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsio.acks import Outcome, PubAck, classify
from natsio.inbox import AckInbox
from producer.errors import (
    BacklogFull,
    JetserveError,
    ModelNotFound,
    RequestTooLarge,
    Unavailable,
)
from producer.pending import Accepted
from producer.timers import CoarseTimers
from schemas import names
from schemas.messages import InferenceRequest

#: A publish that failed these ways may be repeated (the same de-duplication id).
_RETRY = (TimeoutError, ConnectionError, nats.errors.OutboundBufferLimitError)
#: Between a publish that may not have been stored and the next.
_REPUBLISH_DELAY_S = 0.1


class Publication(Protocol):
    """Who waits for a request's PubAck (a `Pending`, or `Client.submit`'s waiter)."""

    request: InferenceRequest
    #: False once nobody waits for the outcome: the publish is no longer retried.
    live: bool

    def stored(self, accepted: Accepted) -> None: ...

    def refuse(self, error: JetserveError) -> None: ...


#: One publish to repeat: subject, data, headers, when to give up (time.monotonic()).
_Attempt = tuple[str, bytes, dict[str, str], float]
#: A publish waiting for its PubAck: who waits, the publish, its timer.
_Watched = tuple[Publication, _Attempt, int]


class AwaitedAck:
    """A `Publication` whose outcome is awaited: `future` resolves with the `Accepted`, or
    raises the refusal."""

    __slots__ = ("future", "live", "request")

    def __init__(self, request: InferenceRequest) -> None:
        self.request = request
        self.live = True
        self.future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()

    def stored(self, accepted: Accepted) -> None:
        if not self.future.done():
            self.future.set_result(accepted)

    def refuse(self, error: JetserveError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class AckTracker:
    def __init__(
        self,
        nc: NATS,
        timers: CoarseTimers,
        *,
        publish_timeout_s: float,
        on_reply: Callable[[str, Msg], None] | None = None,
    ) -> None:
        """`on_reply`: messages on the inbox that are not PubAcks (`AckInbox`'s `on_other`)."""
        self._timers = timers
        self.publish_timeout_s = publish_timeout_s
        self.inbox = AckInbox(nc, names.CLIENT_INBOX, on_ack=self.acked, on_other=on_reply)
        self._retries: set[asyncio.Task[None]] = set()

    async def publish(
        self,
        owner: Publication,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        give_up: float | None = None,
    ) -> None:
        """Publish; `owner.stored` or `owner.refuse` is called once the outcome is known,
        at the latest at `give_up` (time.monotonic(); by default `publish_timeout_s` from
        now). Raises (nothing published) when the request can never be published: the
        connection is closed (`Unavailable`), or the message is larger than the server allows
        (`RequestTooLarge`)."""
        if give_up is None:
            delay_s = self.publish_timeout_s
            give_up = time.monotonic() + delay_s
        else:
            delay_s = max(0.05, give_up - time.monotonic())
        attempt = (subject, data, headers, give_up)
        inbox = self.inbox
        token = inbox.token()
        # A coarse timer, not asyncio.timeout(): this runs for every request (the hot path).
        key = self._timers.call_later(delay_s, functools.partial(self._ack_timed_out, token))
        ack_to = inbox.expect(token, (owner, attempt, key))
        try:
            await inbox.nc.publish(subject, data, reply=ack_to, headers=headers)
        except _RETRY:
            if inbox.forget(token) is not None:
                self._timers.cancel(key)
                self._retry_or_refuse(owner, attempt)
        except BaseException as exc:
            if inbox.forget(token) is not None:
                self._timers.cancel(key)
            error = _publish_error(exc, owner.request, len(data), inbox)
            if error is None:
                raise
            raise error from None

    def acked(self, watched: _Watched, msg: Msg) -> None:
        """The inbox's PubAck handler."""
        owner, attempt, key = watched
        self._timers.cancel(key)
        if not owner.live:
            return  # nobody waits for the outcome any more
        outcome, ack = classify(msg)
        if outcome is Outcome.STORED:
            assert ack is not None
            owner.stored(Accepted(owner.request.id, ack.stream, ack.seq, ack.duplicate))
        elif outcome is Outcome.RETRY or (
            outcome is Outcome.NO_STREAM and not self.inbox.nc.is_connected
        ):
            self._retry_or_refuse(owner, attempt)
        else:
            owner.refuse(refusal(outcome, ack, owner.request))

    def _ack_timed_out(self, token: str) -> None:
        watched = self.inbox.forget(token)
        if watched is not None:
            self._retry_or_refuse(watched[0], watched[1])

    def _retry_or_refuse(self, owner: Publication, attempt: _Attempt) -> None:
        """The publish may not have been stored: publish again until `give_up`."""
        if not owner.live:
            return
        if time.monotonic() < attempt[3]:
            task = asyncio.get_running_loop().create_task(self._republish(owner, attempt))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        owner.refuse(Unavailable(f"request {owner.request.id} not acknowledged by NATS in time"))

    async def _republish(self, owner: Publication, attempt: _Attempt) -> None:
        await asyncio.sleep(_REPUBLISH_DELAY_S)
        if not owner.live:
            return
        try:
            await self.publish(owner, *attempt)
        except JetserveError as exc:
            owner.refuse(exc)


def refusal(outcome: Outcome, ack: PubAck | None, request: InferenceRequest) -> JetserveError:
    """What a PubAck that is not a success means for the request (`Outcome.RETRY` aside)."""
    if outcome is Outcome.NO_STREAM:
        return ModelNotFound(f"model {request.model!r} does not exist")
    if outcome is Outcome.FULL:
        return BacklogFull(f"model {request.model!r} backlog is full")
    if outcome is Outcome.TOO_LARGE:
        return RequestTooLarge(f"request {request.id} is larger than the stream allows")
    description = ack.error.description if ack is not None and ack.error is not None else ""
    return Unavailable(f"JetStream refused request {request.id}: {description}")


def _publish_error(
    exc: BaseException, request: InferenceRequest, size_bytes: int, inbox: AckInbox
) -> JetserveError | None:
    """nats-py's refusals to publish as the client's errors; None for anything else."""
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return Unavailable("NATS connection closed")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return RequestTooLarge(
            f"request {request.id} ({size_bytes} bytes) is larger than the NATS "
            f"server accepts ({inbox.nc.max_payload} bytes)"
        )
    return None
