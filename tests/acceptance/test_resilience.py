"""Daemons survive the database going away; commands that read never write.

Process-level: real ``perpbot`` daemons on their own embedded server in a
temporary ``PERPBOT_HOME`` (or on the test database), whose server is stopped
and started again or whose connections are terminated while jobs flow.  And
in-process: a worker's batch whose finish or claim loses its connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import URL, Engine, text
from sqlalchemy import exc as sa_exc

from perpbot_db.runtime import embedded
from perpbot_db.runtime.db import engine_for
from perpbot_db.services import tick
from perpbot_db.settings import Settings, load_settings
from perpbot_db.store import transitions
from perpbot_db.store import workers as worker_store
from tests.builders import HANG_S, PERPBOT, MarketFeed, job, put_market, submit, wait_for
from workers.recovery import Recovery
from workers.venues.adapters import build_adapters
from workers.worker import Worker

OUTAGE_LINE = re.compile(r"^\S+ \S+ (\d+) WARNING perpbot\.db database unreachable", re.M)
DEADLINE_S = HANG_S


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM hedge_jobs_all GROUP BY 1"))
        return {status: n for status, n in rows}


def completed(engine: Engine) -> int:
    try:
        return by_status(engine).get("completed", 0)
    except sa_exc.OperationalError:
        return -1  # the database is away


def live_workers(engine: Engine) -> int:
    try:
        return int(scalar(engine, "SELECT count(*) FROM workers WHERE stopped_at IS NULL"))
    except sa_exc.OperationalError:
        return -1  # the database is away, or not created yet


def settled(engine: Engine) -> bool:
    """No job left to do (pending, admitted, running)."""
    try:
        counts = by_status(engine)
    except sa_exc.OperationalError:
        return False
    return not any(counts.get(s) for s in ("pending", "admitted", "running"))


def base_env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env.update(PERPBOT_CONFIG=str(config), **extra)
    return env


class Procs:
    """Long-running ``perpbot`` processes logging to files; killed if a test fails."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [PERPBOT, *args], env=env, stdout=log, stderr=log, text=True, cwd=cwd
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def stop(self, proc: subprocess.Popen[str]) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(DEADLINE_S)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    yield running
    running.kill_all()


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside pytest's basetemp (another session resets it to 0700, locking the
    # unprivileged server out); whatever runs on it is stopped at the end.
    base = Path(tempfile.mkdtemp(prefix="perpbot-test-home-"))
    path = base / "home"
    yield path
    with contextlib.suppress(embedded.EmbeddedError):
        embedded.stop_shared(embedded.Cluster(path), force=True)
    shutil.rmtree(base, ignore_errors=True)


def perpbot(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PERPBOT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def outage_lines_per_process(log: str) -> Counter[str]:
    return Counter(OUTAGE_LINE.findall(log))


def assert_quiet_survival(log: str, *, outages: int) -> None:
    """No traceback, at most one outage line per process per outage, no worker restart."""
    assert "Traceback" not in log, log[-4000:]
    per_process = outage_lines_per_process(log)
    assert per_process, "no process noticed the outage"
    assert max(per_process.values()) <= outages, (per_process, log[-6000:])
    assert "exited with" not in log, log[-4000:]


# -- the shared embedded server goes away and comes back --------------------------------


@pytest.mark.slow
def test_daemon_on_the_shared_server_survives_its_restart_on_the_same_port(
    home: Path, config_file: Path, tmp_path: Path, procs: Procs
) -> None:
    env = base_env(
        config_file,
        PERPBOT_HOME=str(home),
        PERPBOT_TICK_INTERVAL_S="0.2",
        PERPBOT_PAPER__LATENCY_MS="5",
    )
    started = perpbot("db", "start", env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert perpbot("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    cluster = embedded.Cluster(home)
    port = cluster.running_port()
    assert port is not None
    url = cluster.url(port).render_as_string(hide_password=False)
    engine = engine_for(url)
    settings = load_settings(database_url=url)
    try:
        with MarketFeed(engine):
            daemon = procs.start(
                "run", "run", "--workers", "2", "--no-strategies", env=env, cwd=tmp_path
            )
            submit(engine, settings, [job(i) for i in range(5)])
            assert wait_for(lambda: completed(engine) == 5), by_status(engine)

            submit(engine, settings, [job(i) for i in range(5, 10)])  # jobs in flight ...
            assert perpbot("db", "stop", env=env, cwd=tmp_path).returncode == 0  # ... server gone
            assert cluster.running_port() is None
            assert wait_for(lambda: len(outage_lines_per_process(procs.log("run"))) == 3), (
                procs.log("run")[-3000:]  # the scheduler and both workers noticed
            )
            # A worker started while the database is away waits for it instead of exiting.
            late = procs.start(
                "worker", "worker", env={**env, "PERPBOT_DATABASE_URL": url}, cwd=tmp_path
            )
            assert wait_for(lambda: "database unreachable" in procs.log("worker"))
            assert late.poll() is None

            again = perpbot("db", "start", env=env, cwd=tmp_path)
            assert again.returncode == 0, again.stderr
            assert f"127.0.0.1:{port}" in again.stdout  # the same URL: clients reconnect
            assert cluster.running_port() == port

            submit(engine, settings, [job(i) for i in range(10, 15)])
            assert wait_for(lambda: settled(engine) and completed(engine) >= 10), by_status(engine)
            assert wait_for(lambda: live_workers(engine) == 3), "the late worker never registered"
            assert daemon.poll() is None and late.poll() is None
            assert procs.stop(daemon) == 0
            assert procs.stop(late) == 0
        log = procs.log("run")
        assert_quiet_survival(log, outages=1)
        assert "database reachable again after" in log
        assert "0 restart(s)" in log
        assert_quiet_survival(procs.log("worker"), outages=1)
        with engine.connect() as conn:
            late_jobs = conn.execute(
                text("SELECT status FROM hedge_jobs_all WHERE idempotency_key = ANY(:keys)"),
                {"keys": [f"t-{i}" for i in range(10, 15)]},
            ).scalars()
            assert set(late_jobs) == {"completed"}  # submitted after the restart: all done
    finally:
        engine.dispose()


@pytest.mark.slow
def test_daemons_own_server_that_died_comes_back_with_db_start_and_the_daemon_reconnects(
    home: Path, config_file: Path, tmp_path: Path, procs: Procs
) -> None:
    env = base_env(config_file, PERPBOT_HOME=str(home), PERPBOT_PAPER__LATENCY_MS="5")
    assert perpbot("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    daemon = procs.start("run", "run", "--workers", "1", "--no-strategies", env=env, cwd=tmp_path)
    cluster = embedded.Cluster(home)
    assert wait_for(lambda: cluster.running_port() is not None), procs.log("run")
    port = cluster.running_port()
    assert port is not None
    url = cluster.url(port)
    engine = engine_for(url)
    settings = load_settings(database_url=url.render_as_string(hide_password=False))
    try:
        assert wait_for(lambda: live_workers(engine) == 1), procs.log("run")
        postmaster = cluster.pid()
        assert postmaster is not None
        os.kill(postmaster, signal.SIGKILL)  # the daemon's own server dies (OOM killer)
        assert wait_for(lambda: cluster.running_port() is None)
        started = perpbot("db", "start", env=env, cwd=tmp_path)
        assert started.returncode == 0, started.stdout + started.stderr
        assert cluster.running_port() == port
        with MarketFeed(engine):
            submit(engine, settings, [job(1)])
            assert wait_for(lambda: completed(engine) == 1), by_status(engine)
        assert procs.stop(daemon) == 0
    finally:
        engine.dispose()
    assert_quiet_survival(procs.log("run"), outages=1)


# -- connections terminated under a running daemon --------------------------------------


@pytest.mark.slow
def test_daemon_rides_out_its_connections_being_terminated(
    engine: Engine,
    settings: Settings,
    cli_env: dict[str, str],
    tmp_path: Path,
    procs: Procs,
) -> None:
    env = {**cli_env, "PERPBOT_TICK_INTERVAL_S": "0.2", "PERPBOT_PAPER__LATENCY_MS": "5"}
    with MarketFeed(engine):
        daemon = procs.start(
            "run", "run", "--workers", "2", "--no-strategies", env=env, cwd=tmp_path
        )
        submit(engine, settings, [job(i) for i in range(5)])
        assert wait_for(lambda: completed(engine) == 5), by_status(engine)
        with engine.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 3  # at least the scheduler's and the workers' LISTEN connections
        submit(engine, settings, [job(i) for i in range(5, 10)])
        assert wait_for(lambda: completed(engine) == 10), by_status(engine)
        assert daemon.poll() is None
        assert procs.stop(daemon) == 0
    log = procs.log("run")
    assert_quiet_survival(log, outages=1)
    assert "0 restart(s)" in log


@pytest.mark.slow
def test_workers_of_a_daemon_killed_outright_stop_cleanly_instead_of_living_on(
    engine: Engine, cli_env: dict[str, str], tmp_path: Path, procs: Procs
) -> None:
    daemon = procs.start(
        "run", "run", "--workers", "2", "--no-strategies", env=cli_env, cwd=tmp_path
    )
    assert wait_for(lambda: live_workers(engine) == 2), procs.log("run")
    with engine.connect() as conn:
        pids = list(conn.execute(text("SELECT pid FROM workers")).scalars())
    daemon.kill()
    daemon.wait()

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        return state == "Z"

    assert wait_for(lambda: all(gone(pid) for pid in pids)), "workers outlived their daemon"
    assert live_workers(engine) == 0  # they stopped cleanly (SIGTERM), saying so


# -- two daemons without a shared server ---------------------------------------------------


@pytest.mark.slow
def test_second_daemon_without_a_shared_server_refuses_and_the_first_keeps_working(
    home: Path, config_file: Path, tmp_path: Path, procs: Procs
) -> None:
    env = base_env(config_file, PERPBOT_HOME=str(home), PERPBOT_PAPER__LATENCY_MS="5")
    assert perpbot("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    first = procs.start("first", "run", "--workers", "1", "--no-strategies", env=env, cwd=tmp_path)
    cluster = embedded.Cluster(home)
    assert wait_for(lambda: cluster.running_port() is not None), procs.log("first")
    port = cluster.running_port()
    assert port is not None
    url = cluster.url(port)
    engine = engine_for(url)
    settings = load_settings(database_url=url.render_as_string(hide_password=False))
    try:
        assert wait_for(lambda: live_workers(engine) == 1), procs.log("first")
        second = perpbot("run", "--workers", "1", env=env, cwd=tmp_path)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"owned by pid {first.pid}" in second.stderr
        assert "perpbot db start" in second.stderr and "PERPBOT_DATABASE_URL" in second.stderr
        assert "Traceback" not in second.stderr
        with MarketFeed(engine):
            submit(engine, settings, [job(1)])
            assert wait_for(lambda: completed(engine) == 1), by_status(engine)
        assert first.poll() is None
        assert procs.stop(first) == 0
    finally:
        engine.dispose()


# -- commands that read never write ---------------------------------------------------------


def exchanges_and_events(home: Path) -> tuple[dict[str, bool], int]:
    server = embedded.start(embedded.Cluster(home))
    engine = engine_for(server.url)
    try:
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT name, enabled FROM exchanges")).all())  # type: ignore[arg-type]
            events = conn.execute(text("SELECT count(*) FROM control_events")).scalar_one()
        return rows, int(events)
    finally:
        engine.dispose()
        server.stop()


def test_status_without_a_settings_file_leaves_exchanges_and_control_events_untouched(
    home: Path, config_file: Path, tmp_path: Path
) -> None:
    env = base_env(config_file, PERPBOT_HOME=str(home))
    assert perpbot("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    before = exchanges_and_events(home)
    assert before[0] == {"binance": True, "okx": True, "bybit": True}
    elsewhere = tmp_path / "no-settings-here"
    elsewhere.mkdir()
    bare = {k: v for k, v in env.items() if k != "PERPBOT_CONFIG"}
    done = perpbot("status", "--json", env=bare, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert exchanges_and_events(home) == before


def test_read_command_on_a_fresh_embedded_database_says_to_upgrade_and_writes_nothing(
    home: Path, config_file: Path, tmp_path: Path
) -> None:
    env = base_env(config_file, PERPBOT_HOME=str(home))
    done = perpbot("jobs", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "run `perpbot db upgrade`" in done.stderr
    server = embedded.start(embedded.Cluster(home))
    engine = engine_for(server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('exchanges')")).scalar() is None
    finally:
        engine.dispose()
        server.stop()


@pytest.mark.parametrize("command", ["run", "scheduler", "worker"])
def test_daemon_with_a_settings_file_naming_no_exchange_refuses_with_exit_2(
    command: str, cli_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("tick_interval_s = 0.5\n")
    events = scalar(engine, "SELECT count(*) FROM control_events")
    done = perpbot(command, env={**cli_env, "PERPBOT_CONFIG": str(empty)}, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"perpbot: {command}: settings file {empty} names no exchange ([exchanges.NAME]); "
        "nothing to trade"
    ]
    assert scalar(engine, "SELECT count(*) FROM exchanges WHERE enabled") == 3
    assert scalar(engine, "SELECT count(*) FROM control_events") == events


def test_daemon_without_any_settings_file_says_none_was_found(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in cli_env.items() if k != "PERPBOT_CONFIG"}
    done = perpbot("run", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "no settings file found (PERPBOT_CONFIG is unset and there is no perpbot.toml in" in (
        done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1


def test_daemon_pointed_at_a_database_that_does_not_exist_fails_at_once_instead_of_waiting(
    db_url: URL, cli_env: dict[str, str], tmp_path: Path
) -> None:
    url = db_url.set(database="no_such_db").render_as_string(hide_password=False)
    done = perpbot("worker", env={**cli_env, "PERPBOT_DATABASE_URL": url}, cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot reach the database: connection failed" in done.stderr
    assert 'database "no_such_db" does not exist' in done.stderr
    assert "database unreachable" not in done.stderr and "Traceback" not in done.stderr


# -- a worker's batch meets a lost connection (in-process) ----------------------------------


def lost_connection() -> sa_exc.OperationalError:
    orig = psycopg.OperationalError("consuming input failed: server closed the connection")
    return sa_exc.OperationalError("COMMIT", {}, orig)


def test_finish_lost_to_an_outage_keeps_its_results_and_books_them_once_the_database_is_back(
    engine: Engine, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_market(engine)
    ids = submit(engine, fast, [job(i) for i in range(3)])
    assert tick.run_tick(engine, tick.TickConfig(max_concurrent_jobs=100)).admitted
    real = transitions.finish
    failures = [lost_connection(), lost_connection()]
    sent_before_finish: list[int] = []

    def flaky(conn: Any, **kwargs: Any) -> list[int]:
        if failures:
            sent_before_finish.append(
                scalar(engine, "SELECT count(*) FROM paper_orders")  # orders went out once
            )
            raise failures.pop()
        return real(conn, **kwargs)

    monkeypatch.setattr(transitions, "finish", flaky)
    worker = Worker(engine, fast, build_adapters(engine, fast))
    tally = worker.run(once=True)
    assert not failures
    assert tally.claimed == 3 and tally.completed == 3 and tally.lost == 0
    assert scalar(engine, "SELECT count(*) FROM paper_orders") == sent_before_finish[0] == 6
    with engine.connect() as conn:
        statuses = set(
            conn.execute(
                text("SELECT status FROM hedge_jobs WHERE id = ANY(:ids)"), {"ids": ids}
            ).scalars()
        )
        booked = conn.execute(
            text("SELECT jobs_completed FROM daily_counters WHERE scope = 'global'")
        ).scalar_one()
    assert statuses == {"completed"} and booked == 3
    assert worker.outage.count == 1 and not worker.outage.down


def test_batch_cut_off_by_a_lost_connection_is_handed_to_recovery_not_stranded(
    engine: Engine, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_market(engine)
    [job_id] = submit(engine, fast, [job(1)])
    assert tick.run_tick(engine, tick.TickConfig(max_concurrent_jobs=100)).admitted
    worker = Worker(engine, fast, build_adapters(engine, fast))

    def cut_off(jobs: Any, *, send: bool) -> Any:
        raise lost_connection()  # claimed, then the connection went mid-batch

    monkeypatch.setattr(worker.executor, "run", cut_off)
    worker.run(once=True)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT status, worker_id, lease_expires_at <= now() AS expired "
                "FROM hedge_jobs WHERE id = :id"
            ),
            {"id": job_id},
        ).one()
    # Handed back, its lease left to run out: it outlasts every order the batch's fence
    # may have let out, so recovery asks only once none of them can still arrive.
    assert row.status == "running" and not row.expired
    assert row.worker_id == f"{worker.identity}:handed-back"
    with engine.begin() as conn:  # no heartbeat of the worker renews it any more
        assert worker_store.heartbeat(conn, worker_id=worker.identity, lease_s=30) == 0
        conn.execute(  # ... so its lease runs out
            text("UPDATE hedge_jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
            {"id": job_id},
        )
    report = Recovery(engine, fast, build_adapters(engine, fast)).run_once()
    assert report.recovered == [job_id]
