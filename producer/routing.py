"""Reply routing: replies to the `Pending` of the request they answer.

Replies to requests published by a client come to its inbox, `<inbox>.<request id>`, one
wildcard subscription for all (`AckInbox`'s `on_other`); a request whose replies go to a
subject the caller chose (several requesters may listen on it, e.g. idempotent retries) gets a
subscription of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from producer.errors import InvalidRequest
from producer.pending import Pending
from schemas.codec import decode_reply
from schemas.names import Encoding


class ReplyRouter:
    def __init__(self, nc: NATS, encoding: Encoding) -> None:
        self._nc = nc
        self._encoding = encoding
        #: request id -> its pending request (replies on the client's inbox)
        self._waiters: dict[str, Pending] = {}

    def add(self, pending: Pending) -> None:
        """Route replies on the client's inbox for `pending.request.id` to `pending`."""
        request_id = pending.request.id
        if request_id in self._waiters:
            raise InvalidRequest(f"request id {request_id!r} is already in flight")
        self._waiters[request_id] = pending

    def on_reply(self, request_id: str, msg: Msg) -> None:
        """A message on the client's inbox, `<inbox>.<request_id>`."""
        pending = self._waiters.get(request_id)
        if pending is None:
            return  # a late or duplicate reply for a request nobody waits for any more
        try:
            reply = decode_reply(msg.data, self._encoding)
        except msgspec.DecodeError:
            return
        pending.deliver(reply)

    async def subscribe(self, pending: Pending, subject: str) -> None:
        """Route replies on `subject` (the caller's own) to `pending`."""
        pending.subscription = await self._nc.subscribe(subject, cb=self._dedicated(pending))

    def _dedicated(self, pending: Pending) -> Callable[[Msg], Awaitable[None]]:
        async def on_reply(msg: Msg) -> None:
            try:
                reply = decode_reply(msg.data, self._encoding)
            except msgspec.DecodeError:
                return
            if reply.id == pending.request.id:  # the subject may be shared across retries
                pending.deliver(reply)

        return on_reply

    async def release(self, pending: Pending) -> None:
        """No more replies, nor its PubAck, for `pending`."""
        pending.live = False
        # A waiter's `notify` usually refers back to it (a cycle): left in place, every
        # request would be garbage only the cyclic collector frees.
        pending.notify = None
        if self._waiters.get(pending.request.id) is pending:
            del self._waiters[pending.request.id]
        sub, pending.subscription = pending.subscription, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
