"""Publishing many messages to JetStream at once and waiting for every PubAck.

Each message is a core publish whose reply subject is this publisher's inbox: the PubAcks
arrive on one subscription and resolve one future each, so a window of a thousand items costs
one round trip, not a thousand. A message is not stored until its PubAck says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from dataclasses import dataclass
from enum import StrEnum

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

#: JetStream API error codes: the stream is at its message or byte bound.
_STREAM_FULL = {10077, 10078}


class Outcome(StrEnum):
    STORED = "stored"
    #: No stream takes the subject (e.g. the model was removed).
    NO_STREAM = "no_stream"
    #: The stream is at its bound, or no PubAck came in time: try again later.
    RETRY = "retry"
    #: Refused for good (e.g. too large).
    REFUSED = "refused"


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str]


class BulkPublisher:
    def __init__(self, nc: NATS, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._prefix = f"_INBOX.jetserve-scheduler.{uuid.uuid4().hex}"
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: object | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            f"{self._prefix}.*", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._prefix) + 1 :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(self, messages: list[Message]) -> list[Outcome]:
        """Publish all, then wait (up to the timeout) for all PubAcks; an outcome each."""
        if self._sub is None:
            await self.start()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Msg]] = []
        tokens: list[str] = []
        try:
            for m in messages:
                token = f"{next(self._ids):x}"
                future: asyncio.Future[Msg] = loop.create_future()
                self._waiting[token] = future
                futures.append(future)
                tokens.append(token)
                await self._nc.publish(
                    m.subject, m.data, reply=f"{self._prefix}.{token}", headers=m.headers
                )
            await self._nc.flush(timeout=max(1, int(self._timeout_s)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s)
        except Exception:
            pass  # not acknowledged: RETRY below
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return [_outcome(f) for f in futures] + [Outcome.RETRY] * (len(messages) - len(futures))


def _outcome(future: asyncio.Future[Msg]) -> Outcome:
    if not future.done() or future.cancelled():
        future.cancel()
        return Outcome.RETRY
    msg = future.result()
    if not msg.data:
        status = (msg.headers or {}).get("Status")
        return Outcome.NO_STREAM if status == "503" else Outcome.RETRY
    try:
        ack = _decode_ack(msg.data)
    except msgspec.DecodeError:
        return Outcome.RETRY
    if ack.error is None:
        return Outcome.STORED
    if ack.error.err_code in _STREAM_FULL or ack.error.code == 503:
        return Outcome.RETRY
    return Outcome.REFUSED
