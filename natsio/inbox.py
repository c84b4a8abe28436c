"""Publishes whose PubAcks arrive on one shared inbox subscription.

A JetStream publish through nats-py's `js.publish` is a request: a reply subscription token,
a future and a timer per message. Here a message is a core publish whose reply subject is
`<inbox>.<token>.ack` on one wildcard subscription (`<inbox>.>`), and its PubAck is handed to
the handler its publish registered, the moment it arrives: a window of a thousand messages
costs one round trip, and the producer's hot path no future per request.

    inbox = AckInbox(nc, names.SCHEDULER_INBOX)
    outcome, ack = await inbox.publish(subject, data, headers, timeout_s=5.0)
    outcomes = await inbox.publish_many(messages, timeout_s=5.0)

Messages on the inbox that are not PubAcks (`<inbox>.<rest>`, `rest` not ending in `.ack`)
go to `on_other(rest, msg)`: the producer client receives its replies there.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsio.acks import Outcome, PubAck, classify

#: Called with the argument given to `expect`, and the PubAck.
AckHandler = Callable[[Any, Msg], None]
_ACK = ".ack"


class Message(NamedTuple):
    subject: str
    data: bytes
    headers: dict[str, str]


class AckInbox:
    def __init__(
        self,
        nc: NATS,
        prefix: str,
        *,
        on_ack: AckHandler | None = None,
        on_other: Callable[[str, Msg], None] | None = None,
    ) -> None:
        """`on_ack(arg, msg)` handles the PubAck of a publish made with `expect(token, arg)`
        (by default `arg` is a future the PubAck resolves: `publish`, `publish_many`);
        `on_other(rest, msg)` any other message on `<inbox>.<rest>`."""
        self.nc = nc
        # 64 random bits name the inbox: short, as it may be in every request's headers.
        self.prefix = f"{prefix}.{secrets.token_hex(8)}"
        self._cut = len(self.prefix) + 1
        self._on_ack: AckHandler = on_ack or _resolve
        self._on_other = on_other
        #: token -> the argument of `on_ack`, until the PubAck arrives or `forget`
        self._waiting: dict[str, Any] = {}
        self._ids = itertools.count()
        self._sub: Any = None
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        """Subscribe (once; concurrent callers wait for the one subscription)."""
        if self._sub is not None:
            return
        async with self._lock:
            if self._sub is None:
                self._sub = await self.nc.subscribe(
                    f"{self.prefix}.>",
                    cb=self._on_msg,
                    pending_msgs_limit=-1,
                    pending_bytes_limit=-1,
                )

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection is closing or closed
                return

    def token(self) -> str:
        """A new publish token (unique on this inbox)."""
        return f"{next(self._ids):x}"

    def expect(self, token: str, arg: Any) -> str:
        """`on_ack(arg, msg)` is to be called once, with the PubAck of the publish made with
        the reply subject returned; `forget(token)` to stop waiting."""
        self._waiting[token] = arg
        return f"{self.prefix}.{token}{_ACK}"

    def forget(self, token: str) -> Any:
        """Stop waiting for `token`'s PubAck: its `arg`, or None if it was handled (or
        forgotten) before."""
        return self._waiting.pop(token, None)

    async def _on_msg(self, msg: Msg) -> None:
        rest = msg.subject[self._cut :]
        if rest.endswith(_ACK):
            arg = self._waiting.pop(rest[:-4], None)
            if arg is not None:
                self._on_ack(arg, msg)
        elif self._on_other is not None:
            self._on_other(rest, msg)

    def classify(self, msg: Msg) -> tuple[Outcome, PubAck | None]:
        return classify(msg, connected=self.nc.is_connected)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str], *, timeout_s: float = 5.0
    ) -> tuple[Outcome, PubAck | None]:
        """Publish one message and wait up to `timeout_s` for its PubAck. Not acknowledged
        in time, or the connection failing meanwhile, is `Outcome.RETRY`. (The one-message
        case of `publish_many`, written apart: it is every worker result's path, and awaiting
        the one future costs far less than `asyncio.wait`.)"""
        assert self._on_ack is _resolve, "an inbox with its own PubAck handler"
        if self._sub is None:
            await self.start()
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        token = self.token()
        try:
            await self.nc.publish(subject, data, reply=self.expect(token, future), headers=headers)
            async with asyncio.timeout(timeout_s):
                msg = await future
        except Exception:
            return Outcome.RETRY, None  # not acknowledged (a timeout, the connection failing)
        finally:
            self.forget(token)
        return self.classify(msg)

    async def publish_many(
        self, messages: Sequence[Message], *, timeout_s: float = 5.0
    ) -> list[tuple[Outcome, PubAck | None]]:
        """Publish all, then wait (up to `timeout_s` in all) for every PubAck: an outcome each,
        in order. Whatever is not acknowledged in time is `Outcome.RETRY`."""
        assert self._on_ack is _resolve, "an inbox with its own PubAck handler"
        if self._sub is None:
            await self.start()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Msg]] = []
        tokens: list[str] = []
        try:
            for m in messages:
                future: asyncio.Future[Msg] = loop.create_future()
                token = self.token()
                ack_to = self.expect(token, future)
                futures.append(future)
                tokens.append(token)
                await self.nc.publish(m.subject, m.data, reply=ack_to, headers=m.headers)
            async with asyncio.timeout(timeout_s):
                await asyncio.wait(futures)
        except Exception:
            pass  # not acknowledged (a timeout, the connection failing): RETRY below
        finally:
            for token in tokens:
                self.forget(token)
        results = [self._result(f) for f in futures]
        return results + [(Outcome.RETRY, None)] * (len(messages) - len(futures))

    def _result(self, future: asyncio.Future[Msg]) -> tuple[Outcome, PubAck | None]:
        if not future.done():
            future.cancel()
            return Outcome.RETRY, None
        return self.classify(future.result())


def _resolve(future: asyncio.Future[Msg], msg: Msg) -> None:
    if not future.done():
        future.set_result(msg)
