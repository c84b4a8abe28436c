"""Versioned SQL migrations: `migrations/NNNN_name.sql`, applied in order, once each.

Each file runs in its own transaction together with its row in `schema_migrations`, so a
failed file leaves nothing half-applied. A session-level advisory lock serialises concurrent
starters (several bridge replicas, `jetserve db migrate`): the second waits, then finds
nothing left to do. Files are never edited once released; a change is a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

#: Arbitrary, fixed: the advisory lock key every jetserve migrator takes.
_LOCK_KEY = 0x6A657473  # "jets"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files in version order. Raises ValueError on a bad or repeated number."""
    if directory is None:
        root = resources.files("scheduler.store") / "migrations"
        files = [(f.name, f.read_text()) for f in root.iterdir() if f.name.endswith(".sql")]
    else:
        files = [(f.name, f.read_text()) for f in directory.glob("*.sql")]
    found: dict[int, Migration] = {}
    for filename, sql in files:
        match = _FILE_RE.match(filename)
        if match is None:
            raise ValueError(f"migration file {filename!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:04d}")
        found[version] = Migration(version, match.group(2), sql)
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations not yet applied; return their versions."""
    todo = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for m in todo:
            if m.version in done:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
            applied.append(m.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def migrate_dsn(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
