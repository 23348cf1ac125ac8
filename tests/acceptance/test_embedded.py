"""The embedded PostgreSQL launcher: loopback only, private, and never orphaned."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from perpbot_db.runtime import embedded
from tests.builders import HANG_S, PERPBOT


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside pytest's basetemp: another pytest session resets that to mode 0700,
    # which would lock the (unprivileged) server out of its data directory.
    base = Path(tempfile.mkdtemp(prefix="perpbot-test-home-"))
    path = base / "perpbot-home"
    yield path
    # Whatever a test left running on this home is stopped.
    embedded.stop_shared(embedded.Cluster(path), force=True)
    shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float = HANG_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_server_listens_on_loopback_only_with_password_and_no_unix_socket(home: Path) -> None:
    cluster = embedded.Cluster(home)
    server = embedded.start(cluster)
    try:
        url = server.url
        with psycopg.connect(
            host="127.0.0.1", port=server.port, user=url.username, password=url.password,
            dbname=url.database,
        ) as conn:  # fmt: skip
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings "
                    "WHERE name IN ('listen_addresses', 'unix_socket_directories')"
                ).fetchall()
            )
        assert settings == {"listen_addresses": "127.0.0.1", "unix_socket_directories": ""}
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host="127.0.0.1", port=server.port, user=url.username, password="wrong",
                dbname=url.database,
            ).close()  # fmt: skip
    finally:
        server.stop()
    assert stat.S_IMODE(cluster.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(cluster.password_file.stat().st_mode) == 0o600
    if os.geteuid() == 0:
        assert cluster.data_dir.stat().st_uid != 0, "as root the server runs unprivileged"


def test_owned_server_dies_when_its_owner_is_killed(home: Path) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from pathlib import Path
                from perpbot_db.runtime import embedded
                server = embedded.start(embedded.Cluster(Path({str(home)!r})))
                print(server.process.pid, server.port, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pid, port = map(int, owner.stdout.readline().split())
    assert _alive(pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert _wait_dead(pid), "postgres outlived its killed owner"
    assert embedded.Cluster(home).running_port() is None
    assert not embedded._port_open(port)


def _perpbot(*args: str, home: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env.update(PERPBOT_HOME=str(home), PERPBOT_CONFIG=str(config))
    return subprocess.run(
        [PERPBOT, *args], env=env, capture_output=True, text=True, timeout=HANG_S, check=False
    )


def test_command_without_shared_server_starts_and_stops_its_own(
    home: Path, config_file: Path
) -> None:
    fresh = _perpbot("status", "--json", home=home, config=config_file)
    assert fresh.returncode == 2  # a read command does not migrate, even embedded
    assert "run `perpbot db upgrade`" in fresh.stderr
    assert _perpbot("db", "upgrade", home=home, config=config_file).returncode == 0
    done = _perpbot("status", "--json", home=home, config=config_file)
    assert done.returncode == 0, done.stderr
    assert '"pending": 0' in done.stdout
    cluster = embedded.Cluster(home)
    assert cluster.initialized()
    assert cluster.running_port() is None, "a command's own server ends with the command"


def test_shared_server_start_status_url_stop(home: Path, config_file: Path) -> None:
    assert _perpbot("db", "status", home=home, config=config_file).returncode == 1
    started = _perpbot("db", "start", home=home, config=config_file)
    assert started.returncode == 0, started.stderr
    assert "run `perpbot db upgrade`" in started.stderr  # it does not migrate by itself
    cluster = embedded.Cluster(home)
    port = cluster.running_port()
    assert port is not None
    status = _perpbot("db", "status", home=home, config=config_file)
    assert status.returncode == 0 and str(port) in status.stdout
    assert "shared (perpbot db start)" in status.stdout
    assert _perpbot("db", "upgrade", home=home, config=config_file).returncode == 0
    url = _perpbot("db", "url", home=home, config=config_file).stdout.strip()
    assert url.startswith("postgresql+psycopg://perpbot:***@127.0.0.1:")
    assert cluster.password() not in url
    # Commands use the shared server and leave it running.
    submitted = _perpbot("status", home=home, config=config_file)
    assert submitted.returncode == 0, submitted.stderr
    assert cluster.running_port() == port
    again = _perpbot("db", "start", home=home, config=config_file)
    assert "already running" in again.stdout
    stopped = _perpbot("db", "stop", home=home, config=config_file)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert cluster.running_port() is None
    assert _perpbot("db", "status", home=home, config=config_file).returncode == 1


def test_shared_server_started_again_after_a_stop_listens_on_the_same_port(
    home: Path, config_file: Path
) -> None:
    assert _perpbot("db", "start", home=home, config=config_file).returncode == 0
    cluster = embedded.Cluster(home)
    port = cluster.running_port()
    assert port is not None and cluster.remembered_port() == port
    assert embedded.PORT_RANGE[0] <= port < embedded.PORT_RANGE[1]  # not an ephemeral port
    pid = cluster.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the server dies (a crash, the OOM killer)
    assert _wait_dead(pid)
    again = _perpbot("db", "start", home=home, config=config_file)
    assert again.returncode == 0, again.stderr
    assert f"started on 127.0.0.1:{port}" in again.stdout
    assert cluster.running_port() == port


def test_shared_start_refuses_when_its_remembered_port_is_taken(
    home: Path, config_file: Path
) -> None:
    assert _perpbot("db", "start", home=home, config=config_file).returncode == 0
    cluster = embedded.Cluster(home)
    port = cluster.running_port()
    assert port is not None
    assert _perpbot("db", "stop", home=home, config=config_file).returncode == 0
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        refused = _perpbot("db", "start", home=home, config=config_file)
        assert refused.returncode == 2
        assert f"port {port}" in refused.stderr and "in use by another program" in refused.stderr
        assert str(cluster.port_file) in refused.stderr
        assert cluster.running_port() is None
        # A short command's own server takes another port this once.
        assert _perpbot("db", "upgrade", home=home, config=config_file).returncode == 0
    assert cluster.remembered_port() == port


def test_server_owned_by_another_process_is_neither_stopped_nor_taken_over(
    home: Path, config_file: Path
) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from pathlib import Path
                from perpbot_db.runtime import embedded
                server = embedded.start(embedded.Cluster(Path({str(home)!r})))
                print(server.port, flush=True)
                time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        port = int(owner.stdout.readline())
        status = _perpbot("db", "status", home=home, config=config_file)
        assert f"owned by pid {owner.pid}" in status.stdout
        stop = _perpbot("db", "stop", home=home, config=config_file)
        assert stop.returncode == 1 and "stop that process instead" in stop.stderr
        start = _perpbot("db", "start", home=home, config=config_file)
        assert start.returncode == 2 and f"owned by pid {owner.pid}" in start.stderr
        assert embedded.Cluster(home).running_port() == port
        # A short command may borrow it.
        assert _perpbot("db", "upgrade", home=home, config=config_file).returncode == 0
    finally:
        owner.kill()
        owner.wait()
