"""``perpbot simulate`` through the real console script."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, text

from tests.builders import Cli


def test_simulate_when_run_briefly_then_reports_the_mode_and_its_ledger(cli: Cli) -> None:
    done = cli("simulate", "--hours", "0.05", "--symbols", "2", "--seed", "4", "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["modes"]
    assert report["mode"] == "balanced" and report["steps"] == 180
    assert report["jobs"]["submitted"] > 0
    assert sum(report["jobs"]["by_status"].values()) == report["jobs"]["submitted"]
    assert len(report["ledger_sha256"]) == 64
    assert set(report["peak_capital"]) == {"binance", "okx", "bybit"}
    assert "simulate balanced: 180/180 steps" in done.stderr  # progress, on stderr


def test_simulate_when_run_in_two_processes_with_one_seed_then_one_ledger(cli: Cli) -> None:
    def digest(hash_seed: str) -> str:
        args = ("simulate", "--hours", "0.02", "--symbols", "2", "--seed", "8", "--json")
        done = cli(*args, env={"PYTHONHASHSEED": hash_seed})
        assert done.returncode == 0, done.stderr
        (report,) = json.loads(done.stdout)["modes"]
        assert report["ledger_rows"] > 0
        return str(report["ledger_sha256"])

    assert digest("1") == digest("2")


def test_simulate_when_comparing_modes_then_one_table_of_four(cli: Cli) -> None:
    done = cli("simulate", "--hours", "0.02", "--symbols", "2", "--compare-modes")
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "conservative" in line)
    for mode in ("balanced", "aggressive", "volume_focused"):
        assert mode in header
    rows = [line.split("│")[1].strip() for line in done.stdout.splitlines() if "│" in line]
    for row in ("realized PnL USD", "volume USD", "fees USD", "ledger sha256"):
        assert row in rows, row
    assert any(r.startswith("held ") for r in rows)  # holds by code
    assert any(r.startswith(("expired:", "rejected:")) for r in rows)  # denials by code
    assert sum(r.startswith("peak capital ") for r in rows) == 3  # per exchange


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--hours", "0"), "--hours"),
        (("--hours", "-1"), "--hours"),
        (("--hours", "soon"), "--hours"),
        (("--hours", "1", "--mode", "reckless"), "--mode"),
        (("--hours", "1", "--step-s", "0"), "--step-s"),
        (("--hours", "1", "--symbols", "99"), "--symbols"),
        (("--hours", "1", "--market", "/nonexistent.jsonl"), "--market"),
    ],
)
def test_simulate_when_an_option_is_bad_then_exit_2_naming_it(
    cli: Cli, args: tuple[str, ...], field: str
) -> None:
    done = cli("simulate", *args)
    assert done.returncode == 2, done.stderr
    assert field in done.stderr


def test_simulate_when_given_a_recorded_market_then_replays_it_from_its_start(
    cli: Cli, tmp_path: Path
) -> None:
    start = datetime.fromisoformat("2026-02-01T12:00:00+00:00")
    lines = []
    for i in range(60):
        for n, ex in enumerate(("binance", "okx", "bybit")):
            price = 97000 + i + n * 3
            lines.append(
                {
                    "exchange": ex,
                    "symbol": "BTC/USDT:USDT",
                    "bid": price,
                    "ask": price + 1,
                    "last": price,
                    "funding_rate": 0.0001,
                    "volatility": 0.005,
                    "latency_ms": 40,
                    "observed_at": (start + timedelta(seconds=i)).isoformat(),
                }
            )
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = cli("simulate", "--hours", "0.01", "--market", str(path), "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["modes"]
    assert report["start"] == start.isoformat()
    assert report["end"] == (start + timedelta(seconds=35)).isoformat()

    path.write_text(json.dumps({k: v for k, v in lines[0].items() if k != "observed_at"}) + "\n")
    bad = cli("simulate", "--hours", "0.01", "--market", str(path))
    assert bad.returncode == 2
    assert "line 1: observed_at is required" in bad.stderr


def test_simulate_when_the_role_may_not_create_a_database_then_exit_1_saying_why(
    cli: Cli, engine: Engine, db_url: URL
) -> None:
    role = f"nocreatedb_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' NOCREATEDB"))
    try:
        url = db_url.set(username=role, password="pw")
        done = cli(
            "simulate",
            "--hours",
            "0.01",
            env={"PERPBOT_DATABASE_URL": url.render_as_string(hide_password=False)},
        )
        assert done.returncode == 1, done.stderr
        assert "scratch database" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP ROLE {role}"))
