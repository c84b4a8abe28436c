"""Tenant limits: what a tenant may take, and the shared state of its rate buckets. Pure.

    field                 unit                                   None
    rpm                   requests admitted per minute           no limit
    tpm                   tokens per minute (prompt + output)    no limit
    max_in_flight         requests being answered at once        no limit
    batch_queue_lines     lines in the tenant's unfinished batches (enqueued)
    batch_queue_tokens    estimated tokens in them

A row applies to one model, or to every model when `model` is `*` (a model's own row wins).
`BucketState` (a rate's bucket) and `SlotsState` (the in-flight slots each replica holds) are
the values every bridge replica reads and writes (compare-and-set) in the NATS KV bucket
`names.RATELIMIT_BUCKET`, one key per tenant, scope and dimension.
"""

from __future__ import annotations

from typing import Final

import msgspec

#: The scope of a limit row that applies to every model.
ALL_MODELS: Final = "*"
#: The most any limit may be: larger values are typing mistakes, not policy.
MAX_LIMIT: Final = 10**12
#: The bucket of a per-minute limit L holds at most L * BURST_FRACTION (ten seconds' refill):
#: a tenant idle for a while may send that many at once, then the rate holds.
BURST_FRACTION: Final = 1 / 6


class TenantLimits(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    batch_queue_lines: int | None = None
    batch_queue_tokens: int | None = None

    @property
    def unlimited(self) -> bool:
        return self == UNLIMITED


UNLIMITED: Final = TenantLimits()
FIELDS: Final = TenantLimits.__struct_fields__


def check_limits(limits: TenantLimits) -> TenantLimits:
    """`limits` if every value is a whole number from 1 to `MAX_LIMIT` (or None); else
    ValueError naming the field."""
    for name in FIELDS:
        value = getattr(limits, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        if not 1 <= value <= MAX_LIMIT:
            raise ValueError(f"{name} must be between 1 and {MAX_LIMIT:,} (got {value:,})")
    return limits


class BucketState(msgspec.Struct, frozen=True, array_like=True):
    """A token bucket as stored: its level (may be below zero: a large request admitted
    on a partly full bucket leaves a debt the refill pays first) at time `at_s` (Unix)."""

    tokens: float
    at_s: float


encode_bucket = msgspec.json.Encoder().encode
decode_bucket = msgspec.json.Decoder(BucketState).decode


class SlotHolding(msgspec.Struct, frozen=True, array_like=True):
    """The in-flight slots one bridge replica holds, until `expires_s` (Unix) unless renewed."""

    slots: int
    expires_s: float


class SlotsState(msgspec.Struct, frozen=True):
    """A tenant's in-flight slots as stored: replica id -> its holding. The replicas together
    hold at most the limit."""

    holders: dict[str, SlotHolding] = {}


encode_slots = msgspec.json.Encoder().encode
decode_slots = msgspec.json.Decoder(SlotsState).decode
