"""API keys: create (the key is returned once), look up by hash, list, revoke.

A key is `js-` + 43 characters of `secrets.token_urlsafe(32)`: 256 random bits. Only its
SHA-256 is stored. A fast hash is right here: with 256 bits of entropy there is nothing to
brute-force, and the lookup runs on the request path (behind the bridge's short cache).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from scheduler.store.pool import Db

KEY_PREFIX = "js-"
#: The shape of every key `create_key` makes: anything else is refused without a query.
KEY_PATTERN = r"^js-[A-Za-z0-9_-]{43}$"
_KEY_RE = re.compile(KEY_PATTERN)
#: Tenants travel in NATS headers and subjects of later features: keep them plain.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_TENANT_RE = re.compile(TENANT_PATTERN)


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    key_prefix: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    info: ApiKey
    #: The key itself: shown to its owner once, never stored.
    secret: str


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def validate_tenant(tenant: str) -> str:
    if not _TENANT_RE.fullmatch(tenant):
        raise ValueError(
            f"invalid tenant {tenant!r}: use 1-128 of A-Z a-z 0-9 _ . - (starting alphanumeric)"
        )
    return tenant


def _row(r: asyncpg.Record) -> ApiKey:
    return ApiKey(
        r["id"], r["tenant"], r["key_prefix"], r["name"], r["created_at"], r["revoked_at"]
    )


_COLUMNS = "id, tenant, key_prefix, name, created_at, revoked_at"


async def create_key(db: Db, tenant: str, name: str | None = None) -> NewKey:
    validate_tenant(tenant)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await db.fetchrow(
        f"INSERT INTO api_keys (id, tenant, key_hash, key_prefix, name) "
        f"VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
        "key_" + secrets.token_hex(8),
        tenant,
        hash_key(secret),
        secret[:7],
        name,
    )
    assert row is not None
    return NewKey(_row(row), secret)


async def lookup_key(db: Db, secret: str) -> ApiKey | None:
    """The live key whose hash matches, or None (unknown or revoked). A string that cannot be
    a key costs no query."""
    if not _KEY_RE.fullmatch(secret):
        return None
    digest = hash_key(secret)
    row = await db.fetchrow(
        f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
        return None
    return _row(row)


async def list_keys(db: Db, tenant: str | None = None) -> list[ApiKey]:
    if tenant is None:
        rows = await db.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at")
    else:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at", tenant
        )
    return [_row(r) for r in rows]


async def revoke_key(db: Db, key_id: str) -> bool:
    """Revoke; False if no live key has that id."""
    result = await db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(result.endswith(" 1"))
