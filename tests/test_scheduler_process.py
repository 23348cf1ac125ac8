"""Real `perpbot scheduler` processes: NOTIFY wake-up, hot standby, clean shutdown."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from perpbot_db.settings import Settings
from tests.conftest import Cli, Spawn
from tests.test_scheduler import job, put_market, submit


def wait_for(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def admitted(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM hedge_jobs WHERE status = 'admitted'")
            ).scalar_one()
        )


def test_scheduler_once_prints_its_decisions(cli: Cli, engine: Engine, settings: Settings) -> None:
    put_market(engine)
    submit(engine, settings, [job(1), job(2, symbol="SOL/USDT:USDT")])
    done = cli("scheduler", "--once", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["admitted"] == 1
    assert summary["rejected"] == {"market_data_missing": 1}
    text_out = cli("scheduler", "--once")
    assert "admitted 0" in text_out.stdout


def test_submission_wakes_an_idle_scheduler_before_its_interval(
    spawn: Spawn,
    engine: Engine,
    settings: Settings,
) -> None:
    put_market(engine)
    spawn("scheduler", PERPBOT_TICK_INTERVAL_S="30")  # polling alone would take 30 s
    time.sleep(2.0)  # started, first tick done, idle
    started = time.monotonic()
    submit(engine, settings, [job(1)])
    assert wait_for(lambda: admitted(engine) == 1, timeout=10)
    assert time.monotonic() - started < 5


def test_standby_takes_over_when_the_leader_is_killed(
    spawn: Spawn,
    engine: Engine,
    settings: Settings,
) -> None:
    put_market(engine)
    leader = spawn("scheduler", PERPBOT_TICK_INTERVAL_S="0.2")
    standby = spawn("scheduler", PERPBOT_TICK_INTERVAL_S="0.2")
    submit(engine, settings, [job(1)])
    assert wait_for(lambda: admitted(engine) == 1)
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    put_market(engine, at=datetime.now(UTC))
    submit(engine, settings, [job(2)])
    assert wait_for(lambda: admitted(engine) == 2), "the standby did not admit"
    assert standby.poll() is None
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(15) == 0
    assert "scheduler stopped after" in (standby.stderr.read() if standby.stderr else "")
