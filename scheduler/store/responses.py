"""Stored responses (the Responses API): written once finished, read per tenant, kept
`keep_s` (the bridge's `JETSERVE_RESPONSES_KEEP_S`), then deleted by the scheduler's
housekeeping. A row past its `expires_at` is never returned, swept or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.store.pool import Db


@dataclass(frozen=True)
class ResponseRow:
    id: str
    tenant: str
    status: str
    response: bytes
    conversation: bytes
    input_items: bytes
    stream_seq: int | None = None


async def put(db: Db, row: ResponseRow, keep_s: float) -> None:
    await db.execute(
        "INSERT INTO responses (id, tenant, status, response, conversation, input_items, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) "
        "ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, response = EXCLUDED.response, "
        "conversation = EXCLUDED.conversation WHERE responses.tenant = EXCLUDED.tenant",
        row.id,
        row.tenant,
        row.status,
        row.response,
        row.conversation,
        row.input_items,
        keep_s,
    )


async def get(db: Db, response_id: str, tenant: str) -> ResponseRow | None:
    r = await db.fetchrow(
        "SELECT id, tenant, status, response, conversation, input_items, stream_seq "
        "FROM responses "
        "WHERE id = $1 AND tenant = $2 AND expires_at > now()",
        response_id,
        tenant,
    )
    if r is None:
        return None
    return ResponseRow(
        r["id"],
        r["tenant"],
        r["status"],
        bytes(r["response"]),
        bytes(r["conversation"]),
        bytes(r["input_items"]),
        r["stream_seq"],
    )


async def set_stream_seq(db: Db, response_id: str, stream_seq: int) -> None:
    await db.execute("UPDATE responses SET stream_seq = $2 WHERE id = $1", response_id, stream_seq)


async def delete(db: Db, response_id: str, tenant: str) -> bool:
    result = await db.execute(
        "DELETE FROM responses WHERE id = $1 AND tenant = $2 AND expires_at > now()",
        response_id,
        tenant,
    )
    return bool(result.endswith(" 1"))


async def delete_expired(db: Db) -> int:
    result = await db.execute("DELETE FROM responses WHERE expires_at < now()")
    return int(result.split()[-1])
