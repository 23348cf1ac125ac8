"""``perpbot status --watch``: the monitoring state in the terminal, live, or as JSON lines."""

from __future__ import annotations

import json

from sqlalchemy import Engine

from perpbot_db.settings import Settings
from tests.builders import Cli, job, put_market, submit


def test_watch_json_prints_one_monitoring_state_per_interval(
    cli: Cli, engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(3)])
    done = cli("status", "--watch", "--json", "--count", "2", "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    states = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(states) == 2
    assert all(s["version"] == 1 and s["jobs"]["pending"] == 3 for s in states)
    assert states[0]["built_at"] < states[1]["built_at"]  # each its own snapshot


def test_watch_draws_the_state_as_text(cli: Cli, engine: Engine, settings: Settings) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(2)])
    done = cli("status", "--watch", "--count", "1")
    assert done.returncode == 0, done.stderr
    assert "jobs: 2 pending, 0 admitted, 0 running" in done.stdout
    assert "health down" in done.stdout  # no scheduler, no worker in this test
    assert "capital (used / budget)" in done.stdout and "binance" in done.stdout


def test_interval_without_watch_is_refused_naming_the_option(cli: Cli) -> None:
    done = cli("status", "--interval", "5")
    assert done.returncode == 2
    assert "--watch" in done.stderr
