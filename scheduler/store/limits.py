"""Tenant limits (`schemas/limits.py`) in the `tenant_limits` table: set, read, list."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from scheduler.store.keys import validate_tenant
from schemas.limits import ALL_MODELS, FIELDS, UNLIMITED, TenantLimits, check_limits

_COLUMNS = ", ".join(FIELDS)


@dataclass(frozen=True)
class LimitRow:
    tenant: str
    model: str
    limits: TenantLimits


def _limits(r: asyncpg.Record) -> TenantLimits:
    return TenantLimits(**{name: r[name] for name in FIELDS})


async def set_limits(pool: asyncpg.Pool, tenant: str, limits: TenantLimits, model: str) -> None:
    """Replace the tenant's row for `model` (`*`: all its models)."""
    validate_tenant(tenant)
    check_limits(limits)
    values = [getattr(limits, name) for name in FIELDS]
    placeholders = ", ".join(f"${i}" for i in range(3, 3 + len(FIELDS)))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in FIELDS)
    await pool.execute(
        f"INSERT INTO tenant_limits (tenant, model, {_COLUMNS}) VALUES ($1, $2, {placeholders}) "
        f"ON CONFLICT (tenant, model) DO UPDATE SET {updates}, updated_at = now()",
        tenant,
        model,
        *values,
    )


async def clear_limits(pool: asyncpg.Pool, tenant: str, model: str) -> bool:
    """Remove the tenant's row for `model` (the defaults apply again): whether there was one."""
    status: str = await pool.execute(
        "DELETE FROM tenant_limits WHERE tenant = $1 AND model = $2", tenant, model
    )
    return status.endswith(" 1")


async def limits_for(
    pool: asyncpg.Pool, tenant: str, model: str, defaults: TenantLimits = UNLIMITED
) -> tuple[TenantLimits, str | None]:
    """The row for `model`, else the one for all models, else `defaults`; with the scope
    they hold for (`model`, or None for all models)."""
    rows = await pool.fetch(
        f"SELECT model, {_COLUMNS} FROM tenant_limits WHERE tenant = $1 AND model IN ($2, $3)",
        tenant,
        model,
        ALL_MODELS,
    )
    by_model = {r["model"]: r for r in rows}
    if model in by_model and model != ALL_MODELS:
        return _limits(by_model[model]), model
    if ALL_MODELS in by_model:
        return _limits(by_model[ALL_MODELS]), None
    return defaults, None


async def list_limits(pool: asyncpg.Pool, tenant: str | None = None) -> list[LimitRow]:
    rows = await pool.fetch(
        f"SELECT tenant, model, {_COLUMNS} FROM tenant_limits "
        "WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, model",
        tenant,
    )
    return [LimitRow(r["tenant"], r["model"], _limits(r)) for r in rows]


async def enqueued(db: asyncpg.Connection | asyncpg.Pool, tenant: str) -> tuple[int, int]:
    """The tenant's enqueued batch work: (lines, estimated prompt tokens) not yet answered in
    its batches being validated or in progress. Tokens are estimated as bytes / 4 of the
    input files, in proportion to the lines left."""
    row = await db.fetchrow(
        "SELECT "
        "COALESCE(SUM(CASE WHEN b.status = 'validating' THEN f.lines "
        "  ELSE GREATEST(b.total - b.completed - b.failed, 0) END), 0) AS lines, "
        "COALESCE(SUM(CASE WHEN b.status = 'validating' OR b.total = 0 THEN f.bytes "
        "  ELSE f.bytes * GREATEST(b.total - b.completed - b.failed, 0) / b.total END), 0) "
        "  / 4 AS tokens "
        "FROM batches b JOIN files f ON f.id = b.input_file_id "
        "WHERE b.tenant = $1 AND b.status IN ('validating', 'in_progress')",
        tenant,
    )
    assert row is not None
    return int(row["lines"]), int(row["tokens"])


def queue_error(
    limits: TenantLimits, tenant: str, enqueued_now: tuple[int, int], adding: tuple[int, int]
) -> dict[str, str | None] | None:
    """The batch error (OpenAI's `token_limit_exceeded` shape) when `adding` (lines, tokens)
    to what is enqueued goes over the tenant's batch queue limit; else None."""
    for (name, limit), now, more in zip(
        (("lines", limits.batch_queue_lines), ("tokens", limits.batch_queue_tokens)),
        enqueued_now,
        adding,
        strict=True,
    ):
        if limit is not None and now + more > limit:
            return {
                "code": "token_limit_exceeded" if name == "tokens" else "line_limit_exceeded",
                "message": (
                    f"Enqueued {name} limit reached for tenant {tenant}. Limit: {limit:,} "
                    f"enqueued {name}; enqueued now {now:,}, this batch {more:,}. Please try "
                    "again once some in_progress batches have been completed."
                ),
                "param": None,
                "line": None,
            }
    return None
