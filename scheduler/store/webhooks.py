"""Webhook endpoints (per tenant, each with a Standard Webhooks secret) and the delivery outbox.

An event is written to the outbox (`enqueue`) in the same transaction as the state change that
caused it, one row per endpoint that wants it; the deliverer claims due rows (`FOR UPDATE
SKIP LOCKED`, then a lease) and records each attempt on its own. A row ends `delivered` (a
2xx) or `dead` (still failing after the retry period).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from scheduler.store.pool import Db


class EventType(StrEnum):
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
    BATCH_EXPIRED = "batch.expired"
    BATCH_CANCELLED = "batch.cancelled"
    #: An async single request finished with a result, or with an error.
    REQUEST_COMPLETED = "request.completed"
    REQUEST_FAILED = "request.failed"
    #: A background response ended (OpenAI's names).
    RESPONSE_COMPLETED = "response.completed"
    RESPONSE_INCOMPLETE = "response.incomplete"
    RESPONSE_FAILED = "response.failed"
    RESPONSE_CANCELLED = "response.cancelled"


ALL_EVENTS = tuple(EventType)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True)
class Endpoint:
    id: str
    tenant: str
    url: str
    secret: str
    events: list[str]
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    id: str
    tenant: str
    url: str
    secret: str
    event_type: str
    payload: bytes
    attempts: int
    created_at: datetime


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _endpoint(r: asyncpg.Record) -> Endpoint:
    return Endpoint(r["id"], r["tenant"], r["url"], r["secret"], list(r["events"]), r["created_at"])


async def create_endpoint(
    db: Db, tenant: str, url: str, events: Sequence[str], secret: str | None = None
) -> Endpoint:
    row = await db.fetchrow(
        "INSERT INTO webhook_endpoints (id, tenant, url, secret, events) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING *",
        "we_" + secrets.token_hex(12),
        tenant,
        url,
        secret or new_secret(),
        list(events),
    )
    assert row is not None
    return _endpoint(row)


async def list_endpoints(db: Db, tenant: str) -> list[Endpoint]:
    rows = await db.fetch(
        "SELECT * FROM webhook_endpoints WHERE tenant = $1 ORDER BY created_at, id", tenant
    )
    return [_endpoint(r) for r in rows]


async def get_endpoint(db: Db, tenant: str, endpoint_id: str) -> Endpoint | None:
    row = await db.fetchrow(
        "SELECT * FROM webhook_endpoints WHERE id = $1 AND tenant = $2", endpoint_id, tenant
    )
    return None if row is None else _endpoint(row)


async def endpoint_by_url(db: Db, tenant: str, url: str) -> Endpoint | None:
    row = await db.fetchrow(
        "SELECT * FROM webhook_endpoints WHERE tenant = $1 AND url = $2 "
        "ORDER BY created_at LIMIT 1",
        tenant,
        url,
    )
    return None if row is None else _endpoint(row)


async def delete_endpoint(db: Db, tenant: str, endpoint_id: str) -> bool:
    result = await db.execute(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant = $2", endpoint_id, tenant
    )
    return bool(result.endswith(" 1"))


def event_payload(event_type: EventType, data: dict[str, Any]) -> bytes:
    """OpenAI's webhook event shape: `{"object": "event", "id", "type", "created_at", "data"}`."""
    event = {
        "object": "event",
        "id": "evt_" + secrets.token_hex(12),
        "type": str(event_type),
        "created_at": int(time.time()),
        "data": data,
    }
    return json.dumps(event, separators=(",", ":")).encode()


async def enqueue(
    conn: Db,
    tenant: str,
    event_type: EventType,
    data: dict[str, Any],
    *,
    only_url: str | None = None,
) -> int:
    """One outbox row per endpoint of `tenant` subscribed to the event (or, with `only_url`,
    for the tenant's endpoint with that URL, whatever it subscribed to). Returns the count."""
    payload = event_payload(event_type, data)
    result = await conn.execute(
        "INSERT INTO webhook_deliveries (id, tenant, endpoint_id, url, event_type, payload) "
        "SELECT 'msg_' || md5(random()::text || clock_timestamp()::text || e.id), "
        "e.tenant, e.id, e.url, $2, $3 FROM webhook_endpoints e "
        "WHERE e.tenant = $1 AND CASE WHEN $4::text IS NULL THEN $2 = ANY(e.events) "
        "ELSE e.url = $4 END",
        tenant,
        str(event_type),
        payload,
        only_url,
    )
    return int(result.split()[-1])


async def claim_due(db: Db, limit: int, lease_s: float) -> list[Delivery]:
    """Claim due pending deliveries: each one's attempt is counted now and its next attempt
    moved `lease_s` ahead, in one short statement. The attempt itself runs outside any
    transaction and records its outcome with `record_attempt`; if the process dies during
    it, the delivery comes back when the lease ends (counted: it cannot loop unnoticed)."""
    rows = await db.fetch(
        "UPDATE webhook_deliveries d SET attempts = d.attempts + 1, "
        "next_attempt_at = now() + make_interval(secs => $2) "
        "FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND d.id IN ("
        "SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= now() "
        "ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
        "RETURNING d.id, d.tenant, d.url, e.secret, d.event_type, d.payload, d.attempts, "
        "d.created_at",
        limit,
        lease_s,
    )
    return [
        Delivery(
            r["id"],
            r["tenant"],
            r["url"],
            r["secret"],
            r["event_type"],
            bytes(r["payload"]),
            r["attempts"],
            r["created_at"],
        )
        for r in rows
    ]


async def record_attempt(
    db: Db,
    delivery_id: str,
    *,
    state: DeliveryState,
    status: int | None,
    error: str | None,
    retry_in_s: float,
) -> None:
    """The outcome of the attempt `claim_due` counted."""
    await db.execute(
        "UPDATE webhook_deliveries SET state = $2, last_status = $3, "
        "last_error = $4, next_attempt_at = now() + make_interval(secs => $5), "
        "delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END "
        "WHERE id = $1",
        delivery_id,
        str(state),
        status,
        None if error is None else error[:500],
        retry_in_s,
    )


async def deliveries(db: Db, tenant: str) -> list[dict[str, Any]]:
    """Every delivery of a tenant (for tests and `GET /v1/webhooks/deliveries`)."""
    rows = await db.fetch(
        "SELECT id, endpoint_id, event_type, state, attempts, last_status, last_error, "
        "created_at, delivered_at FROM webhook_deliveries WHERE tenant = $1 "
        "ORDER BY created_at, id",
        tenant,
    )
    return [dict(r) for r in rows]


async def counts_by_state(db: Db) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT state, count(*)::bigint AS n FROM webhook_deliveries GROUP BY state"
    )
    return {r["state"]: r["n"] for r in rows}
