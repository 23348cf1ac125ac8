"""Real `perpbot worker` and `perpbot run` processes: NOTIFY wake-up, SIGTERM, restarts.

Market data comes from a live feed (``market_feed``) and every wait is for a
condition, so a loaded machine makes these tests slower, never red.  Stopping
in the middle of a batch is proven in-process (tests/test_worker.py), where
the batch can be held at the venue deterministically.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from sqlalchemy import Engine, text

from perpbot_db.services import tick
from perpbot_db.settings import Settings
from tests.builders import (
    HANG_S,
    Cli,
    MarketFeed,
    Spawn,
    by_status,
    config,
    job,
    listening,
    submit,
    wait_for,
)


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def live_worker_pids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(text("SELECT pid FROM workers WHERE stopped_at IS NULL")).scalars()
        )


def test_worker_once_drains_and_prints_its_tally(
    cli: Cli, engine: Engine, settings: Settings, market_feed: MarketFeed
) -> None:
    submit(engine, settings, [job(i) for i in range(3)])
    assert cli("scheduler", "--once").returncode == 0
    done = cli("worker", "--once", "--json", env={"PERPBOT_PAPER__LATENCY_MS": "0"})
    assert done.returncode == 0, done.stderr
    tally = json.loads(done.stdout)
    assert tally["claimed"] == 3 and tally["completed"] == 3
    assert by_status(engine) == {"completed": 3}
    assert count(engine, "SELECT count(*) FROM workers WHERE stopped_at IS NOT NULL") == 1


def test_worker_is_woken_by_admission_and_stops_cleanly_on_sigterm(
    spawn: Spawn, engine: Engine, settings: Settings, market_feed: MarketFeed
) -> None:
    # Polling alone would take 10 minutes: only the NOTIFY of an admission wakes this worker.
    worker = spawn("worker", PERPBOT_POLL_INTERVAL_S="600", PERPBOT_PAPER__LATENCY_MS="1000")
    assert wait_for(lambda: len(live_worker_pids(engine)) == 1)
    assert wait_for(lambda: listening(engine))
    for i in (1, 2):  # the first job may be claimed by the worker's first look at the queue
        submit(engine, settings, [job(i)])
        assert tick.run_tick(engine, config()).admitted  # commits, then NOTIFY
        assert wait_for(lambda n=i: by_status(engine).get("completed") == n), by_status(engine)
    submit(engine, settings, [job(3)])
    assert tick.run_tick(engine, config()).admitted
    assert wait_for(lambda: by_status(engine).get("admitted") is None)  # claimed
    worker.send_signal(signal.SIGTERM)  # most likely mid-batch: the venue answers in ~1 s
    assert worker.wait(HANG_S) == 0
    assert by_status(engine) == {"completed": 3}  # finished what it held, then exited
    assert live_worker_pids(engine) == []


def test_run_processes_a_file_end_to_end_and_restarts_a_killed_worker(
    spawn: Spawn, cli: Cli, engine: Engine, tmp_path: Path, market_feed: MarketFeed
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(job(i) for i in range(30)))
    daemon = spawn(
        "run",
        "--workers",
        "2",
        "--no-strategies",  # the jobs here are the test's own
        PERPBOT_PAPER__LATENCY_MS="5",
        PERPBOT_TICK_INTERVAL_S="0.2",
        PERPBOT_MAX_CONCURRENT_JOBS="1000",
    )
    assert wait_for(lambda: len(live_worker_pids(engine)) == 2)
    assert cli("submit", str(jobs)).returncode == 0
    assert wait_for(lambda: by_status(engine) == {"completed": 30}), by_status(engine)

    victim = live_worker_pids(engine)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(
        lambda: len(live_worker_pids(engine)) == 3 and victim in live_worker_pids(engine)
    ), "no replacement worker registered"  # the dead one never said it stopped
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(HANG_S) == 0
    assert "1 restart(s)" in (daemon.stderr.read() if daemon.stderr else "")
    assert live_worker_pids(engine) == [victim]
