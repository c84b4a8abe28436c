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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from schemas.settings import ConfigError, get_bool, get_float, get_int

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


def default_limits(env: Mapping[str, str]) -> TenantLimits:
    """`JETSERVE_DEFAULT_RPM`, `_TPM`, `_MAX_IN_FLIGHT`, `_BATCH_QUEUE_LINES`,
    `_BATCH_QUEUE_TOKENS` (unset: no limit)."""
    values = {}
    for name in FIELDS:
        key = f"JETSERVE_DEFAULT_{name.upper()}"
        if env.get(key, "").strip():
            values[name] = get_int(env, key, 0, minimum=1)
    try:
        return check_limits(TenantLimits(**values))
    except ValueError as exc:
        raise ConfigError(f"default limits: {exc}") from None


@dataclass(frozen=True)
class LimitSettings:
    """How a process that admits tenants' work applies their limits (the bridge, and the
    worker and scheduler for requests a tenant publishes straight to NATS)."""

    #: `JETSERVE_LIMITS`: enforce limits at all.
    enabled: bool = True
    #: Every tenant's limits where it has no row of its own (all None: no limit).
    defaults: TenantLimits = UNLIMITED
    #: A request's output tokens counted at admission when it names no `max_tokens`.
    default_max_tokens: int = 1024
    #: Limit rows are read through a cache this long: a change applies within it.
    cache_ttl_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LimitSettings:
        return cls(
            enabled=get_bool(env, "JETSERVE_LIMITS", True),
            defaults=default_limits(env),
            default_max_tokens=get_int(env, "JETSERVE_LIMITS_DEFAULT_MAX_TOKENS", 1024, minimum=1),
            cache_ttl_s=get_float(env, "JETSERVE_LIMITS_CACHE_TTL_S", 5.0, minimum=0.0),
        )


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
