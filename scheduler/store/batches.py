"""Batches, their items and results: every state change is one SQL statement or transaction.

Life of a batch (OpenAI's statuses):

    validating -> in_progress -> finalizing -> completed
         |              |  \\-> (window passed) sealed -> expired
         |              \\-> cancelling -> sealed -> cancelled
         \\-> failed (a line is invalid; `errors` lists them)

`sealed` marks the moment results stop being stored: the result collector only writes results
of unsealed batches, under a row lock (`FOR SHARE`), so the files written after sealing hold
every stored result. The end status of a sealed batch follows from its status: finalizing ->
completed, cancelling -> cancelled, in_progress -> expired.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from scheduler.store.pool import Db


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


@dataclass(frozen=True)
class BatchRow:
    id: str
    tenant: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    model: str | None
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    dispatched: int
    completed: int
    failed: int
    sealed: bool
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None

    @property
    def in_flight(self) -> int:
        return max(0, self.dispatched - self.completed - self.failed)


_FIELDS = [f for f in BatchRow.__dataclass_fields__]
_COLUMNS = ", ".join(_FIELDS)


def _row(r: asyncpg.Record) -> BatchRow:
    values = dict(r)
    values["status"] = BatchStatus(values["status"])
    for key in ("metadata", "errors"):
        if values[key] is not None:
            values[key] = json.loads(values[key])
    return BatchRow(**values)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def item_request_id(batch_id: str, idx: int) -> str:
    """The request id of item `idx`: its JetStream de-duplication id and its output `id`."""
    return f"{batch_id}-{idx}"


def parse_item_request_id(request_id: str) -> tuple[str, int] | None:
    batch_id, sep, idx = request_id.rpartition("-")
    if not sep or not idx.isdigit():
        return None
    return batch_id, int(idx)


async def create_batch(
    db: Db,
    *,
    tenant: str,
    endpoint: str,
    input_file_id: str,
    completion_window: str,
    window_s: float,
    metadata: dict[str, str] | None,
) -> BatchRow:
    row = await db.fetchrow(
        f"INSERT INTO batches (id, tenant, endpoint, input_file_id, completion_window, status, "
        f"metadata, expires_at) VALUES ($1, $2, $3, $4, $5, 'validating', $6, "
        f"now() + make_interval(secs => $7)) RETURNING {_COLUMNS}",
        new_batch_id(),
        tenant,
        endpoint,
        input_file_id,
        completion_window,
        None if metadata is None else json.dumps(metadata),
        window_s,
    )
    assert row is not None
    return _row(row)


async def get_batch(db: Db, batch_id: str, tenant: str | None = None) -> BatchRow | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM batches WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        batch_id,
        tenant,
    )
    return None if row is None else _row(row)


async def list_batches(db: Db, tenant: str, *, after: str | None, limit: int) -> list[BatchRow]:
    """Newest first, after the batch `after`; `limit + 1` rows (the caller tells `has_more`)."""
    cursor = ""
    args: list[object] = [tenant, limit + 1]
    if after is not None:
        cursor = (
            "AND (created_at, id) < "
            "(SELECT created_at, id FROM batches WHERE id = $3 AND tenant = $1)"
        )
        args.append(after)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM batches WHERE tenant = $1 {cursor} "
        "ORDER BY created_at DESC, id DESC LIMIT $2",
        *args,
    )
    return [_row(r) for r in rows]


async def request_cancel(db: Db, tenant: str, batch_id: str) -> BatchRow | None:
    """validating / in_progress -> cancelling. Returns the batch as it is afterwards (None if
    it does not exist); the caller refuses a batch that has already ended."""
    await db.execute(
        "UPDATE batches SET status = 'cancelling', cancelling_at = now() "
        "WHERE id = $1 AND tenant = $2 AND status IN ('validating', 'in_progress') "
        "AND NOT sealed",
        batch_id,
        tenant,
    )
    return await get_batch(db, batch_id, tenant)


async def batches_in(db: Db, statuses: Sequence[BatchStatus], limit: int = 100) -> list[BatchRow]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM batches WHERE status = ANY($1::text[]) "
        "ORDER BY created_at LIMIT $2",
        [str(s) for s in statuses],
        limit,
    )
    return [_row(r) for r in rows]


# ---- validation ----------------------------------------------------------------------------


async def copy_items(conn: asyncpg.Connection, rows: list[tuple[str, int, str, bytes]]) -> None:
    """(batch_id, idx, custom_id, request) rows, by COPY."""
    await conn.copy_records_to_table(
        "batch_items", records=rows, columns=["batch_id", "idx", "custom_id", "request"]
    )


async def _select(db: Db, where_order: str, *args: Any) -> list[BatchRow]:
    """Batches `WHERE <where_order>` (conditions, then ORDER BY / LIMIT; `args` are $1...)."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM batches WHERE {where_order}", *args)
    return [_row(r) for r in rows]


_TO_VALIDATE = (
    "NOT sealed AND in_progress_at IS NULL AND status IN ('validating', 'cancelling') "
    "ORDER BY created_at LIMIT $1"
)


async def to_validate(db: Db, limit: int = 10) -> list[BatchRow]:
    """Batches waiting for validation (also those cancelled before it ran)."""
    return await _select(db, _TO_VALIDATE, limit)


async def count_validation_attempt(db: Db, batch_id: str) -> int:
    """Count a validation attempt (committed before the attempt starts); the count so far."""
    count = await db.fetchval(
        "UPDATE batches SET validation_attempts = validation_attempts + 1 WHERE id = $1 "
        "RETURNING validation_attempts",
        batch_id,
    )
    return int(count or 0)


async def start_batch(db: Db, batch_id: str, model: str | None, total: int) -> None:
    """Validated: validating -> in_progress. A batch cancelled while it was validated stays
    cancelling (with its items, none dispatched), and is finished as cancelled."""
    await db.execute(
        "UPDATE batches SET model = $2, total = $3, in_progress_at = now(), "
        "status = CASE WHEN status = 'validating' THEN 'in_progress' ELSE status END "
        "WHERE id = $1 AND status IN ('validating', 'cancelling')",
        batch_id,
        model,
        total,
    )


async def fail_batch(conn: asyncpg.Connection, batch_id: str, errors: list[dict[str, Any]]) -> bool:
    """validating -> failed, with its line errors; the items written so far are deleted."""
    async with conn.transaction():
        result = await conn.execute(
            "UPDATE batches SET status = 'failed', failed_at = now(), errors = $2, sealed = true "
            "WHERE id = $1 AND status IN ('validating', 'cancelling')",
            batch_id,
            json.dumps(errors),
        )
        await conn.execute("DELETE FROM batch_items WHERE batch_id = $1", batch_id)
    return bool(result.endswith(" 1"))


# ---- dispatch ------------------------------------------------------------------------------


async def in_flight_by_tenant(db: Db) -> dict[tuple[str, str], int]:
    """Items published and not yet answered, per (model, tenant), over unsealed batches."""
    rows = await db.fetch(
        "SELECT model, tenant, sum(greatest(dispatched - completed - failed, 0))::int AS n "
        "FROM batches WHERE status IN ('in_progress', 'cancelling') AND NOT sealed "
        "AND model IS NOT NULL GROUP BY model, tenant"
    )
    return {(r["model"], r["tenant"]): r["n"] for r in rows}


#: The oldest few dispatchable batches of every tenant (so one tenant's many batches cannot
#: hide another's), oldest first.
_DISPATCHABLE = (
    "id IN (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY tenant "
    "ORDER BY created_at, id) AS nth FROM batches WHERE status = 'in_progress' "
    "AND NOT sealed AND dispatched < total) per_tenant WHERE nth <= $2) "
    "ORDER BY created_at, id LIMIT $1"
)


async def dispatchable(db: Db, limit: int = 100, per_tenant: int = 8) -> list[BatchRow]:
    """In-progress batches with items left to publish: up to `per_tenant` of each tenant's
    oldest, oldest first."""
    return await _select(db, _DISPATCHABLE, limit, per_tenant)


async def items_from(db: Db, batch_id: str, start: int, count: int) -> list[tuple[int, bytes]]:
    rows = await db.fetch(
        "SELECT idx, request FROM batch_items WHERE batch_id = $1 AND idx >= $2 "
        "ORDER BY idx LIMIT $3",
        batch_id,
        start,
        count,
    )
    return [(r["idx"], bytes(r["request"])) for r in rows]


async def advance_cursor(db: Db, batch_id: str, dispatched: int) -> None:
    await db.execute(
        "UPDATE batches SET dispatched = greatest(dispatched, $2) WHERE id = $1",
        batch_id,
        dispatched,
    )


async def unanswered(db: Db, batch: BatchRow) -> list[int]:
    """Indexes of items published but without a result (to cancel them)."""
    rows = await db.fetch(
        "SELECT i.idx FROM batch_items i LEFT JOIN batch_results r "
        "ON r.batch_id = i.batch_id AND r.idx = i.idx "
        "WHERE i.batch_id = $1 AND i.idx < $2 AND r.idx IS NULL",
        batch.id,
        batch.dispatched,
    )
    return [r["idx"] for r in rows]


# ---- results -------------------------------------------------------------------------------

_STORE_RESULTS = """
WITH live AS (
    SELECT id FROM batches
    WHERE id = ANY($1::text[]) AND NOT sealed AND status IN ('in_progress', 'cancelling')
    FOR SHARE
), ins AS (
    INSERT INTO batch_results (batch_id, idx, ok, reply)
    SELECT u.batch_id, u.idx, u.ok, u.reply
    FROM unnest($1::text[], $2::int[], $3::bool[], $4::bytea[]) AS u(batch_id, idx, ok, reply)
    JOIN live ON live.id = u.batch_id
    ON CONFLICT DO NOTHING
    RETURNING batch_id, ok
), counts AS (
    SELECT batch_id, count(*) FILTER (WHERE ok) AS good, count(*) FILTER (WHERE NOT ok) AS bad
    FROM ins GROUP BY batch_id
)
UPDATE batches b SET completed = b.completed + c.good, failed = b.failed + c.bad
FROM counts c WHERE b.id = c.batch_id
RETURNING b.id, c.good, c.bad
"""


async def store_results(
    db: Db, results: Sequence[tuple[str, int, bool, bytes]]
) -> dict[str, tuple[int, int]]:
    """Store (batch_id, idx, ok, reply) results in one statement. A result already stored (a
    redelivered item), or for a sealed or deleted batch, is dropped. Returns, per batch, how
    many new results were ok and failed."""
    if not results:
        return {}
    ids, idxs, oks, replies = zip(*results, strict=True)
    rows = await db.fetch(_STORE_RESULTS, list(ids), list(idxs), list(oks), list(replies))
    return {r["id"]: (r["good"], r["bad"]) for r in rows}


async def finished_batches(db: Db) -> list[str]:
    """In-progress batches whose every item has a result."""
    rows = await db.fetch(
        "SELECT id FROM batches WHERE status = 'in_progress' AND NOT sealed "
        "AND total > 0 AND completed + failed >= total"
    )
    return [r["id"] for r in rows]


async def seal(db: Db, batch_id: str, *, from_status: BatchStatus, finalizing: bool) -> bool:
    """Stop storing results of the batch (and, for a finished batch, -> finalizing)."""
    extra = ", status = 'finalizing', finalizing_at = now()" if finalizing else ""
    result = await db.execute(
        f"UPDATE batches SET sealed = true{extra} WHERE id = $1 AND status = $2 AND NOT sealed",
        batch_id,
        str(from_status),
    )
    return bool(result.endswith(" 1"))


async def sealed_unfinished(db: Db) -> list[BatchRow]:
    return await _select(
        db,
        "sealed AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling') "
        "ORDER BY created_at",
    )


Outcome = tuple[int, str, bytes, bool | None, bytes | None, int]


async def outcomes_in(
    db: Db, batch_id: str, start: int, count: int, *, with_request: bool
) -> list[Outcome]:
    """(idx, custom_id, request, ok, reply, finished) of items start <= idx < start + count,
    in order (items are numbered 0..total-1); ok and reply are None for an item without a
    result; finished: Unix seconds (0 without one); request is b"" unless `with_request`.
    Two primary-key range scans merged here: no join plan to go wrong on fresh tables."""
    request = "request" if with_request else "''::bytea AS request"
    items = await db.fetch(
        f"SELECT idx, custom_id, {request} FROM batch_items "
        "WHERE batch_id = $1 AND idx >= $2 AND idx < $2 + $3 ORDER BY idx",
        batch_id,
        start,
        count,
    )
    results = {
        r["idx"]: r
        for r in await db.fetch(
            "SELECT idx, ok, reply, extract(epoch FROM finished_at)::bigint AS finished "
            "FROM batch_results WHERE batch_id = $1 AND idx >= $2 AND idx < $2 + $3",
            batch_id,
            start,
            count,
        )
    }
    out: list[Outcome] = []
    for i in items:
        r = results.get(i["idx"])
        out.append(
            (
                i["idx"],
                i["custom_id"],
                bytes(i["request"]),
                None if r is None else r["ok"],
                None if r is None else bytes(r["reply"]),
                0 if r is None else r["finished"],
            )
        )
    return out


async def finish(
    conn: asyncpg.Connection,
    batch_id: str,
    status: BatchStatus,
    output_file_id: str | None,
    error_file_id: str | None,
) -> bool:
    """A sealed batch -> its end status, with its files. Its items and results are left for
    `delete_ended_rows` (the files hold them now)."""
    stamp = {
        BatchStatus.COMPLETED: "completed_at",
        BatchStatus.EXPIRED: "expired_at",
        BatchStatus.CANCELLED: "cancelled_at",
    }[status]
    result = await conn.execute(
        f"UPDATE batches SET status = $2, {stamp} = now(), output_file_id = $3, "
        "error_file_id = $4 WHERE id = $1 AND sealed AND status IN "
        "('validating', 'in_progress', 'finalizing', 'cancelling')",
        batch_id,
        str(status),
        output_file_id,
        error_file_id,
    )
    return bool(result.endswith(" 1"))


async def ended_with_rows(db: Db, limit: int = 10) -> list[str]:
    """Ended batches whose items were not deleted yet (the scheduler died in between)."""
    rows = await db.fetch(
        "SELECT b.id FROM batches b WHERE b.status IN ('completed', 'expired', 'cancelled', "
        "'failed') AND EXISTS (SELECT 1 FROM batch_items i WHERE i.batch_id = b.id) LIMIT $1",
        limit,
    )
    return [r["id"] for r in rows]


async def delete_ended_rows(db: Db, batch_id: str) -> None:
    """Drop the items and results of a batch that has ended (its files hold them)."""
    await db.execute("DELETE FROM batch_results WHERE batch_id = $1", batch_id)
    await db.execute("DELETE FROM batch_items WHERE batch_id = $1", batch_id)


async def expired(db: Db) -> list[BatchRow]:
    return await _select(
        db,
        "expires_at < now() AND NOT sealed AND status IN ('validating', 'in_progress') "
        "ORDER BY expires_at",
    )


async def counts_by_state(db: Db) -> dict[str, int]:
    """Items of live batches by state (for the metrics): pending, in_flight, completed, failed."""
    row = await db.fetchrow(
        "SELECT coalesce(sum(total - dispatched), 0)::bigint AS pending, "
        "coalesce(sum(greatest(dispatched - completed - failed, 0)), 0)::bigint AS in_flight, "
        "coalesce(sum(completed), 0)::bigint AS completed, "
        "coalesce(sum(failed), 0)::bigint AS failed "
        "FROM batches WHERE status IN ('in_progress', 'finalizing', 'cancelling')"
    )
    assert row is not None
    return dict(row)


async def counts_by_status(db: Db) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*)::bigint AS n FROM batches GROUP BY status")
    return {r["status"]: r["n"] for r in rows}
