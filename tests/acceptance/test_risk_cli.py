"""``perpbot risk limits`` / ``risk set`` and the ``[risk.MODE]`` settings, through the
real console script against a real PostgreSQL."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from perpbot_db.domain.risk import LIMIT_NAMES
from perpbot_db.settings import Settings
from tests.builders import HANG_S, Cli, MarketFeed, Spawn, job, submit, wait_for
from tests.conftest import TEST_TOML


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            int(conn.execute(text("SELECT count(*) FROM risk_limits")).scalar_one()),
            int(conn.execute(text("SELECT count(*) FROM control_events")).scalar_one()),
        )


def limits_json(cli: Cli, *args: str) -> dict[str, Any]:
    done = cli("risk", "limits", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def by_name(doc: dict[str, Any], mode: str) -> dict[str, dict[str, Any]]:
    return {line["limit"]: line for line in doc["limits"] if line["mode"] == mode}


def test_risk_limits_when_nothing_was_changed_then_prints_the_defaults_and_writes_nothing(
    cli: Cli, engine: Engine
) -> None:
    before = counts(engine)
    done = cli("risk", "limits")
    assert done.returncode == 0, done.stderr
    assert "risk limits in force (risk mode balanced)" in done.stdout
    lines = [line.split() for line in done.stdout.splitlines()]
    assert ["balanced", "*", "spread_hard_bps", "2", "2", "-"] in [
        [c for c in line if c != "│"] for line in lines
    ]
    doc = limits_json(cli, "--mode", "volume_focused")
    assert doc["risk_mode"] == "balanced"
    assert [line["limit"] for line in doc["limits"]] == list(LIMIT_NAMES)
    mine = by_name(doc, "volume_focused")
    assert mine["latency_hard_ms"] == {
        "mode": "volume_focused",
        "limit": "latency_hard_ms",
        "value": "300",
        "default": "300",
        "differs": False,
        "updated_at": None,
        "updated_by": None,
    }
    assert len(limits_json(cli)["limits"]) == 96
    assert counts(engine) == before  # reads only


def test_risk_set_when_valid_then_the_table_says_it_differs_and_the_change_is_audited(
    cli: Cli, engine: Engine
) -> None:
    done = cli(
        "risk", "set", "balanced", "spread_soft_bps", "-1.5", "--reason", "edge is thin",
        "--actor", "ops",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "risk.balanced: spread_soft_bps 0 -> -1.5"
    both = cli(
        "risk", "set", "balanced", "weight_edge", "0.3", "weight_pnl", "0.15", "--reason", "edge",
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert both.stdout.strip() == "risk.balanced: weight_edge 0.25 -> 0.3, weight_pnl 0.2 -> 0.15"
    line = by_name(limits_json(cli, "--mode", "balanced"), "balanced")["spread_soft_bps"]
    assert (line["value"], line["default"], line["differs"], line["updated_by"]) == (
        "-1.5", "0", True, "ops",
    )  # fmt: skip
    table = cli("risk", "limits", "--mode", "balanced").stdout
    row = next(r for r in table.splitlines() if "spread_soft_bps" in r)
    assert "-1.5" in row and "yes" in row and "by ops" in row
    with engine.connect() as conn:
        first, second = conn.execute(
            text(
                "SELECT actor, action, reason, details FROM control_events ORDER BY id DESC LIMIT 2"
            )
        ).all()[::-1]
    assert (first.actor, first.action) == ("ops", "risk_limit_changed")
    assert first.reason == "edge is thin"
    assert first.details["changes"] == {"spread_soft_bps": ["0", "-1.5"]}
    assert second.details["changes"] == {
        "weight_edge": ["0.25", "0.3"],
        "weight_pnl": ["0.2", "0.15"],
    }


def test_risk_set_when_bad_then_exit_2_names_the_limit_and_writes_nothing(
    cli: Cli, engine: Engine
) -> None:
    before = counts(engine)
    for args, message in [
        (
            ("balanced", "spread_soft_bps", "3"),
            "perpbot: risk.balanced.spread_soft_bps: must not exceed spread_hard_bps (2), "
            "got 3; nothing was written",
        ),
        (
            ("balanced", "min_score", "lots"),
            "perpbot: risk.balanced.min_score: 'lots' is not a number; nothing was written",
        ),
        (("aggressive", "max_spread", "1"), "perpbot: risk.aggressive.max_spread: unknown limit"),
    ]:
        done = cli("risk", "set", *args, "--reason", "try")
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.strip().startswith(message), done.stderr
    done = cli("risk", "set", "balanced", "weight_edge", "0.3", "--reason", "try")
    assert done.returncode == 2
    assert "risk.balanced.weight_edge: the weights must sum to 1, got 1.05" in done.stderr
    done = cli("risk", "set", "balanced", "min_score", "--reason", "try")
    assert done.returncode == 2 and "'min_score' has no value" in done.stderr
    done = cli("risk", "set", "reckless", "min_score", "1", "--reason", "try")
    assert done.returncode == 2 and "reckless" in done.stderr
    assert counts(engine) == before


def test_db_upgrade_when_settings_change_a_limit_then_synced_audited_and_shown(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    done = cli("db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "risk limits set from" in done.stderr  # first sync: every limit gets its row
    assert counts(engine)[0] == 96
    again = cli("db", "upgrade")
    assert "risk limits in line with" in again.stderr
    config = tmp_path / "tuned.toml"
    config.write_text(TEST_TOML + "[risk.balanced]\nlatency_hard_ms = 500\n")
    done = cli("db", "upgrade", env={"PERPBOT_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert f"risk limits set from {config}: balanced (latency_hard_ms)" in done.stderr
    line = by_name(limits_json(cli), "balanced")["latency_hard_ms"]
    assert (line["value"], line["default"], line["differs"]) == ("500", "750", True)
    with engine.connect() as conn:
        details = conn.execute(
            text("SELECT details FROM control_events ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    assert details["source"] == str(config) and details["command"] == "db upgrade"
    assert details["changes"] == {"latency_hard_ms": ["750", "500"]}


def test_any_command_when_a_risk_setting_is_wrong_then_one_line_exit_2(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(TEST_TOML + "[risk.conservative]\nmin_score = 140\n")
    before = counts(engine)
    for command in (("risk", "limits"), ("db", "upgrade"), ("status",)):
        done = cli(*command, env={"PERPBOT_CONFIG": str(config)})
        assert done.returncode == 2
        assert done.stderr.strip() == (
            "perpbot: setting risk.conservative.min_score: must be within 0-100, got 140"
        )
    assert counts(engine) == before


def test_run_when_it_starts_then_syncs_the_limits_and_its_ticks_judge_with_them(
    spawn: Spawn, engine: Engine, settings: Settings, market_feed: MarketFeed
) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    daemon = spawn(
        "run", "--workers", "1", "--no-strategies", PERPBOT_RISK__BALANCED__MIN_SCORE="99",
        PERPBOT_TICK_INTERVAL_S="0.2",
    )  # fmt: skip

    def held() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    text("SELECT decision_code FROM hedge_jobs WHERE id = :j"), {"j": job_id}
                ).scalar_one()
                == "score_below_threshold"
            )

    assert wait_for(held), "the daemon's tick did not hold the job below min_score 99"
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT value FROM risk_limits WHERE mode = 'balanced' AND name = 'min_score'")
        ).scalar_one()
        details = conn.execute(
            text(
                "SELECT details FROM control_events WHERE action = 'risk_limit_changed' "
                "AND details ->> 'mode' = 'balanced'"
            )
        ).scalar_one()
    assert value == 99
    assert details["command"] == "run" and details["changes"]["min_score"] == [None, "99"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=HANG_S) == 0


def test_risk_mode_when_switched_then_audited_like_risk_mode_and_marked_in_the_table(
    cli: Cli, engine: Engine
) -> None:
    done = cli("risk", "mode", "aggressive", "--reason", "calm day", "--actor", "ops")
    assert done.returncode == 0, done.stderr
    assert "risk mode balanced -> aggressive" in done.stdout
    assert limits_json(cli)["risk_mode"] == "aggressive"
    assert "aggressive *" in cli("risk", "limits", "--mode", "aggressive").stdout
    with engine.connect() as conn:
        action = conn.execute(
            text("SELECT action FROM control_events ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    assert action == "risk_mode"
