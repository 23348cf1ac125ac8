"""The read commands answer at once and say why a job waits.

What each command imports is checked in a real process (``sys.modules`` at its
exit), not timed: ``perpbot --help`` loads no database, scheduler or worker code;
``status``, ``jobs`` and ``job`` read with the driver alone and run without typer,
pydantic or rich (no SQLAlchemy, no Alembic, no scheduler, no workers either)
unless a setting needs the full validation.  ``bench/cli.py`` gives the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.domain.protections import Lock, ProtectionCode, Scope
from perpbot_db.runtime import revisions
from perpbot_db.runtime.leader import Leader
from perpbot_db.services import tick
from perpbot_db.settings import Settings
from perpbot_db.store import locks
from tests.builders import HANG_S, Cli, config, job, put_market, submit

RUN_AND_LIST_MODULES = """
import json, sys
from perpbot_db.cli.main import main
out, sys.argv = sys.argv[1], ["perpbot", *sys.argv[2:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

NEVER_ON_HELP = ("sqlalchemy", "alembic", "apscheduler", "psycopg", "workers", "pydantic_settings")
NEVER_ON_READ = ("sqlalchemy", "alembic", "apscheduler", "workers")
NOT_ON_A_PLAIN_READ = ("typer", "click", "pydantic", "pydantic_settings", "rich")


def imported(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[Any, str, list[str]]:
    """(exit code, stdout, top-level packages imported) of ``perpbot ARGS``."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        cwd=tmp_path,
    )
    assert out.exists(), done.stderr
    result = json.loads(out.read_text())
    packages = sorted({name.split(".")[0] for name in result["modules"]} | set(result["modules"]))
    return result["code"], done.stdout, packages


def _loaded(packages: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [name for name in forbidden if name in packages]


def test_help_loads_no_database_driver_scheduler_workers_or_settings(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    code, stdout, packages = imported(cli_env, tmp_path, "--help")
    assert code == 0 and "status" in stdout and "job" in stdout
    assert "perpbot_db.cli.jobs" in packages  # the commands are registered...
    assert _loaded(packages, NEVER_ON_HELP) == []  # ...without what they run on


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("jobs",), ("job", "1")])
def test_read_commands_use_the_driver_alone(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine, settings: Settings, args: tuple[str]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(1)])
    # A plain settings file: exchanges and flat settings.  The tests' own file also
    # switches the feed off, and [feed], [strategies] and [risk] are judged by the full
    # validation only (the next test).
    plain = tmp_path / "plain.toml"
    plain.write_text(
        "".join(
            f"[exchanges.{name}]\nequity_usd = {e.equity_usd}\n"
            for name, e in settings.exchanges.items()
        )
    )
    code, stdout, packages = imported({**cli_env, "PERPBOT_CONFIG": str(plain)}, tmp_path, *args)
    assert code == 0 and stdout
    assert "psycopg" in packages
    assert _loaded(packages, NEVER_ON_READ + NOT_ON_A_PLAIN_READ) == []


def test_a_setting_read_commands_cannot_judge_at_a_glance_gets_the_full_validation(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    nested = {**cli_env, "PERPBOT_EXCHANGES__OKX__MAX_CONCURRENT_JOBS": "2"}
    code, stdout, packages = imported(nested, tmp_path, "status", "--json")
    assert code == 0 and json.loads(stdout)["system"]["status"] == "running"
    assert "pydantic_settings" in packages  # validated in full...
    assert _loaded(packages, (*NEVER_ON_READ, "typer", "rich")) == []  # ...still no typer
    feed = tmp_path / "feed.toml"  # a [feed] table: the full validation judges it
    feed.write_text('[exchanges.okx]\nequity_usd = 1000\n[feed]\nkind = "none"\n')
    code, stdout, packages = imported({**cli_env, "PERPBOT_CONFIG": str(feed)}, tmp_path, "jobs")
    assert code == 0 and "pydantic_settings" in packages
    wrong = {**cli_env, "PERPBOT_EXCHANGES__OKX__EQUITY_USD": "-1"}
    done = subprocess.run(
        [sys.executable, "-m", "perpbot_db", "jobs"],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "perpbot: setting exchanges.okx.equity_usd: Input should be greater than 0"
    ]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("jobs", "--limit", "0"), "'--limit'"),
        (("jobs", "--status", "finished"), "'--status'"),
        (("jobs", "--colour"), "--colour"),
        (("status", "extra"), "extra"),
    ],
)
def test_a_mistake_on_a_read_command_gets_typers_usage_error(
    cli: Cli, args: tuple[str, ...], named: str
) -> None:
    done = cli(*args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"Usage: perpbot {args[0]} ")
    assert named in done.stderr
    assert "Traceback" not in done.stderr


def _held_and_admitted(engine: Engine, settings: Settings) -> tuple[int, int]:
    put_market(engine)
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    held, admitted = submit(
        engine,
        settings,
        [job(1, symbol="SOL/USDT:USDT", deadline=deadline.isoformat()), job(2)],
    )
    report = tick.run_tick(engine, config())
    assert report.admitted == [admitted] and report.held == {"market_data_missing": 1}
    return held, admitted


def test_jobs_shows_each_jobs_decision_code_and_reason(
    cli: Cli, engine: Engine, settings: Settings
) -> None:
    held, admitted = _held_and_admitted(engine, settings)
    rows = {row["id"]: row for row in map(json.loads, cli("jobs", "--json").stdout.splitlines())}
    assert rows[held]["decision_code"] == "market_data_missing"
    assert rows[held]["decision_context"]["symbol"] == "SOL/USDT:USDT"
    assert "symbol=SOL/USDT:USDT" in rows[held]["decision_reason"]
    assert rows[admitted]["decision_code"] == "admitted"
    table = cli("jobs")
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if " id " in line)
    assert "decision" in header and "reason" in header
    held_line = next(line for line in table.stdout.splitlines() if f" {held} " in line)
    assert "market_data_missing" in held_line


def test_job_shows_why_it_waits_its_legs_capital_and_events(
    cli: Cli, engine: Engine, settings: Settings
) -> None:
    held, admitted = _held_and_admitted(engine, settings)
    shown = cli("job", str(held))
    assert shown.returncode == 0, shown.stderr
    assert f"job {held} pending" in shown.stdout
    assert "why: pending: held by market_data_missing (" in shown.stdout
    for title in ("legs", "capital", "events"):
        assert title in shown.stdout
    assert "- -> pending" in shown.stdout and "submitted" in shown.stdout

    data = json.loads(cli("job", str(admitted), "--json").stdout)
    assert data["job"]["id"] == admitted and data["job"]["status"] == "admitted"
    assert data["why"]["text"].startswith("admitted: waiting for a worker")
    assert [(leg["exchange"], leg["side"]) for leg in data["legs"]] == [
        ("binance", "buy"),
        ("okx", "sell"),
    ]
    assert all(leg["client_order_id"] for leg in data["legs"])
    assert sorted(r["exchange"] for r in data["reservations"]) == ["binance", "okx"]
    assert all(r["status"] == "active" for r in data["reservations"])
    assert [(e["from_status"], e["to_status"]) for e in data["events"]] == [
        (None, "pending"),
        ("pending", "admitted"),
    ]


def test_unknown_job_is_one_line_naming_it_and_exit_1(cli: Cli) -> None:
    done = cli("job", "424242")
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["perpbot: job 424242 not found"]
    assert done.stdout == ""


@pytest.mark.parametrize("bad", ["x", "1.5", "0"])
def test_job_id_that_is_not_a_positive_integer_exits_2_naming_the_argument(
    cli: Cli, bad: str
) -> None:
    done = cli("job", bad)
    assert done.returncode == 2
    assert "job_id" in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_read_commands_refuse_a_schema_behind_head_with_the_hint(cli: Cli, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
    for args in (("jobs",), ("job", "1"), ("status", "--json")):
        done = cli(*args)
        assert done.returncode == 2, args
        assert done.stderr.splitlines() == [
            "perpbot: database schema is at revision 0006, this perpbot needs "
            f"{revisions.head_revision()}: run `perpbot db upgrade`"
        ]


def test_status_shows_the_leader_and_the_protection_locks_in_force(
    cli: Cli, engine: Engine
) -> None:
    idle = cli("status")
    assert idle.returncode == 0, idle.stderr
    assert "leader: none" in idle.stdout.splitlines()
    assert "protection locks: none" in idle.stdout.splitlines()

    now = datetime.now(UTC)
    until = now + timedelta(minutes=10)
    lock = Lock(Scope.EXCHANGE, "okx", ProtectionCode.API_LATENCY, "okx answers in 900 ms", until)
    with engine.begin() as conn:
        locks.protection_lock_insert(conn, lock, created_by="test", now=now)
    leader = Leader(engine, "scheduler:acceptance:1:abcdef")
    try:
        assert leader.is_leader()
        shown = cli("status")
        data = json.loads(cli("status", "--json").stdout)
    finally:
        leader.resign()
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "leader: scheduler:acceptance:1:abcdef" in lines
    assert "1 protection lock(s)" in lines
    header = next(line for line in lines if " scope " in line)
    assert [c.strip() for c in header.split("|")] == ["scope", "target", "code", "reason", "until"]
    row = next(line for line in lines if "api_latency" in line)
    assert [c.strip() for c in row.split("|")] == [
        "exchange", "okx", "api_latency", "okx answers in 900 ms",
        until.strftime("%Y-%m-%d %H:%M:%S"),
    ]  # fmt: skip
    assert data["leader"]["application_name"] == "scheduler:acceptance:1:abcdef"
    assert [(x["scope"], x["target"], x["code"]) for x in data["locks"]] == [
        ("exchange", "okx", "api_latency")
    ]
