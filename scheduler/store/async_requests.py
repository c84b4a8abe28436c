"""Async single requests: recorded, dispatched once, answered once, kept for a while.

    queued -> in_progress -> completed | failed      (the row is deleted at `expires_at`)

The row is written before the request is published, so nothing accepted is lost: a request
left `queued` (its publisher died between the two) is published again by the scheduler, with
the same id, which JetStream de-duplicates.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from scheduler.store.pool import Db


@dataclass(frozen=True)
class AsyncRow:
    id: str
    tenant: str
    endpoint: str
    model: str
    request: bytes
    status: str
    callback_url: str | None
    ok: bool | None
    reply: bytes | None
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None


def _row(r: asyncpg.Record) -> AsyncRow:
    return AsyncRow(
        r["id"],
        r["tenant"],
        r["endpoint"],
        r["model"],
        bytes(r["request"]),
        r["status"],
        r["callback_url"],
        r["ok"],
        None if r["reply"] is None else bytes(r["reply"]),
        r["created_at"],
        r["completed_at"],
        r["expires_at"],
    )


_COLUMNS = (
    "id, tenant, endpoint, model, request, status, callback_url, ok, reply, created_at, "
    "completed_at, expires_at"
)


def new_async_id() -> str:
    return "areq_" + secrets.token_hex(12)


async def insert(
    db: Db,
    *,
    request_id: str,
    tenant: str,
    endpoint: str,
    model: str,
    request: bytes,
    callback_url: str | None,
) -> bool:
    """Record a queued request; False if one with this id exists already (a re-submission)."""
    result = await db.execute(
        "INSERT INTO async_requests (id, tenant, endpoint, model, request, status, callback_url) "
        "VALUES ($1, $2, $3, $4, $5, 'queued', $6) ON CONFLICT (id) DO NOTHING",
        request_id,
        tenant,
        endpoint,
        model,
        request,
        callback_url,
    )
    return bool(result.endswith(" 1"))


async def mark_dispatched(db: Db, request_id: str) -> None:
    await db.execute(
        "UPDATE async_requests SET status = 'in_progress', dispatched_at = now() "
        "WHERE id = $1 AND status = 'queued'",
        request_id,
    )


async def delete(db: Db, request_id: str) -> None:
    await db.execute("DELETE FROM async_requests WHERE id = $1", request_id)


async def get(db: Db, request_id: str, tenant: str | None = None) -> AsyncRow | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM async_requests WHERE id = $1 "
        "AND ($2::text IS NULL OR tenant = $2)",
        request_id,
        tenant,
    )
    return None if row is None else _row(row)


async def stale_queued(db: Db, older_than_s: float, limit: int = 500) -> list[AsyncRow]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM async_requests WHERE status = 'queued' "
        "AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        older_than_s,
        limit,
    )
    return [_row(r) for r in rows]


async def store_results(
    conn: asyncpg.Connection, results: Sequence[tuple[str, bool, bytes]], keep_s: float
) -> list[AsyncRow]:
    """Store (id, ok, reply) for requests still waiting; a second result is dropped. Returns
    the rows that were answered now (for their webhooks)."""
    if not results:
        return []
    ids, oks, replies = zip(*results, strict=True)
    rows = await conn.fetch(
        "UPDATE async_requests a SET status = CASE WHEN u.ok THEN 'completed' ELSE 'failed' END, "
        "ok = u.ok, reply = u.reply, completed_at = now(), "
        "expires_at = now() + make_interval(secs => $4) "
        "FROM unnest($1::text[], $2::bool[], $3::bytea[]) AS u(id, ok, reply) "
        "WHERE a.id = u.id AND a.status IN ('queued', 'in_progress') "
        f"RETURNING {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))}",
        list(ids),
        list(oks),
        list(replies),
        keep_s,
    )
    return [_row(r) for r in rows]


async def delete_expired(db: Db) -> int:
    result = await db.execute("DELETE FROM async_requests WHERE expires_at < now()")
    return int(result.split()[-1])


async def counts_by_status(db: Db) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT status, count(*)::bigint AS n FROM async_requests GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}
