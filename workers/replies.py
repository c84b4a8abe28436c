"""Publishing chunks and results to a request's reply subject.

Interactive replies are core NATS publishes: a requester that has gone away is not an error.
Replies on durable subjects (`jetserve.results.>`, captured by the results stream) wait for the
JetStream acknowledgement, so the request is acked only once its result is stored. A
background response's event log (`jetserve.revents.<id>`) is durable too, and keeps the
chunks as well, each stored before the next is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NATS

from natsio.acks import Outcome, describe
from natsio.inbox import AckInbox
from schemas import names
from schemas.codec import encode
from schemas.messages import ErrorResult, FinalResult, StreamChunk, TokenLogprobs
from schemas.names import Encoding, Header, is_durable_reply, keeps_chunks, result_msg_id


class DurableReplyFailed(Exception):
    """JetStream did not store a durable reply: the request must not be acked."""


class DurablePublisher:
    """Durable replies published through the worker's `AckInbox` (PubAcks on one shared
    subscription), each retried until JetStream stores it."""

    def __init__(self, nc: NATS, *, timeout_s: float = 5.0, attempts: int = 3) -> None:
        self._inbox = AckInbox(nc, names.RESULTS_INBOX)
        self._timeout_s = timeout_s
        self._attempts = attempts

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish until JetStream acknowledges it (the same `Nats-Msg-Id` on every try, so a
        retry after a lost PubAck is not stored twice); raise DurableReplyFailed if it never
        does, or at once if it refuses the reply for good (too large, or another error)."""
        problem = "no acknowledgement"
        for _ in range(self._attempts):
            outcome, ack = await self._inbox.publish(
                subject, data, headers, timeout_s=self._timeout_s
            )
            if outcome is Outcome.STORED:
                return
            problem = describe(outcome, ack)
            if outcome is Outcome.NO_STREAM:  # the results stream may be created meanwhile
                await asyncio.sleep(0.1)
            elif not outcome.later:
                break
        raise DurableReplyFailed(f"result on {subject} not stored: {problem}")


class ReplySink:
    def __init__(
        self,
        nc: NATS,
        subject: str | None,
        encoding: Encoding,
        request_id: str,
        attempt: int,
        durable: DurablePublisher,
    ) -> None:
        """`durable`: the worker's one publisher of durable replies (its shared inbox)."""
        self._nc = nc
        self.subject = subject or None
        self._encoding = encoding
        self.request_id = request_id
        self._attempt = attempt
        self._seq = 0
        self._durable = self.subject is not None and is_durable_reply(self.subject)
        #: Chunks are sent: to a core subject, or to an event log.
        self._chunks = self.subject is not None and (
            not self._durable or keeps_chunks(self.subject)
        )
        self._durable_publisher = durable

    async def chunk(
        self,
        delta: str,
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprobs] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        if not self._chunks:
            return  # durable replies carry only the final result, but in an event log
        chunk = StreamChunk(
            id=self.request_id,
            seq=self._seq,
            delta=delta,
            token_ids=token_ids or [],
            logprobs=logprobs,
            tool_calls=tool_calls,
            attempt=self._attempt,
        )
        self._seq += 1
        data = encode(chunk, self._encoding)
        if self._durable:  # an event log: each attempt's chunks stored once
            await self._publish_durable(
                data, f"chunk-{self.request_id}-{chunk.attempt}-{chunk.seq}"
            )
        else:
            await self._publish(data)

    async def final(self, result: FinalResult | ErrorResult) -> None:
        data = encode(result, self._encoding)
        if self._durable:
            # The result id de-duplicates a redelivered request's second result.
            await self._publish_durable(data, result_msg_id(self.request_id))
        else:
            await self._publish(data)

    async def _publish_durable(self, data: bytes, msg_id: str) -> None:
        assert self.subject is not None
        headers = {Header.ENCODING.value: self._encoding.value, Header.MSG_ID.value: msg_id}
        await self._durable_publisher.publish(self.subject, data, headers)

    async def _publish(self, data: bytes) -> None:
        if self.subject is None:
            return
        if not self._nc.is_connected:
            await _after_reconnect(self._nc)
        # The requester chose the encoding; core replies carry no headers (hot path).
        await self._nc.publish(self.subject, data)


#: After a reconnect, how long replies wait for requesters to re-subscribe.
RESUBSCRIBE_GRACE_S = 1.0


async def _after_reconnect(nc: NATS, timeout_s: float = 30.0) -> None:
    """Hold a core reply made while NATS was unreachable until the connection is back and
    requesters have had time to re-subscribe: published at once (nats-py flushes its buffer
    the moment it reconnects), it would race their subscriptions and be lost, though the
    request is acked. Bounded: after `timeout_s` it is published anyway."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    # nats-py signals a reconnect by a callback the worker owns, not an event: poll.
    while not nc.is_connected and loop.time() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(RESUBSCRIBE_GRACE_S)
