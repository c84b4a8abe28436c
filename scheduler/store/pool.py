"""The asyncpg connection pool of a process."""

from __future__ import annotations

import asyncpg


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """A pool whose connections time out commands after 10 s (a stuck query must not hang a
    request forever)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=10.0
    )
    assert pool is not None
    return pool


#: `NOTIFY` channel the active scheduler listens on: the API created work to look at.
NOTIFY_CHANNEL = "jetserve_scheduler"
