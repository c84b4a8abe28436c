"""The file store against a real PostgreSQL: a file's lines are read in pieces, in time and
memory linear in the file, however long a line is."""

from __future__ import annotations

import time
import tracemalloc

import asyncpg
import pytest

from scheduler.store.files import FileWriter, iter_lines

pytestmark = pytest.mark.integration


async def test_a_huge_line_is_read_in_linear_time_and_bounded_memory(
    store_pool: asyncpg.Pool,
) -> None:
    """One 48 MiB line between two short ones. Before, each 1 MiB chunk was appended to the
    line so far by copying it (quadratic: 48 chunks, ~1.2 GB copied) and the line was held
    whole; now the line is reported as too long after the limit, never held past it."""
    writer = await FileWriter.create(store_pool, "t", "batch", "huge.jsonl")
    await writer.write(b'{"a": 1}\n')
    piece = b"z" * (1 << 20)
    for _ in range(48):
        await writer.write(piece)
    await writer.write(b'\n{"a": 2}\n')
    await writer.close()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        got = [(n, line) async for n, line in iter_lines(store_pool, writer.file_id, 1 << 20)]
        elapsed_s = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == [(0, b'{"a": 1}'), (1, None), (2, b'{"a": 2}')]
    assert peak < 8 * (1 << 20), f"peak {peak / 2**20:.1f} MiB"
    assert elapsed_s < 10
