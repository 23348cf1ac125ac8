"""The real ``perpbot`` console script against a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from perpbot_db.runtime import migrate
from tests.builders import HANG_S, PERPBOT, Cli, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SAMPLES = EXAMPLES / "sample_jobs.jsonl"


def job_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM hedge_jobs")).scalar_one())


def test_submit_file_then_status_json_counts_pending_per_exchange(cli: Cli) -> None:
    done = cli("submit", str(SAMPLES))
    assert done.returncode == 0, done.stderr
    assert "submitted 10 job(s)" in done.stdout
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"]["pending"] == 10
    assert status["jobs_total"] == 10
    per_exchange = {e["name"]: e["jobs"].get("pending", 0) for e in status["exchanges"]}
    assert per_exchange == {"binance": 7, "bybit": 6, "okx": 8}


def test_submit_from_stdin_with_json_summary(cli: Cli) -> None:
    done = cli("submit", "-", "--json", stdin=SAMPLES.read_text())
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["lines"], summary["inserted"], summary["existing"]) == (10, 10, 0)
    again = json.loads(cli("submit", "-", "--json", stdin=SAMPLES.read_text()).stdout)
    assert (again["inserted"], again["existing"]) == (0, 10)
    assert again["first_job_id"] == summary["first_job_id"]


def test_bad_file_reports_every_bad_line_exits_nonzero_and_writes_nothing(
    cli: Cli, engine: Engine
) -> None:
    good = SAMPLES.read_text().splitlines()[0]
    bad = (EXAMPLES / "bad_jobs.jsonl").read_text()
    done = cli("submit", "-", stdin=good + "\n" + bad)
    assert done.returncode == 1
    assert "line 2: notional_usd:" in done.stderr
    assert "line 3: legs[1]:" in done.stderr
    assert "line 4: symbol:" in done.stderr
    assert "nothing was written" in done.stderr
    assert job_count(engine) == 0


def test_bad_file_with_skip_invalid_inserts_the_good_lines(cli: Cli, engine: Engine) -> None:
    good = SAMPLES.read_text().splitlines()[0]
    bad = (EXAMPLES / "bad_jobs.jsonl").read_text()
    done = cli("submit", "-", "--skip-invalid", "--json", stdin=good + "\n" + bad)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["inserted"], summary["invalid"]) == (1, 3)
    assert job_count(engine) == 1


def test_missing_input_file_names_it_and_exits_2(cli: Cli) -> None:
    done = cli("submit", "/no/such/jobs.jsonl")
    assert done.returncode == 2
    assert "/no/such/jobs.jsonl" in done.stderr


def test_jobs_lists_newest_first_and_filters_by_status(cli: Cli, engine: Engine) -> None:
    assert cli("submit", str(SAMPLES)).returncode == 0
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = 'rejected', finished_at = now() "
                "WHERE idempotency_key = 'sample-arb-btc-1'"
            )
        )
    listed = [
        json.loads(line) for line in cli("jobs", "--json", "--limit", "3").stdout.splitlines()
    ]
    assert len(listed) == 3
    assert [row["id"] for row in listed] == sorted((row["id"] for row in listed), reverse=True)
    rejected = cli("jobs", "--json", "--status", "rejected").stdout.splitlines()
    assert [json.loads(line)["idempotency_key"] for line in rejected] == ["sample-arb-btc-1"]
    table = cli("jobs")
    assert table.returncode == 0 and "BTC/USDT:USDT" in table.stdout


def test_unknown_status_filter_is_refused_with_exit_2(cli: Cli) -> None:
    done = cli("jobs", "--status", "finished")
    assert done.returncode == 2
    assert "status" in done.stderr


def test_external_database_behind_head_is_refused_with_a_hint(cli: Cli, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    done = cli("status")
    assert done.returncode == 2
    assert "perpbot db upgrade" in done.stderr


def test_db_upgrade_is_idempotent_and_syncs_exchanges_from_settings(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    assert cli("db", "upgrade").returncode == 0
    assert cli("db", "upgrade").returncode == 0
    config = tmp_path / "changed.toml"
    config.write_text(
        "[exchanges.binance]\nequity_usd = 65000\nmax_concurrent_jobs = 9\n"
        "[exchanges.hyperliquid]\nequity_usd = 10000\n"
    )
    done = cli("db", "upgrade", env={"PERPBOT_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    with engine.connect() as conn:
        rows = {
            r.name: r
            for r in conn.execute(
                text("SELECT name, enabled, equity_usd, max_concurrent_jobs FROM exchanges")
            )
        }
    assert rows["binance"].enabled and rows["binance"].max_concurrent_jobs == 9
    assert str(rows["binance"].equity_usd) == "65000.00000000"
    assert rows["hyperliquid"].enabled
    assert not rows["okx"].enabled and not rows["bybit"].enabled


def sync_events(engine: Engine, after: int = 0) -> list[tuple[str, str, dict[str, object]]]:
    with engine.connect() as conn:
        return [
            (r.action, r.reason, r.details)
            for r in conn.execute(
                text(
                    "SELECT action, reason, details FROM control_events "
                    "WHERE action LIKE 'exchange%' AND id > :after ORDER BY id"
                ),
                {"after": after},
            )
        ]


def last_event_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM control_events")).scalar())


def test_db_upgrade_with_an_exchange_dropped_disables_it_with_a_control_event_naming_the_file(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    start = last_event_id(engine)
    assert cli("db", "upgrade").returncode == 0
    assert sync_events(engine, start) == []  # in line already: nothing written
    config = tmp_path / "two.toml"
    config.write_text(
        "[exchanges.binance]\nequity_usd = 50000\n"
        "[exchanges.okx]\nequity_usd = 40000\nmax_concurrent_jobs = 4\n"
    )
    done = cli("db", "upgrade", env={"PERPBOT_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert "bybit disabled" in done.stderr and "okx updated (max_concurrent_jobs)" in done.stderr
    events = sync_events(engine, start)
    assert [(action, details["exchange"]) for action, _, details in events] == [
        ("exchange_updated", "okx"),
        ("exchange_disabled", "bybit"),
    ]
    (_, updated, up), (_, disabled, down) = events
    assert updated == f"okx settings changed in {config}: max_concurrent_jobs 3 -> 4"
    assert up["changes"] == {"max_concurrent_jobs": ["3", "4"]}
    assert disabled == f"bybit disabled: not configured in {config}"
    assert down["source"] == str(config) and down["command"] == "db upgrade"
    with engine.connect() as conn:
        enabled = dict(conn.execute(text("SELECT name, enabled FROM exchanges")).all())
    assert enabled == {"binance": True, "okx": True, "bybit": False}
    again = last_event_id(engine)
    assert cli("db", "upgrade", env={"PERPBOT_CONFIG": str(config)}).returncode == 0
    assert sync_events(engine, again) == []  # idempotent
    assert cli("db", "upgrade").returncode == 0  # the full file again: bybit comes back
    assert [(a, d["exchange"]) for a, _, d in sync_events(engine, again)] == [
        ("exchange_enabled", "bybit"),
        ("exchange_updated", "okx"),
    ]


def test_db_upgrade_with_no_exchange_configured_migrates_and_leaves_the_table(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    migrate.downgrade(engine, "0004")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    start = last_event_id(engine)
    done = cli("db", "upgrade", env={"PERPBOT_CONFIG": str(empty)})
    assert done.returncode == 0, done.stderr
    assert f"schema at {migrate.head_revision()} (upgraded from 0004)" in done.stdout
    assert f"settings file {empty} names no exchange" in done.stderr
    assert "the exchanges table was left as it is" in done.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM exchanges WHERE enabled")).scalar() == 3
    assert sync_events(engine, start) == []


def test_db_url_masks_the_password_unless_asked(cli: Cli, cli_env: dict[str, str]) -> None:
    password = cli_env["PERPBOT_DATABASE_URL"].split("@")[0].rsplit(":", 1)[-1]
    masked = cli("db", "url")
    assert masked.returncode == 0
    if password and password != cli_env["PERPBOT_DATABASE_URL"]:
        assert password not in masked.stdout
    shown = cli("db", "url", "--show-password")
    assert shown.stdout.strip().startswith("postgresql+psycopg://")


def test_unreachable_database_is_one_clear_line_without_password(cli: Cli) -> None:
    url = "postgresql+psycopg://perpbot:s3cret-pw@127.0.0.1:1/perpbot"
    done = cli("status", env={"PERPBOT_DATABASE_URL": url})
    assert done.returncode == 2
    assert "cannot reach the database" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


# -- submit and market load: hostile input ------------------------------------------------


def sample_lines(count: int, **overrides: Any) -> str:
    base = json.loads(SAMPLES.read_text().splitlines()[0])
    out = []
    for i in range(count):
        body = {**base, "idempotency_key": f"cli-{i}", **overrides}
        out.append(json.dumps(body))
    return "\n".join(out) + "\n"


def test_submit_with_nul_in_metadata_after_good_lines_names_it_writes_nothing_no_traceback(
    cli: Cli, engine: Engine
) -> None:
    bad = sample_lines(1, metadata={"notes": ["nul\u0000"]}).replace("cli-0", "cli-bad")
    done = cli("submit", "-", stdin=sample_lines(2500) + bad)
    assert done.returncode == 1
    assert "line 2501: metadata.notes[0]: string holds a NUL character" in done.stderr
    assert "nothing was written" in done.stderr
    assert "Traceback" not in done.stderr
    assert job_count(engine) == 0


def test_submit_reports_the_first_100_problems_and_counts_the_rest(
    cli: Cli, engine: Engine
) -> None:
    bad = sample_lines(150, notional_usd=-1)
    done = cli("submit", "-", stdin=bad)
    assert done.returncode == 1
    problem_lines = [line for line in done.stderr.splitlines() if line.startswith("line ")]
    assert len(problem_lines) == 100
    assert "... and 50 more problem(s)" in done.stderr
    assert "perpbot: 150 bad line(s); nothing was written" in done.stderr
    summary = json.loads(cli("submit", "-", "--json", stdin=bad).stdout)
    assert (summary["invalid"], summary["problems_total"], len(summary["problems"])) == (
        150,
        150,
        100,
    )
    assert job_count(engine) == 0


def test_submit_database_error_mid_way_is_one_line_exit_1_and_nothing_written(
    cli: Cli, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.idempotency_key = 'cli-2300' THEN
                        RAISE EXCEPTION 'test trigger refuses cli-2300';
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER test_refuse BEFORE INSERT ON hedge_jobs
                FOR EACH ROW EXECUTE FUNCTION test_refuse();
                """
            )
        )
    done = cli("submit", "-", stdin=sample_lines(2500))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "test trigger refuses cli-2300" in line and "nothing was written" in line
    assert job_count(engine) == 0


def test_submit_killed_mid_way_leaves_nothing_behind(
    cli_env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    """One transaction: batches already sent are invisible until the end, and lost with
    the process.  The input stays open, so the submission is still reading when killed."""
    proc = subprocess.Popen(
        [PERPBOT, "submit", "-"],
        env=cli_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(sample_lines(5000).encode())
        proc.stdin.flush()
        assert wait_for(
            lambda: jobs_written_in_open_transaction(engine) or proc.poll() is not None
        ), "the submission never wrote a batch"
        assert proc.poll() is None, "the submission ended early"
        proc.kill()
        proc.wait(HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert job_count(engine) == 0


def jobs_written_in_open_transaction(engine: Engine) -> bool:
    """Another session holds a row lock taken by INSERT on hedge_jobs (uncommitted)."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                    "WHERE l.relation = 'hedge_jobs'::regclass AND l.mode = 'RowExclusiveLock' "
                    "AND a.state = 'idle in transaction' AND l.pid <> pg_backend_pid())"
                )
            ).scalar_one()
        )


def test_invalid_max_pending_s_setting_is_refused_naming_it(cli: Cli) -> None:
    done = cli("submit", str(SAMPLES), env={"PERPBOT_MAX_PENDING_S": "0"})
    assert done.returncode == 2
    assert "setting max_pending_s" in done.stderr


def test_market_load_from_a_skewed_clock_is_refused_then_correct_data_loads(
    cli: Cli, engine: Engine
) -> None:
    body = {"exchange": "binance", "symbol": "BTC/USDT:USDT", "bid": 1.00, "ask": 1.01}
    poisoned = json.dumps({**body, "last": 1.00, "observed_at": "2099-01-01T00:00:00Z"})
    done = cli("market", "load", "-", stdin=poisoned + "\n")
    assert done.returncode == 1
    assert "line 1: observed_at:" in done.stderr and "ahead of the database clock" in done.stderr
    assert "Traceback" not in done.stderr
    good = json.dumps({**body, "bid": 97000, "ask": 97001, "last": 97000})
    loaded = cli("market", "load", "-", "--json", stdin=good + "\n")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["upserted"] == 1
    skewed = cli(
        "market", "load", "-", stdin=poisoned + "\n", env={"PERPBOT_MARKET_MAX_FUTURE_SKEW_S": "x"}
    )
    assert skewed.returncode == 2 and "market_max_future_skew_s" in skewed.stderr


def test_market_load_of_deep_nesting_is_a_problem_not_a_traceback(cli: Cli) -> None:
    done = cli("market", "load", "-", stdin='{"bid": ' + "[" * 10_000 + "]" * 10_000 + "}\n")
    assert done.returncode == 1
    assert "line 1: snapshot: not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr
