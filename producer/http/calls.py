"""One HTTP request's life on the queue: publish, wait, give up.

    call = await calls.open(request, streaming=..., timeout_s=...)
    item = await call.next()      # StreamChunk ..., then FinalResult; raises ApiError
    await call.close()            # always; cancels upstream if no terminal reply came

An online request first takes a slot in its model's window (`OnlineShare`: tenants share a
saturated model fairly); it waits there, within its deadline, while the window is full, and
frees the slot when the call closes.

Publishing does not wait for the PubAck (`Client.begin`): a refusal (unknown model, full
backlog, not stored in time) comes out of `call.next()` like a reply, so the caller's task is
woken once per request. Waiting is bounded twice. The deadline (`timeout_s`, also the
request's `deadline_ms`) ends in 504. Every `no_worker_timeout_s` without a reply, counted
from when the request was stored, the model's workers are pinged; when
none answers, the request is cancelled and deleted from the stream (it must not run later,
when a worker starts) and the caller gets 503. Whatever the reason upstream work is
abandoned (deadline, no workers, the client went away), `Client.finish` cancels it, so a
running request frees its worker's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from producer.client import Client
from producer.errors import JetserveError
from producer.http.errors import (
    ApiError,
    deadline_exceeded,
    from_error_result,
    from_producer_error,
    no_workers,
)
from producer.http.metrics import BridgeMetrics
from producer.http.presence import Presence
from producer.online_share import NO_SLOT, OnlineShare, Slot
from producer.pending import Pending
from producer.timers import CoarseTimers
from schemas.messages import ErrorResult, FinalResult, InferenceRequest, StreamChunk
from schemas.names import Priority

log = logging.getLogger(__name__)

Event = StreamChunk | FinalResult
#: Start watching for the HTTP client going away: `watch(gone)` calls `gone()` when it does,
#: and returns the function that stops watching.
Watch = Callable[[Callable[[], None]], Callable[[], None]]


class ClientGone(Exception):
    """The HTTP client went away while its request was waiting."""


class Call:
    """Replies of one request, with the deadline and the no-worker check applied."""

    def __init__(
        self,
        calls: Calls,
        pending: Pending,
        deadline: float,
        on_final: Callable[[FinalResult | ErrorResult], None] | None = None,
        slot: Slot = NO_SLOT,
    ) -> None:
        self._d = calls
        self._slot = slot
        self.pending = pending
        self.request = pending.request
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        self._next_check = self._loop.time() + calls.no_worker_timeout_s
        self._on_final = on_final
        self._wake: asyncio.Future[None] | None = None
        self.finished = False
        self._gone = False
        #: Highest attempt seen, chunks passed on: a restarted attempt repeats its output.
        self._attempt = 0
        self._passed = 0
        pending.notify = self._notify

    @property
    def timers(self) -> CoarseTimers:
        return self._d.timers

    def client_gone(self) -> None:
        """The HTTP client disconnected: the waiter raises `ClientGone`."""
        self._gone = True
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep(self, until: float) -> None:
        """Until a reply arrives or the loop time `until`, whichever is first. Cancelling
        the caller never cancels the reply future."""
        wake = self._wake = self._loop.create_future()
        timer = self._d.timers.call_at(until, self._notify)
        try:
            await wake
        finally:
            self._d.timers.cancel(timer)
            self._wake = None

    async def next(self) -> Event:
        pending = self.pending
        while True:
            if self._gone:
                raise ClientGone()
            if pending.refused is not None:  # not stored (unknown model, full backlog, ...)
                raise self._d.refusal(pending.refused, self.request)
            if pending.chunks is not None and not pending.chunks.empty():
                chunk = pending.chunks.get_nowait()
                self._attempt = max(self._attempt, chunk.attempt)
                if chunk.attempt < self._attempt or chunk.seq < self._passed:
                    continue
                self._passed += 1
                return chunk
            if pending.done.done():
                return self._final(pending.done.result())
            now = self._loop.time()
            if now >= self._deadline:
                self._d.cancelled("deadline")
                raise deadline_exceeded()
            if now >= self._next_check:
                wait_s = self._d.no_worker_timeout_s
                # Workers are looked for `wait_s` after the request was stored; until it is
                # (NATS away, the publish retried), the publish timeout applies.
                stored = pending.accepted_at if pending.accepted is not None else None
                if stored is None or now < stored + wait_s:
                    self._next_check = (now if stored is None else stored) + wait_s
                else:
                    if not await self._d.any_worker(self.request.model):
                        self._d.cancelled("no_workers")
                        raise no_workers(self.request.model, wait_s)
                    self._next_check = self._loop.time() + wait_s
                    continue
            await self._sleep(min(self._deadline, self._next_check))

    def _final(self, reply: FinalResult | ErrorResult) -> FinalResult:
        self.finished = True
        if self._on_final is not None:
            self._on_final(reply)
        if isinstance(reply, ErrorResult):
            raise from_error_result(reply)
        return reply

    async def result(self) -> FinalResult:
        while True:
            item = await self.next()
            if isinstance(item, FinalResult):
                return item

    async def close(self) -> None:
        """Stop listening; cancel upstream unless the terminal reply came."""
        self._slot.leave()
        await self._d.finish(self.pending, cancel=not self.finished)

    def abandon(self) -> None:
        """`close()` from a task being cancelled (the client went away): run it apart."""
        if not self.finished:
            self._d.cancelled("disconnect")
        self._slot.leave()
        self._d.spawn(self.close())


class Calls:
    """Opens the bridge's calls (`open`, `start`), and owns what they share: the client,
    the worker presence check, the coarse timers, background tasks."""

    def __init__(
        self,
        client: Client,
        presence: Presence,
        metrics: BridgeMetrics,
        *,
        no_worker_timeout_s: float,
        retry_after_s: int,
        share: OnlineShare | None = None,
    ) -> None:
        self.client = client
        #: Online requests' fair share of each model's window (None: off).
        self.share = share
        self.presence = presence
        self.metrics = metrics
        self.no_worker_timeout_s = no_worker_timeout_s
        self.retry_after_s = retry_after_s
        #: The calls' waits and disconnect watches (coarse: a deadline may be ~50 ms late).
        self.timers = CoarseTimers()
        self._background: set[asyncio.Task[Any]] = set()

    async def any_worker(self, model: str) -> bool:
        """Whether a worker of `model` is alive (`Presence`, cached)."""
        return await self.presence.any_worker(model)

    def cancelled(self, reason: str) -> None:
        """Count a request given up upstream (`deadline`, `no_workers`, `disconnect`)."""
        self.metrics.cancels.labels(reason).inc()

    async def finish(self, pending: Pending, *, cancel: bool) -> None:
        """`Client.finish`: stop listening; cancel upstream if `cancel`."""
        await self.client.finish(pending, cancel=cancel)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def refusal(self, exc: JetserveError, request: InferenceRequest) -> ApiError:
        """A request not taken (unknown model, full backlog, NATS down) as its HTTP error."""
        return from_producer_error(exc, request.model, self.retry_after_s)

    async def start(
        self, request: InferenceRequest, *, streaming: bool, reply_to: str | None = None
    ) -> Pending:
        """Publish and wait until stored; refusals raised as ApiError."""
        try:
            return await self.client.start(request, streaming=streaming, reply_to=reply_to)
        except JetserveError as exc:
            raise self.refusal(exc, request) from None

    async def open(
        self,
        request: InferenceRequest,
        *,
        streaming: bool,
        timeout_s: float,
        watch: Watch | None = None,
    ) -> Call:
        """Publish; the call raises the refusal if the request is not stored, its reply
        otherwise (one wait for both: `Client.begin`). An online request waits for its slot
        first (504 if its deadline passes meanwhile; `ClientGone` if the client goes away
        meanwhile, seen through `watch`)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        slot = await self._slot(request, timeout_s, watch)
        try:
            pending = await self.client.begin(request, streaming=streaming)
        except JetserveError as exc:
            slot.leave()
            raise self.refusal(exc, request) from None
        except BaseException:
            slot.leave()
            raise
        return Call(self, pending, deadline, slot=slot)

    async def _slot(self, request: InferenceRequest, timeout_s: float, watch: Watch | None) -> Slot:
        share = self.share
        if share is None or request.priority is not Priority.ONLINE:
            return NO_SLOT
        slot = share.try_enter(request.model, request.tenant)
        if slot is not None:  # room in the window: no wait, nothing to watch
            return slot
        entering = asyncio.ensure_future(share.wait(request.model, request.tenant))
        gone = False

        def client_gone() -> None:
            nonlocal gone
            gone = True
            entering.cancel()  # gives its place (or its slot) up

        stop = watch(client_gone) if watch is not None else _nothing
        try:
            async with asyncio.timeout(timeout_s):
                slot = await entering
        except BaseException as exc:
            stop()
            if entering.done() and not entering.cancelled() and entering.exception() is None:
                entering.result().leave()  # given as this request gave up
            else:
                entering.cancel()
            if isinstance(exc, TimeoutError):
                self.cancelled("deadline")
                raise deadline_exceeded() from None
            task = asyncio.current_task()
            cancelling = task.cancelling() if task is not None else 0
            if gone and isinstance(exc, asyncio.CancelledError) and not cancelling:
                self.cancelled("disconnect")
                raise ClientGone() from None
            raise
        stop()
        return slot

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


def _nothing() -> None:
    pass
