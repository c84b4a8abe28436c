"""A tenant's requests in flight, limited across every bridge replica, counted from local
leases of slots.

The slots of a limit are shared (`SharedSlots`: one record per tenant and scope, the slots
each replica holds, in the NATS KV bucket, compare-and-set, `ratelimit_kv.py`): the replicas
together never hold more than the limit. Asking the shared record for every request would put
a KV round trip on the hot path, so a replica holds a few slots more than it uses (a
*lease*: `chunk`, a sixteenth of the limit, at least 1) and admits from them locally; it
takes more when it runs out, gives back what exceeds its use by more than two chunks, and
all of them soon after it has nothing in flight. A replica's holding is renewed while it has
slots (`renew`, every `RENEW_S`) and lapses `HOLD_TTL_S` after its last renewal: a replica
that died frees its slots then. A request is refused when neither the lease nor the shared
record has a free slot; after such a refusal the replica refuses without asking for
`REFUSED_S` (a flood at its limit costs few round trips) unless one of its own slots frees.
When the shared record cannot be reached, requests are admitted (fail open): the limits must
never stop the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from producer.leases import Turn, Unreachable
from schemas.limits import SlotHolding, SlotsState

log = logging.getLogger(__name__)

#: A holding not renewed for this long lapses (its replica is gone).
HOLD_TTL_S = 6.0
#: Holdings are renewed (and idle ones given back) this often.
RENEW_S = 2.0
#: After a refusal by the shared record, refuse locally this long (unless a slot frees here).
REFUSED_S = 0.05
#: A replica with nothing in flight gives its lease back after this long.
IDLE_RETURN_S = 0.05


def chunk_of(limit: int) -> int:
    return max(1, limit // 16)


def resize(
    state: SlotsState | None, holder: str, wanted: int, limit: int, now_s: float, ttl_s: float
) -> tuple[SlotsState, int]:
    """`holder`'s holding set to `wanted` slots, or as many as the others leave free under
    `limit` (their lapsed holdings dropped): the state after, and what `holder` now holds.
    `SharedSlots.resize`'s arithmetic, without the I/O."""
    holders = {
        name: held
        for name, held in (state.holders.items() if state is not None else ())
        if name != holder and held.expires_s > now_s
    }
    others = sum(held.slots for held in holders.values())
    mine = max(0, min(wanted, limit - others))
    if mine:
        holders[holder] = SlotHolding(mine, now_s + ttl_s)
    return SlotsState(holders), mine


class SharedSlots(Protocol):
    async def resize(self, key: str, holder: str, wanted: int, limit: int, now_s: float) -> int:
        """Set `holder`'s holding of `key` to `wanted`, or as much as is free; what it holds."""
        ...


@dataclass
class _Lease:
    limit: int = 0
    held: int = 0
    used: int = 0
    refused_until: float = 0.0
    #: Held while this replica resizes its holding of this key.
    turn: Turn = field(default_factory=Turn)
    returning: bool = False


class InFlight:
    """One replica's view of the shared slots: leases per key."""

    def __init__(
        self,
        shared: SharedSlots,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
    ) -> None:
        self._shared = shared
        self._clock = clock
        self.holder = holder or uuid.uuid4().hex
        self._leases: dict[str, _Lease] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._unreachable = Unreachable(log, "in-flight slots")

    def used(self, key: str) -> int:
        lease = self._leases.get(key)
        return lease.used if lease is not None else 0

    def take_leased(self, key: str) -> bool:
        """Take a slot of `key` from this replica's lease, if it has one free (no await: the
        common case on the request path); else `acquire`."""
        lease = self._leases.get(key)
        if lease is not None and lease.used < lease.held and not lease.turn.busy:
            lease.used += 1
            return True
        return False

    def put_back(self, key: str) -> None:
        """Undo a `take_leased` whose request was not admitted after all (its slot goes back
        to the lease, which is kept)."""
        lease = self._leases.get(key)
        if lease is not None and lease.used > 0:
            lease.used -= 1

    async def acquire(self, key: str, limit: int) -> bool:
        """Take a slot of `key` (limit `limit`): True, or False when all are in use."""
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
        lease.limit = limit
        while True:
            if lease.used < lease.held:
                lease.used += 1
                return True
            if not lease.turn.busy:
                break
            await lease.turn.wait()
        if self._clock() < lease.refused_until:
            return False
        chunk = chunk_of(limit)
        try:
            await self._resize(key, lease, lease.used + chunk)
        except Exception as exc:  # the shared record is unreachable: admit (fail open)
            self._unreachable.warn(key, exc)
            lease.used += 1
            return True
        if lease.used < lease.held:
            lease.used += 1
            return True
        lease.refused_until = self._clock() + REFUSED_S
        return False

    def release(self, key: str) -> None:
        """Free a slot taken by `acquire`."""
        lease = self._leases.get(key)
        if lease is None or lease.used <= 0:
            return
        lease.used -= 1
        lease.refused_until = 0.0
        chunk = chunk_of(lease.limit)
        if lease.held - lease.used > 2 * chunk or lease.used == 0:
            self._give_back(key, lease)

    def _give_back(self, key: str, lease: _Lease) -> None:
        if lease.returning:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # released outside the loop: the renewals give it back
            return
        lease.returning = True
        task = loop.create_task(self._return(key, lease))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _return(self, key: str, lease: _Lease) -> None:
        try:
            if lease.used == 0:
                await asyncio.sleep(IDLE_RETURN_S)  # a request about to come keeps its lease
            while lease.turn.busy:
                await lease.turn.wait()
            chunk = chunk_of(lease.limit)
            wanted = lease.used + chunk if lease.used else 0
            if wanted < lease.held:
                with contextlib.suppress(Exception):
                    await self._resize(key, lease, wanted)
        finally:
            lease.returning = False
            if lease.held == 0 and lease.used == 0 and not lease.turn.busy:
                self._leases.pop(key, None)

    async def _resize(self, key: str, lease: _Lease, wanted: int) -> None:
        """One resize of this replica's holding at a time per key."""
        with lease.turn.taken():
            lease.held = await self._shared.resize(
                key, self.holder, max(wanted, lease.used), lease.limit, self._clock()
            )

    async def renew(self) -> None:
        """Renew every holding (each keeps its lease; idle ones are given back)."""
        for key, lease in list(self._leases.items()):
            if lease.turn.busy or lease.limit == 0:
                continue
            wanted = lease.used + chunk_of(lease.limit) if lease.used else 0
            try:
                await self._resize(key, lease, min(wanted, lease.held) if lease.used else 0)
            except Exception as exc:
                self._unreachable.warn(key, exc)
            if lease.held == 0 and lease.used == 0 and not lease.returning:
                self._leases.pop(key, None)

    async def run_renewals(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            await self.renew()

    async def close(self) -> None:
        """Give every holding back."""
        for task in list(self._background):
            task.cancel()
        for key, lease in list(self._leases.items()):
            with contextlib.suppress(Exception):
                await self._shared.resize(key, self.holder, 0, lease.limit, self._clock())
        self._leases.clear()
