"""A credit-based pull consumer: keeps pull requests outstanding for exactly the number of
messages the worker has asked for, and hands each message over the moment it arrives.

nats-py's `fetch()` returns a batch only when it is full or its timeout ends, which delays the
first message of a trickle; this follows the protocol directly, like the Go client's
`Consume()`: a pull request (`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, reply to a
private inbox) asks for `batch` messages within `expires`; the server delivers them one by one
as they become available and ends the request with a status (408 Request Timeout, 409 ...)
carrying `Nats-Pending-Messages`, the part it did not fill.

The server fills pull requests oldest first, so credit is tracked per request in FIFO order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import names

log = logging.getLogger(__name__)

#: A request whose end status never arrived (lost in a reconnect) is forgotten this long after
#: its expiry.
_GRACE_S = 1.0


def _status(msg: Msg) -> str | None:
    return msg.headers.get(names.STATUS_HEADER) if msg.headers else None


@dataclass
class _PullRequest:
    expires_at: float
    remaining: int


class PullConsumer:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        on_message: Callable[[Msg], None],
        on_request_end: Callable[[str], None] | None = None,
    ) -> None:
        self._nc = nc
        self._subject = names.pull_subject(stream, consumer)
        self._inbox = nc.new_inbox()
        self._on_message = on_message
        self._on_request_end = on_request_end
        self._requests: deque[_PullRequest] = deque()
        self._sub: Any = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.name = consumer

    async def start(self) -> None:
        inbox = self._inbox

        async def deliver(msg: Msg) -> None:
            if inbox == self._inbox:
                self._deliver(msg)
            elif not _status(msg):
                # On an inbox given up by `withdraw`: no credit to count, still ours to run.
                self._on_message(msg)

        # The delivery inbox sees at most `outstanding` messages: no pending limit needed.
        self._sub = await self._nc.subscribe(
            inbox, cb=deliver, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await self.retired()
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    @property
    def outstanding(self) -> int:
        """Messages asked for and neither delivered nor given up by the server yet."""
        return sum(r.remaining for r in self._requests)

    async def pull(self, batch: int, expires_s: float) -> None:
        if batch <= 0:
            return
        loop = asyncio.get_running_loop()
        body = json.dumps({"batch": batch, "expires": int(expires_s * 1e9)}).encode()
        self._requests.append(_PullRequest(loop.time() + expires_s, batch))
        await self._nc.publish(self._subject, body, reply=self._inbox)

    def forget_expired(self) -> None:
        """Drop requests whose end status was lost (e.g. across a reconnect)."""
        now = asyncio.get_running_loop().time()
        while self._requests and self._requests[0].expires_at + _GRACE_S < now:
            self._requests.popleft()

    def reset(self) -> None:
        """After a reconnect the server has forgotten our pull requests."""
        self._requests.clear()

    async def withdraw(self) -> None:
        """Take back all outstanding credit now: later pull requests go to a fresh delivery
        inbox, and the credit of the old ones no longer counts.

        The old inbox is not unsubscribed at once. A server drops pull requests whose reply
        subject lost interest, but one it had already begun to fill counts the message as
        delivered even when the unsubscribe wins the race, and that message then waits
        unacked for the consumer's ack_wait (and is charged a delivery). So the old inbox stays
        open until its requests expire (batch pulls are short), and what still arrives on it
        is handed over like any other message: for that long a worker may hold a little more
        than its capacity."""
        if self._sub is None or not self._requests:
            return
        old = self._sub
        until = max(r.expires_at for r in self._requests) + _GRACE_S
        self._inbox = self._nc.new_inbox()
        self._requests.clear()
        await self.start()
        task = asyncio.get_running_loop().create_task(self._retire(old, until))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def retired(self) -> None:
        """Wait until every inbox given up by `withdraw` is closed."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _retire(self, sub: Any, until: float) -> None:
        try:
            await asyncio.sleep(until - asyncio.get_running_loop().time())
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _deliver(self, msg: Msg) -> None:
        status = _status(msg)
        if status is None:
            if self._requests:
                head = self._requests[0]
                head.remaining -= 1
                if head.remaining <= 0:
                    self._requests.popleft()
            self._on_message(msg)
            return
        if status == "100":  # idle heartbeat / flow control
            return
        # 404 No Messages, 408 Request Timeout, 409 (max waiting, leadership change, ...):
        # the oldest request ended with its unfilled part returned.
        if self._requests:
            self._requests.popleft()
        if status not in ("404", "408"):
            log.info(
                "pull request on %s ended: %s %s",
                self.name,
                status,
                (msg.headers or {}).get("Description", ""),
            )
        if self._on_request_end is not None:
            self._on_request_end(status)
