"""Real `perpbot scheduler` processes: NOTIFY wake-up, hot standby, clean shutdown.

Market data comes from a live feed (``market_feed``) and every wait is for a
condition, so a loaded machine makes these tests slower, never red.
"""

from __future__ import annotations

import json
import signal

from sqlalchemy import Engine, text

from perpbot_db.settings import Settings
from perpbot_db.store import locks
from tests.builders import Cli, MarketFeed, Spawn, job, listening, submit, wait_for


def admitted(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM hedge_jobs WHERE status = 'admitted'")
            ).scalar_one()
        )


def test_scheduler_once_prints_its_decisions(
    cli: Cli, engine: Engine, settings: Settings, market_feed: MarketFeed
) -> None:
    submit(engine, settings, [job(1), job(2, symbol="SOL/USDT:USDT")])
    done = cli("scheduler", "--once", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["admitted"] == 1
    assert summary["rejected"] == {}
    assert summary["held_pending"] == {"market_data_missing": 1}  # no SOL data: it waits
    text_out = cli("scheduler", "--once")
    assert "admitted 0" in text_out.stdout


def test_submission_wakes_an_idle_scheduler_before_its_interval(
    spawn: Spawn, engine: Engine, settings: Settings, market_feed: MarketFeed
) -> None:
    spawn("scheduler", PERPBOT_TICK_INTERVAL_S="3600")  # polling alone would take an hour
    submit(engine, settings, [job(1)])
    assert wait_for(lambda: admitted(engine) == 1), "the first tick did not admit"
    assert wait_for(lambda: listening(engine))
    submit(engine, settings, [job(2)])  # the scheduler is idle until 3600 s from now
    assert wait_for(lambda: admitted(engine) == 2), "the submission did not wake the scheduler"


def test_standby_takes_over_when_the_leader_is_killed(
    spawn: Spawn, engine: Engine, settings: Settings, market_feed: MarketFeed
) -> None:
    leader = spawn("scheduler", PERPBOT_TICK_INTERVAL_S="0.2")
    standby = spawn("scheduler", PERPBOT_TICK_INTERVAL_S="0.2")
    submit(engine, settings, [job(1)])
    assert wait_for(lambda: admitted(engine) == 1)
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    submit(engine, settings, [job(2)])
    assert wait_for(lambda: admitted(engine) == 2), "the standby did not admit"
    assert standby.poll() is None
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(120) == 0
    assert "scheduler stopped after" in (standby.stderr.read() if standby.stderr else "")


def leader_pid(engine: Engine) -> int | None:
    """The pid in the leader's identity (``scheduler:host:pid:tag``), if any leads."""
    with engine.connect() as conn:
        name = locks.leader_current(conn)
    return None if name is None else int(name.split(":")[2])


def test_one_scheduler_leads_the_maintenance_and_a_standby_takes_over_when_it_dies(
    spawn: Spawn, engine: Engine, market_feed: MarketFeed
) -> None:
    first = spawn("scheduler", PERPBOT_RECOVERY_INTERVAL_S="0.2")
    second = spawn("scheduler", PERPBOT_RECOVERY_INTERVAL_S="0.2")
    pids = {first.pid, second.pid}
    assert wait_for(lambda: leader_pid(engine) in pids)
    dead, alive = (first, second) if leader_pid(engine) == first.pid else (second, first)
    with engine.connect() as conn:
        holders = conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = hashtext('perpbot.leader')::oid"
            )
        ).scalar_one()
    assert holders == 1
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert wait_for(lambda: leader_pid(engine) == alive.pid), "the standby did not take over"
    alive.send_signal(signal.SIGTERM)
    assert alive.wait(120) == 0
    assert wait_for(lambda: leader_pid(engine) is None)  # it resigned on its way out
