"""Real `perpbot worker` and `perpbot run` processes: NOTIFY wake-up, SIGTERM, restarts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from sqlalchemy import Engine, text

from perpbot_db.settings import Settings
from tests.conftest import Cli, Spawn
from tests.test_scheduler import job, put_market, submit
from tests.test_scheduler_process import wait_for


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM hedge_jobs GROUP BY 1")).all()
    return {status: n for status, n in rows}


def live_worker_pids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(text("SELECT pid FROM workers WHERE stopped_at IS NULL")).scalars()
        )


def test_worker_once_drains_and_prints_its_tally(
    cli: Cli, engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(3)])
    assert cli("scheduler", "--once").returncode == 0
    done = cli("worker", "--once", "--json", env={"PERPBOT_PAPER__LATENCY_MS": "0"})
    assert done.returncode == 0, done.stderr
    tally = json.loads(done.stdout)
    assert tally["claimed"] == 3 and tally["completed"] == 3
    assert by_status(engine) == {"completed": 3}
    assert count(engine, "SELECT count(*) FROM workers WHERE stopped_at IS NOT NULL") == 1


def test_worker_is_woken_by_admission_and_stops_cleanly_on_sigterm(
    spawn: Spawn, cli: Cli, engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    worker = spawn("worker", PERPBOT_POLL_INTERVAL_S="60", PERPBOT_PAPER__LATENCY_MS="300")
    assert wait_for(lambda: len(live_worker_pids(engine)) == 1)
    submit(engine, settings, [job(1)])
    started = time.monotonic()
    assert cli("scheduler", "--once").returncode == 0
    assert wait_for(lambda: by_status(engine).get("running") == 1, timeout=10)
    assert time.monotonic() - started < 10  # woken by NOTIFY, not the 60 s poll
    worker.send_signal(signal.SIGTERM)  # mid-batch: the legs are on their way
    assert worker.wait(20) == 0
    assert by_status(engine) == {"completed": 1}  # finished what it held, then exited
    assert live_worker_pids(engine) == []


def test_run_processes_a_file_end_to_end_and_restarts_a_killed_worker(
    spawn: Spawn, cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    put_market(engine)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(job(i) for i in range(30)))
    daemon = spawn(
        "run",
        "--workers",
        "2",
        PERPBOT_PAPER__LATENCY_MS="5",
        PERPBOT_TICK_INTERVAL_S="0.2",
        PERPBOT_MAX_CONCURRENT_JOBS="1000",
    )
    assert wait_for(lambda: len(live_worker_pids(engine)) == 2, timeout=30)
    assert cli("submit", str(jobs)).returncode == 0
    assert wait_for(lambda: by_status(engine) == {"completed": 30}, timeout=60), by_status(engine)

    victim = live_worker_pids(engine)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(
        lambda: len(live_worker_pids(engine)) == 3 and victim in live_worker_pids(engine),
        timeout=30,
    ), "no replacement worker registered"  # the dead one never said it stopped
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert "1 restart(s)" in (daemon.stderr.read() if daemon.stderr else "")
    assert live_worker_pids(engine) == [victim]
