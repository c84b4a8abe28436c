"""The local servers are closed to other users of the machine: PostgreSQL asks for a generated
password (scram-sha-256) kept in a file only its owner reads, its data directory is never
reached through a predictable path or a symlink, and nats-server asks for a token that is on
no command line."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from jetserve.servers import NatsServer, PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A directory the server user cannot enter when we are root (like a checkout in /root)."""
    tmp = Path(tempfile.mkdtemp(prefix="jetserve-lock-", dir="/var/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def connect_without_token(host: str, port: int) -> str:
    """What nats-server answers a client that sends no token (its first line after INFO)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        return reader.readline().decode().strip()


def _private_file(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


async def test_postgres_wants_the_generated_password(private_tmp: Path) -> None:
    server = PostgresServer(private_tmp / "data", durable=False).start()
    try:
        assert server.password
        assert _private_file(server.password_file)
        assert server.password_file.read_text().strip() == server.password
        conn = await asyncpg.connect(server.dsn)
        try:
            method = await conn.fetchval("SHOW password_encryption")
            assert method == "scram-sha-256"
        finally:
            await conn.close()
        without = server.dsn.replace(f":{server.password}@", "@")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(without)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(server.dsn.replace(server.password, "wrong"))
        hba = (server.data_dir / "pg_hba.conf").read_text()
        rules = [line for line in hba.splitlines() if line.strip() and line.lstrip()[0] != "#"]
        assert rules
        assert all(line.split()[-1] == "scram-sha-256" for line in rules)
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the data directory moves only when run as root")
def test_the_moved_data_directory_is_unpredictable_and_never_a_symlink(private_tmp: Path) -> None:
    """Before, root's data directory went to /var/tmp/jetserve-postgres/<hash of the path>,
    created and chowned following symlinks: any local user could plant that path. Now it is
    made by mkdtemp, remembered in a file of ours, and not taken again unless it is still a
    private directory of the server user."""
    server = PostgresServer(private_tmp / "data", durable=False)
    first = server.data_dir
    assert first.parent == Path("/var/tmp")
    assert first.name.startswith("jetserve-postgres-")
    st = os.lstat(first)
    assert stat.S_ISDIR(st.st_mode)
    assert not st.st_mode & 0o077
    assert st.st_uid != 0  # the server user's
    assert PostgresServer(private_tmp / "data").data_dir == first  # remembered
    # A remembered path that has become a symlink (to a directory of root's) is not used.
    target = Path(tempfile.mkdtemp(prefix="jetserve-lock-target-", dir="/var/tmp"))
    link = Path(f"{target}-link")
    try:
        os.symlink(target, link)
        (private_tmp / "data.location").write_text(f"{link}\n")
        moved = PostgresServer(private_tmp / "data").data_dir
        assert moved != link
        assert moved.parent == Path("/var/tmp")
        assert os.lstat(target).st_uid == 0  # not chowned through the link
        shutil.rmtree(moved, ignore_errors=True)
    finally:
        link.unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(first, ignore_errors=True)


async def test_nats_wants_the_token_and_shows_it_nowhere(private_tmp: Path) -> None:
    server = NatsServer(private_tmp / "nats", token="tok-" + os.urandom(8).hex()).start()
    try:
        assert server.token is not None
        assert server.token in server.url
        nc = await nats.connect(server.url)
        await nc.close()
        assert await asyncio.to_thread(connect_without_token, server.host, server.port) == (
            "-ERR 'Authorization Violation'"
        )
        assert server.proc is not None
        cmdline = await asyncio.to_thread(Path(f"/proc/{server.proc.pid}/cmdline").read_bytes)
        assert server.token.encode() not in cmdline
        assert _private_file(private_tmp / "nats.conf")
    finally:
        server.stop()


def test_private_files_are_private_from_the_start(private_tmp: Path) -> None:
    """How stack.json, the password file and the NATS config are written (0600)."""
    from jetserve.servers import write_private

    path = private_tmp / "f.json"
    write_private(path, "{}\n")
    assert _private_file(path)
    write_private(path, "{}\n")  # replaced, still private
    assert _private_file(path)
