"""Fair share of a saturated model's online slots between tenants, kept by the bridge.

A model's online requests wait in one stream, served in arrival order by one durable
consumer (README, "Per-model queue layout"): a tenant sending ten times another's rate would
fill that stream, and the other tenant's request would wait behind the whole backlog. So the
bridge does not let the backlog form in the stream. Per model, it keeps a *window* of online
requests in flight (published, not yet answered): at most the model's serving capacity plus a
little headroom (`ModelCapacity.window`). While the window is full, a new request waits in the
bridge, in its tenant's queue; each slot that frees goes to the waiting tenant with the fewest
requests in flight (max-min fair, as `scheduler/fairshare.py` splits a batch window), the
oldest request of that tenant first, tenants with equal counts in turn. A flood therefore waits
in its own tenant's queue, and another tenant's request gets the next slot that frees.

    share = OnlineShare(capacity.window)
    slot = await share.enter(model, tenant)     # waits while the window is full
    ... publish, wait for the reply ...
    slot.leave()                                # idempotent

A model whose capacity is not known yet (no ping answered) has no window: requests are
counted but never wait. The window is each bridge replica's own: with N replicas the stream
may hold (N - 1) windows more (each replica's share is still fair among its own requests).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class _Window:
    __slots__ = ("by_tenant", "in_flight", "model", "waiting")

    def __init__(self, model: str) -> None:
        self.model = model
        self.in_flight = 0
        #: tenant -> its requests in flight
        self.by_tenant: dict[str, int] = {}
        #: tenant -> its requests waiting, oldest first (only tenants with some; the order of
        #: the keys is the turn among tenants with equal counts)
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}


class Slot:
    """One request's place in its model's window."""

    __slots__ = ("_share", "_tenant", "_window")

    def __init__(self, share: OnlineShare | None, window: _Window | None, tenant: str) -> None:
        self._share = share
        self._window = window
        self._tenant = tenant

    def leave(self) -> None:
        """Free the slot (the request was answered or given up). Idempotent."""
        window, self._window = self._window, None
        if window is not None and self._share is not None:
            self._share._leave(window, self._tenant)


#: The slot of a request that is not counted (a queue other than online, fair share off).
NO_SLOT = Slot(None, None, "")


class OnlineShare:
    def __init__(self, window: Callable[[str], int | None]) -> None:
        #: model -> its window's size now (None: unknown, no limit)
        self._size = window
        self._windows: dict[str, _Window] = {}

    async def enter(self, model: str, tenant: str) -> Slot:
        """A slot in `model`'s window for one of `tenant`'s requests: at once while the window
        has room (and nobody waits), else when the fair order reaches it. Cancelling the
        caller gives up its place (or the slot it was just given)."""
        slot = self.try_enter(model, tenant)
        return slot if slot is not None else await self.wait(model, tenant)

    def try_enter(self, model: str, tenant: str) -> Slot | None:
        """A slot at once, if the window has room and nobody waits; else None (`wait`)."""
        window = self._windows.get(model)
        if window is None:
            window = self._windows[model] = _Window(model)
        size = self._size(model)
        if size is None or (window.in_flight < size and not window.waiting):
            self._take(window, tenant)
            return Slot(self, window, tenant)
        return None

    async def wait(self, model: str, tenant: str) -> Slot:
        """A slot when the fair order reaches this request (after `try_enter` gave None)."""
        window = self._windows[model]
        size = self._size(model)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = window.waiting.get(tenant)
        if queue is None:
            queue = window.waiting[tenant] = deque()
        queue.append(future)
        self._admit(window, size)  # the window may have grown since it filled
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._leave(window, tenant)  # given a slot as it was cancelled: hand it on
            else:
                future.cancel()  # left in its queue; `_admit` skips it
            raise
        return Slot(self, window, tenant)

    def waiting(self, model: str) -> int:
        """Requests of `model` waiting for a slot (for metrics and tests)."""
        window = self._windows.get(model)
        if window is None:
            return 0
        return sum(sum(1 for f in q if not f.done()) for q in window.waiting.values())

    def models(self) -> list[tuple[str, int, int]]:
        """(model, requests in flight, requests waiting) of every model seen (for metrics)."""
        return [(m, w.in_flight, self.waiting(m)) for m, w in self._windows.items()]

    def in_flight(self, model: str) -> dict[str, int]:
        """`model`'s requests in flight, by tenant."""
        window = self._windows.get(model)
        return dict(window.by_tenant) if window is not None else {}

    @staticmethod
    def _take(window: _Window, tenant: str) -> None:
        window.in_flight += 1
        window.by_tenant[tenant] = window.by_tenant.get(tenant, 0) + 1

    def _leave(self, window: _Window, tenant: str) -> None:
        window.in_flight -= 1
        left = window.by_tenant[tenant] - 1
        if left:
            window.by_tenant[tenant] = left
        else:
            del window.by_tenant[tenant]
        if window.waiting:
            self._admit(window, self._size(window.model))

    def _admit(self, window: _Window, size: int | None) -> None:
        """Give free slots to waiting requests: each to the tenant with the fewest in flight."""
        waiting = window.waiting
        while waiting and (size is None or window.in_flight < size):
            by_tenant = window.by_tenant
            tenant = min(waiting, key=lambda t: by_tenant.get(t, 0))
            queue = waiting.pop(tenant)
            while queue and queue[0].done():  # cancelled while waiting
                queue.popleft()
            if not queue:
                continue
            queue.popleft().set_result(None)
            self._take(window, tenant)
            while queue and queue[0].done():
                queue.popleft()
            if queue:
                waiting[tenant] = queue  # back in turn, after the tenants with equal counts
