"""Per-minute limits as token buckets shared by every bridge replica, read from a local lease.

A limit of L per minute is a bucket that refills at L/60 a second and holds at most
L * BURST_FRACTION (`schemas/limits.py`: ten seconds' refill). The bucket itself is shared
(`SharedBuckets`: the NATS KV bucket, compare-and-set, in `ratelimit_kv.py`), so two bridge
replicas together admit what one would. Asking the shared bucket for every request would put
a KV round trip on the hot path, so each replica takes a little more than a request needs (a
*lease*: `LEASE_S` of refill, at most a quarter of the bucket) and admits from it locally
until it runs out; a lease not used within `LEASE_TTL_S` is dropped (given up, not returned:
the replicas together admit at most what the bucket gives, never more). A replica also
refuses without asking while the level it last saw, refilled since, is below what a request
needs (others only take, so the shared level cannot be higher): a tenant's flood of refused
requests costs no round trips. A replica takes from the shared bucket for a key one take at a
time (the others wait for its lease). When the shared store cannot be reached, requests are
admitted (fail open, with a warning): the limits must never stop the service.

A request is admitted when the bucket holds at least its cost, or, for a cost larger than the
whole bucket (a large `max_tokens`), when the bucket is full: it then takes the bucket below
zero, and the debt is refilled before anything else is admitted. A cost larger than a whole
minute's limit can never be admitted: `TooLarge`. Token costs are estimates, settled when
the result comes (`Limiter.settle`: the unused part is given back to the lease).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from producer.leases import Turn, Unreachable
from schemas.limits import BURST_FRACTION, BucketState

log = logging.getLogger(__name__)

#: A lease holds this many seconds of the bucket's refill (and at most a quarter of it).
LEASE_S = 0.5
#: A lease unused for this long is dropped.
LEASE_TTL_S = 2.0


class Rate:
    """A per-minute limit as a bucket (its figures computed once: this is on every
    request's path)."""

    __slots__ = ("capacity", "lease", "per_minute", "per_s")

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.per_s = per_minute / 60.0
        self.capacity = max(1.0, per_minute * BURST_FRACTION)
        self.lease = min(self.per_s * LEASE_S, self.capacity / 4)

    def level(self, tokens: float, at_s: float, now_s: float) -> float:
        """The bucket's level now, from `tokens` at `at_s`."""
        return min(self.capacity, tokens + max(0.0, now_s - at_s) * self.per_s)

    def needs(self, cost: float) -> float:
        """The level at which a request of `cost` is admitted."""
        return min(cost, self.capacity)


@dataclass(frozen=True)
class Taken:
    #: What the shared bucket gave (0: refused).
    granted: float
    #: Its level after the take (or, refused, as it is).
    level: float


def take(
    state: BucketState | None, cost: float, extra: float, rate: Rate, now_s: float
) -> tuple[BucketState | None, Taken]:
    """One take from a bucket as stored (None: never used, so full): its state after (None:
    unchanged) and what was taken. `SharedBuckets.take`'s arithmetic, without the I/O."""
    level = rate.capacity if state is None else rate.level(state.tokens, state.at_s, now_s)
    if level < rate.needs(cost):
        return None, Taken(0.0, level)
    granted = cost + min(extra, max(0.0, level - cost))
    return BucketState(level - granted, now_s), Taken(granted, level - granted)


class SharedBuckets(Protocol):
    async def take(self, key: str, cost: float, extra: float, rate: Rate, now_s: float) -> Taken:
        """Take `cost` plus up to `extra` more from the bucket `key` if it holds at least
        `rate.needs(cost)` (it may go below zero by what `cost` exceeds the level); else take
        nothing."""
        ...


class TooLarge(Exception):
    """A request costs more than a whole minute's limit: it can never be admitted."""


# A lease of a key, as inflight.py's `_Lease` (the same outline, other fields: tokens taken
# ahead here, slots held there); what the two share is in leases.py.
@dataclass
class _Lease:
    tokens: float = 0.0
    expires_s: float = 0.0
    #: The shared level last seen (for the remaining-count headers).
    level: float = 0.0
    seen_s: float = 0.0
    #: Held while this replica takes from the shared bucket for this key.
    turn: Turn = field(default_factory=Turn)


class Verdict(NamedTuple):
    """(A tuple: made on every request, and a frozen dataclass costs several times as much.)"""

    admitted: bool
    #: What is left (an estimate: the shared level last seen plus this replica's lease).
    remaining: float
    #: Seconds until the bucket is full again (admitted), or until this request could be
    #: admitted (refused).
    reset_s: float


class Limiter:
    """One replica's view of the shared buckets: leases per key."""

    def __init__(self, shared: SharedBuckets, clock: Callable[[], float] = time.time) -> None:
        self._shared = shared
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._unreachable = Unreachable(log, "rate buckets")

    def try_leased(self, key: str, cost: float, rate: Rate) -> Verdict | None:
        """The verdict from this replica's lease alone, without awaiting (the common case on
        the request path: a request its lease covers); None: `acquire`."""
        now = self._clock()
        left = self.take_leased(key, cost, rate, now)
        if left is None:
            return None
        return Verdict(True, left, (rate.capacity - left) / rate.per_s)

    def take_leased(self, key: str, cost: float, rate: Rate, now: float) -> float | None:
        """`try_leased` at `now` (the clock read once for a request's limits), admitted: what
        is left (its verdict's `remaining`); None: `acquire`."""
        lease = self._leases.get(key)
        if lease is None or lease.turn.busy or lease.tokens < cost:
            return None
        if lease.expires_s < now or cost > rate.per_minute:
            return None
        lease.tokens -= cost
        return _left(lease, rate, now)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    async def acquire(self, key: str, cost: float, rate: Rate) -> Verdict:
        if cost > rate.per_minute:
            raise TooLarge(
                f"costs {cost:,.0f}, more than the limit of {rate.per_minute:,} a minute"
            )
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
        while True:
            verdict = self._local(lease, cost, rate, self._clock())
            if verdict is not None:
                return verdict
            if not lease.turn.busy:
                break
            # One take from the shared bucket at a time per key: wait for the one under way
            # (it brings a lease), then look again.
            await lease.turn.wait()
        with lease.turn.taken():
            return await self._take(key, lease, cost, rate)

    def _local(self, lease: _Lease, cost: float, rate: Rate, now: float) -> Verdict | None:
        """The verdict this replica can give alone (from its lease, or a refusal while the
        shared level cannot be high enough), or None: ask the shared bucket."""
        if lease.expires_s < now and lease.tokens > 0:
            lease.tokens = 0.0  # an unused lease is dropped (a debt is not)
        if lease.tokens >= cost:
            lease.tokens -= cost
            return self._verdict(True, lease, rate, now)
        if lease.seen_s:
            # The level last seen, refilled since, is the most the shared bucket can hold
            # now (other replicas only take): below the need, refuse without asking.
            need = rate.needs(cost - lease.tokens)
            level = rate.level(lease.level, lease.seen_s, now)
            if level < need:
                return Verdict(False, max(0.0, level + lease.tokens), (need - level) / rate.per_s)
        return None

    async def _take(self, key: str, lease: _Lease, cost: float, rate: Rate) -> Verdict:
        now = self._clock()
        need = cost - lease.tokens
        try:
            taken = await self._shared.take(key, need, rate.lease, rate, now)
        except Exception as exc:  # the shared store is unreachable: admit (fail open)
            self._unreachable.warn(key, exc)
            return Verdict(True, 0.0, 0.0)
        lease.level, lease.seen_s = taken.level, now
        if taken.granted <= 0:
            wait = (rate.needs(need) - taken.level) / rate.per_s
            return Verdict(False, max(0.0, lease.tokens + taken.level), max(wait, 0.001))
        lease.tokens += taken.granted - cost
        lease.expires_s = now + LEASE_TTL_S
        return self._verdict(True, lease, rate, now)

    def settle(self, key: str, tokens: float) -> None:
        """Give `tokens` back to this replica's lease (negative: take them): an estimate
        settled with what was used."""
        lease = self._leases.get(key)
        now = self._clock()
        if lease is None or lease.expires_s < now:
            if tokens <= 0:
                return
            lease = self._leases[key] = _Lease()
        lease.tokens += tokens
        lease.expires_s = now + LEASE_TTL_S

    def remaining(self, key: str, rate: Rate) -> Verdict:
        """What is left, as last seen (a full bucket for a key never used here)."""
        lease = self._leases.get(key)
        now = self._clock()
        if lease is None:
            return Verdict(True, rate.capacity, 0.0)
        return self._verdict(True, lease, rate, now)

    def _verdict(self, admitted: bool, lease: _Lease, rate: Rate, now: float) -> Verdict:
        left = _left(lease, rate, now)
        return Verdict(admitted, left, (rate.capacity - left) / rate.per_s)


def _left(lease: _Lease, rate: Rate, now: float) -> float:
    """What is left of a bucket, as this replica sees it: the shared level last seen,
    refilled since, plus its lease; at most the bucket's capacity."""
    capacity = rate.capacity
    mine = lease.tokens if lease.tokens > 0.0 else 0.0
    if lease.seen_s:
        shared = lease.level + (now - lease.seen_s if now > lease.seen_s else 0.0) * rate.per_s
        left = (shared if shared < capacity else capacity) + mine
    else:
        left = capacity + mine
    if left > capacity:
        return capacity
    return left if left > 0.0 else 0.0
