"""The Postgres store: migrations (ordered, once, safe when started concurrently) and keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from jetserve.servers import PostgresServer
from scheduler.store.keys import create_key, hash_key, list_keys, lookup_key, revoke_key
from scheduler.store.migrate import load_migrations, migrate

pytestmark = pytest.mark.integration


async def test_migrations_apply_once_even_when_started_concurrently(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int); INSERT INTO a VALUES (1);")
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE b (y int);")
    migrations = load_migrations(tmp_path)
    conns = [await asyncpg.connect(own_postgres.dsn) for _ in range(4)]
    try:
        applied = await asyncio.gather(*[migrate(c, migrations) for c in conns])
        assert sorted(applied) == [[], [], [], [1, 2]]
        assert await conns[0].fetchval("SELECT count(*) FROM a") == 1
        assert await migrate(conns[0], migrations) == []
        rows = await conns[0].fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in rows] == [(1, "a"), (2, "b")]
    finally:
        for c in conns:
            await c.close()


async def test_a_failing_migration_leaves_nothing_behind(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (x int); SELECT no_such_column;")
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, load_migrations(tmp_path))
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
    finally:
        await conn.close()


def test_migration_files_are_named_and_numbered(tmp_path: Path) -> None:
    assert [m.version for m in load_migrations()][:1] == [1]
    (tmp_path / "1_bad.sql").write_text("")
    with pytest.raises(ValueError, match="NNNN_name"):
        load_migrations(tmp_path)


async def test_keys_create_lookup_revoke(own_postgres: PostgresServer) -> None:
    conn = await asyncpg.connect(own_postgres.dsn)
    try:
        await migrate(conn)
        new = await create_key(conn, "acme", "ci")
        assert new.secret.startswith("js-")
        assert len(new.secret) > 40
        stored = await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", new.info.id)
        assert new.secret not in [str(v) for v in stored.values()]  # only the hash is kept
        assert bytes(stored["key_hash"]) == hash_key(new.secret)
        found = await lookup_key(conn, new.secret)
        assert found is not None
        assert (found.id, found.tenant) == (new.info.id, "acme")
        assert await lookup_key(conn, new.secret + "x") is None
        assert [k.id for k in await list_keys(conn, "acme")] == [new.info.id]
        assert await revoke_key(conn, new.info.id)
        assert not await revoke_key(conn, new.info.id)
        assert await lookup_key(conn, new.secret) is None
        with pytest.raises(ValueError, match="tenant"):
            await create_key(conn, "bad tenant")
    finally:
        await conn.close()
