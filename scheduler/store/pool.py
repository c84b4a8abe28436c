"""The asyncpg connection pool of a process."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg

#: What the table modules' functions run on: the pool, or one connection (a transaction).
Db: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset on release (`RESET ALL; UNLISTEN *; ...`, one round trip per
    query): nothing here leaves session state behind (transactions are always closed by their
    context manager; LISTEN and advisory locks live on dedicated connections)."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 4, reset: bool = True
) -> asyncpg.Pool:
    """A pool whose connections time out commands after 10 s (a stuck query must not hang a
    request forever). `reset=False`: no session reset on release (hot paths)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=10.0,
        reset=None if reset else _keep_session,
    )
    assert pool is not None
    return pool


#: `NOTIFY` channel the active scheduler listens on: the API created work to look at.
NOTIFY_CHANNEL = "jetserve_scheduler"
