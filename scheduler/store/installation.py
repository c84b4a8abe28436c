"""This installation's identity (migration 0006): a random id made once per database."""

from __future__ import annotations

from scheduler.store.pool import Db


async def installation_id(db: Db) -> str:
    value = await db.fetchval("SELECT id FROM installation")
    assert isinstance(value, str), "migration 0006 inserts the row"
    return value
