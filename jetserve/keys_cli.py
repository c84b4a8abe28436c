"""`jetserve keys ...` and `jetserve db migrate`: the API-key store from the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from schemas.settings import DATABASE_URL, ConfigError


def _dsn() -> str:
    """JETSERVE_DATABASE_URL, else the local stack's (in `<JETSERVE_DATA_DIR>/stack.json`,
    which carries its password)."""
    dsn = os.environ.get(DATABASE_URL)
    if dsn:
        return dsn
    info = Path(os.environ.get("JETSERVE_DATA_DIR", ".jetserve")) / "stack.json"
    with contextlib.suppress(OSError, ValueError):
        found = json.loads(info.read_text()).get("database_url")
        if found:
            return str(found)
    raise ConfigError(
        f"{DATABASE_URL} is not set, and no database_url in {info} (`jetserve up` writes it)"
    )


def _with_db(work: Callable[[Any], Awaitable[int]]) -> int:
    import asyncpg

    from scheduler.store.migrate import migrate

    async def run() -> int:
        conn = await asyncpg.connect(_dsn())
        try:
            await migrate(conn)
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def cmd_keys_create(args: argparse.Namespace) -> int:
    from scheduler.store.keys import create_key

    async def work(conn: Any) -> int:
        new = await create_key(conn, args.tenant, args.name)
        print(f"created {new.info.id} for tenant {new.info.tenant}; the key (shown only now):")
        print(new.secret)
        return 0

    return _with_db(work)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from scheduler.store.keys import list_keys

    async def work(conn: Any) -> int:
        for k in await list_keys(conn, args.tenant):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{k.id}  {k.tenant}  {k.key_prefix}...  {state}  {k.name or ''}".rstrip())
        return 0

    return _with_db(work)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from scheduler.store.keys import revoke_key

    async def work(conn: Any) -> int:
        if await revoke_key(conn, args.key_id):
            print(f"revoked {args.key_id} (bridges stop accepting it within their key cache TTL)")
            return 0
        print(f"no active key {args.key_id}")
        return 1

    return _with_db(work)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from scheduler.store.migrate import migrate_dsn

    applied = asyncio.run(migrate_dsn(_dsn()))
    print(f"applied {applied}" if applied else "up to date")
    return 0
