"""Publishing chunks and results to a request's reply subject.

Interactive replies are core NATS publishes: a requester that has gone away is not an error.
Replies on durable subjects (`jetserve.results.>`, captured by the results stream) wait for the
JetStream acknowledgement, so the request is acked only once its result is stored.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas.codec import encode
from schemas.messages import ErrorResult, FinalResult, StreamChunk, TokenLogprobs
from schemas.names import Encoding, Header, is_durable_reply


class DurableReplyFailed(Exception):
    """JetStream did not store a durable reply: the request must not be acked."""


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


class DurablePublisher:
    """JetStream publishes whose PubAcks arrive on one shared inbox subscription (one future
    per publish), rather than a request (inbox token, timer, JSON parsing) per result."""

    def __init__(self, nc: NATS, *, timeout_s: float = 5.0, attempts: int = 3) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._prefix = f"_INBOX.jetserve-results.{uuid.uuid4().hex}"
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Any = None
        self._lock = asyncio.Lock()

    async def _ensure_inbox(self) -> None:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    self._sub = await self._nc.subscribe(
                        f"{self._prefix}.*",
                        cb=self._on_ack,
                        pending_msgs_limit=-1,
                        pending_bytes_limit=-1,
                    )

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) + 1 :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish until JetStream acknowledges it (the same `Nats-Msg-Id` on every try, so a
        retry after a lost PubAck is not stored twice); raise DurableReplyFailed if it never
        does."""
        await self._ensure_inbox()
        loop = asyncio.get_running_loop()
        problem = "no acknowledgement"
        for _ in range(self._attempts):
            token = f"{next(self._ids):x}"
            future: asyncio.Future[Msg] = loop.create_future()
            self._waiting[token] = future
            try:
                await self._nc.publish(
                    subject, data, reply=f"{self._prefix}.{token}", headers=headers
                )
                async with asyncio.timeout(self._timeout_s):
                    msg = await future
            except (TimeoutError, ConnectionError) as exc:
                problem = type(exc).__name__
                continue
            finally:
                self._waiting.pop(token, None)
            if not msg.data:
                problem = f"status {(msg.headers or {}).get('Status')}"  # e.g. 503: no stream
                await asyncio.sleep(0.1)
                continue
            try:
                ack = _decode_ack(msg.data)
            except msgspec.DecodeError:
                problem = "undecodable PubAck"
                continue
            if ack.error is None:
                return
            problem = f"JetStream error {ack.error.err_code}: {ack.error.description}"
        raise DurableReplyFailed(f"result on {subject} not stored: {problem}")


class ReplySink:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        subject: str | None,
        encoding: Encoding,
        request_id: str,
        attempt: int,
        durable: DurablePublisher | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self.subject = subject or None
        self._encoding = encoding
        self.request_id = request_id
        self._attempt = attempt
        self._seq = 0
        self._durable = self.subject is not None and is_durable_reply(self.subject)
        self._durable_publisher = durable

    async def chunk(
        self,
        delta: str,
        token_ids: list[int] | None = None,
        logprobs: list[TokenLogprobs] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        if self.subject is None or self._durable:
            return  # durable replies carry only the final result
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
        await self._publish(encode(chunk, self._encoding))

    async def final(self, result: FinalResult | ErrorResult) -> None:
        await self._publish(encode(result, self._encoding))

    async def _publish(self, data: bytes) -> None:
        if self.subject is None:
            return
        if self._durable:
            # The result id de-duplicates a redelivered request's second result.
            headers = {
                Header.ENCODING.value: self._encoding.value,
                Header.MSG_ID.value: f"result-{self.request_id}",
            }
            if self._durable_publisher is not None:
                await self._durable_publisher.publish(self.subject, data, headers)
            else:
                await self._js.publish(self.subject, data, headers=headers)
        else:
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
