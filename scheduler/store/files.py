"""Files: metadata in `files`, content in ~1 MiB chunks in `file_chunks`.

Content is written while it arrives (`FileWriter`) and read back one chunk at a time
(`iter_chunks`, `iter_lines`), so no file is ever held whole in memory. A file is created
`uploading` (invisible to its tenant) and becomes `processed` once its last chunk is stored;
an upload that dies half-way leaves an `uploading` row that `delete_stale_uploads` removes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from scheduler.store.pool import Db

CHUNK_BYTES = 1024 * 1024
#: OpenAI's limits for a batch input file.
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_FILE_LINES = 50_000
#: The longest line a batch file may have: a request line is its body (the bridge takes
#: bodies of up to 1 MiB) plus a small envelope. Checked while the upload streams, and again
#: while a file is read, so no line is ever held larger than this.
MAX_LINE_BYTES = 2 * 1024 * 1024


class FileTooLarge(Exception):
    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"more than {limit_bytes} bytes")
        self.limit_bytes = limit_bytes


class TooManyLines(Exception):
    def __init__(self, limit_lines: int) -> None:
        super().__init__(f"more than {limit_lines} lines")
        self.limit_lines = limit_lines


class LineTooLong(Exception):
    def __init__(self, line: int, limit_bytes: int) -> None:
        super().__init__(f"line {line} is longer than {limit_bytes} bytes")
        self.line = line  # 1-based
        self.limit_bytes = limit_bytes


@dataclass(frozen=True)
class FileRow:
    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    lines: int
    status: str
    created_at: datetime


_COLUMNS = "id, tenant, purpose, filename, bytes, lines, status, created_at"


def _row(r: asyncpg.Record) -> FileRow:
    return FileRow(
        r["id"],
        r["tenant"],
        r["purpose"],
        r["filename"],
        r["bytes"],
        r["lines"],
        r["status"],
        r["created_at"],
    )


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileWriter:
    """Appends content to a new file in `CHUNK_BYTES` chunks; counts bytes and lines (a last
    line without a newline counts). Raises `FileTooLarge` / `TooManyLines` / `LineTooLong`
    past the limits."""

    def __init__(
        self,
        db: Db,
        file_id: str,
        *,
        max_bytes: int | None = None,
        max_lines: int | None = None,
        max_line_bytes: int | None = None,
    ) -> None:
        self.db = db
        self.file_id = file_id
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._max_line_bytes = max_line_bytes
        #: Bytes of the line not yet ended by a newline.
        self._open_line = 0
        self._buffer = bytearray()
        self._seq = 0
        self.bytes = 0
        #: What the file was created for.
        self.purpose = ""
        self._newlines = 0
        self._last = b"\n"

    @classmethod
    async def create(
        cls,
        db: Db,
        tenant: str,
        purpose: str,
        filename: str,
        *,
        max_bytes: int | None = None,
        max_lines: int | None = None,
        max_line_bytes: int | None = None,
    ) -> FileWriter:
        file_id = new_file_id()
        await db.execute(
            "INSERT INTO files (id, tenant, purpose, filename, status) "
            "VALUES ($1, $2, $3, $4, 'uploading')",
            file_id,
            tenant,
            purpose,
            filename,
        )
        writer = cls(
            db, file_id, max_bytes=max_bytes, max_lines=max_lines, max_line_bytes=max_line_bytes
        )
        writer.purpose = purpose
        return writer

    @property
    def lines(self) -> int:
        return self._newlines + (0 if self._last == b"\n" else 1)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.bytes += len(data)
        if self._max_bytes is not None and self.bytes > self._max_bytes:
            raise FileTooLarge(self._max_bytes)
        view = bytes(data)
        if self._max_line_bytes is not None:
            self._check_line_lengths(view, self._max_line_bytes)
        self._newlines += view.count(b"\n")
        self._last = view[-1:]
        if self._max_lines is not None and self.lines > self._max_lines:
            raise TooManyLines(self._max_lines)
        self._buffer += view
        while len(self._buffer) >= CHUNK_BYTES:
            await self._flush(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]

    def _check_line_lengths(self, view: bytes, limit: int) -> None:
        """Raise LineTooLong if a line reaches past `limit` with this piece. Linear in the
        piece, and only scanned line by line when the piece could hold a long line."""
        last = view.rfind(b"\n")
        if last < 0:
            self._open_line += len(view)
            if self._open_line > limit:
                raise LineTooLong(self._newlines + 1, limit)
            return
        if self._open_line + last > limit:  # some line ending in this piece may be too long
            start, number = 0, self._newlines + 1
            while (end := view.find(b"\n", start)) >= 0:
                length = end - start + (self._open_line if start == 0 else 0)
                if length > limit:
                    raise LineTooLong(number, limit)
                start, number = end + 1, number + 1
        self._open_line = len(view) - last - 1
        if self._open_line > limit:
            raise LineTooLong(self._newlines + view.count(b"\n") + 1, limit)

    async def _flush(self, chunk: bytes) -> None:
        await self.db.execute(
            "INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)",
            self.file_id,
            self._seq,
            chunk,
        )
        self._seq += 1

    async def close(self, db: Db | None = None) -> None:
        """Store what is buffered and mark the file processed (visible); on `db` when given
        (a transaction that also records what the file is for)."""
        if self._buffer:
            await self._flush(bytes(self._buffer))
            self._buffer.clear()
        await (db or self.db).execute(
            "UPDATE files SET bytes = $2, lines = $3, status = 'processed' WHERE id = $1",
            self.file_id,
            self.bytes,
            self.lines,
        )

    async def abort(self) -> None:
        await self.db.execute("DELETE FROM files WHERE id = $1", self.file_id)


async def set_purpose(db: Db, file_id: str, purpose: str) -> None:
    await db.execute("UPDATE files SET purpose = $2 WHERE id = $1", file_id, purpose)


async def get_file(db: Db, tenant: str, file_id: str) -> FileRow | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM files WHERE id = $1 AND tenant = $2 AND status = 'processed'",
        file_id,
        tenant,
    )
    return None if row is None else _row(row)


async def list_files(
    db: Db,
    tenant: str,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    ascending: bool = False,
) -> list[FileRow]:
    """Newest first (or oldest first), starting after the file `after`; `limit + 1` rows are
    asked for so the caller can tell `has_more`."""
    order = "ASC" if ascending else "DESC"
    cmp = ">" if ascending else "<"
    cursor = ""
    args: list[object] = [tenant, purpose, limit + 1]
    if after is not None:
        cursor = (
            f"AND (created_at, id) {cmp} "
            "(SELECT created_at, id FROM files WHERE id = $4 AND tenant = $1)"
        )
        args.append(after)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM files WHERE tenant = $1 AND status = 'processed' "
        f"AND ($2::text IS NULL OR purpose = $2) {cursor} "
        f"ORDER BY created_at {order}, id {order} LIMIT $3",
        *args,
    )
    return [_row(r) for r in rows]


async def delete_file(db: Db, tenant: str, file_id: str) -> bool:
    result = await db.execute(
        "DELETE FROM files WHERE id = $1 AND tenant = $2 AND status = 'processed'",
        file_id,
        tenant,
    )
    return bool(result.endswith(" 1"))


async def delete_stale_uploads(db: Db, older_than_s: float) -> int:
    result = await db.execute(
        "DELETE FROM files WHERE status = 'uploading' "
        "AND created_at < now() - make_interval(secs => $1)",
        older_than_s,
    )
    return int(result.split()[-1])


async def iter_chunks(db: Db, file_id: str) -> AsyncIterator[bytes]:
    """The file's content, one chunk (one query) at a time."""
    seq = 0
    while True:
        data = await db.fetchval(
            "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2", file_id, seq
        )
        if data is None:
            return
        yield bytes(data)
        seq += 1


async def iter_lines(
    db: Db, file_id: str, max_line_bytes: int | None = None
) -> AsyncIterator[tuple[int, bytes | None]]:
    """(0-based line number, line without its newline) for every line, blank ones included;
    a line longer than `max_line_bytes` comes as (number, None), without ever being held
    whole. Linear in the file's size, however long its lines (a line spanning chunks is kept
    as a list of pieces, joined once)."""
    limit = max_line_bytes if max_line_bytes is not None else float("inf")
    pending: list[bytes] = []  # pieces of the line not yet ended
    pending_bytes = 0
    overlong = False
    number = 0
    async for chunk in iter_chunks(db, file_id):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not pending_bytes and not overlong:  # the common case: a line within a chunk
                line: bytes | None = chunk[start:end] if end - start <= limit else None
            else:
                pending_bytes += end - start
                overlong = overlong or pending_bytes > limit
                line = None if overlong else b"".join([*pending, chunk[start:end]])
                pending, pending_bytes, overlong = [], 0, False
            yield number, line
            number += 1
            start = end + 1
        if start < len(chunk):
            pending_bytes += len(chunk) - start
            overlong = overlong or pending_bytes > limit
            if overlong:
                pending.clear()
            else:
                pending.append(chunk[start:])
    if pending_bytes:
        yield number, None if overlong else b"".join(pending)
