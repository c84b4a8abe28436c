"""One request in flight on the producer side: where its replies go, whether it was stored.

`Client.start` / `Client.begin` return a `Pending`; the client's inbox delivers replies into
it, and waiters (a caller of `Client.request`, the HTTP bridge's `Call`) read them from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from producer.errors import JetserveError
from schemas.messages import ErrorResult, FinalResult, InferenceRequest, StreamChunk


class Accepted(msgspec.Struct, frozen=True):
    """Where JetStream stored a request. (A Struct, not a frozen dataclass: built for every
    request, ~7 times cheaper.)"""

    id: str
    stream: str
    seq: int
    #: True when a request with the same id/idempotency key was already stored.
    duplicate: bool


class Pending:
    """One request in flight: where its replies go, and where it is stored.

    `done` resolves with the terminal reply; `chunks` (streaming requests only) receives
    chunks in arrival order. `accepted` is set once JetStream has stored the request;
    `refused` (requests started with `Client.begin`) when it will not be stored.
    """

    __slots__ = (
        "accepted",
        "accepted_at",
        "chunks",
        "done",
        "live",
        "notify",
        "refused",
        "request",
        "subscription",
    )

    def __init__(self, request: InferenceRequest, streaming: bool) -> None:
        self.request = request
        self.done: asyncio.Future[FinalResult | ErrorResult] = (
            asyncio.get_running_loop().create_future()
        )
        self.chunks: asyncio.Queue[StreamChunk] | None = asyncio.Queue() if streaming else None
        self.accepted: Accepted | None = None
        #: The event loop's time when `accepted` was set.
        self.accepted_at = 0.0
        self.refused: JetserveError | None = None
        #: False once released: replies and the PubAck are no longer wanted.
        self.live = True
        #: A dedicated subscription (`ReplyRouter.subscribe`), when the reply subject is not
        #: the client's inbox.
        self.subscription: Any = None
        #: Called after every reply delivered (for waiters that watch several things).
        self.notify: Callable[[], None] | None = None

    def deliver(self, reply: StreamChunk | FinalResult | ErrorResult) -> None:
        if isinstance(reply, StreamChunk):
            if self.chunks is None:
                return
            self.chunks.put_nowait(reply)
        elif not self.done.done():
            self.done.set_result(reply)
        else:
            return
        if self.notify is not None:
            self.notify()

    def stored(self, accepted: Accepted) -> None:
        """JetStream stored the request."""
        self.accepted = accepted
        self.accepted_at = asyncio.get_running_loop().time()

    def refuse(self, error: JetserveError) -> None:
        """JetStream will not store the request."""
        self.refused = error
        if self.notify is not None:
            self.notify()
