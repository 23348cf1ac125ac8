"""Risk limits in force live in ``risk_limits`` (issue 11, item 5), on a real PostgreSQL.

Only the sync (``db upgrade``, ``run``) and ``perpbot risk set`` write them, each
change audited; the tick reads them once per tick, so a change decides the next
tick.  The template database's exchanges came through a sync; its risk limits
did not (no row: the defaults are in force).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from perpbot_db.domain.lifecycle import RiskMode
from perpbot_db.domain.risk import LIMIT_NAMES, LIMITS
from perpbot_db.runtime import migrate
from perpbot_db.services import risk_limits, tick
from perpbot_db.services.control import ControlError
from perpbot_db.settings import Settings, load_settings
from tests.builders import config, job, put_market, statuses, submit

B = RiskMode.BALANCED


def events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT actor, action, reason, details FROM control_events "
                    "WHERE action = 'risk_limit_changed' ORDER BY id"
                )
            )
        )


def rows(engine: Engine) -> dict[tuple[str, str], tuple[D, str]]:
    with engine.connect() as conn:
        return {
            (r.mode, r.name): (r.value, r.updated_by)
            for r in conn.execute(text("SELECT mode, name, value, updated_by FROM risk_limits"))
        }


def job_decision(engine: Engine, job_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, decision_code, decision_context FROM hedge_jobs WHERE id = :j"),
            {"j": job_id},
        ).one()


def with_risk(settings: Settings, **risk: dict[str, object]) -> Settings:
    return load_settings(
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        risk=risk,
    )


# -- the sync -------------------------------------------------------------------------------


def test_sync_when_table_empty_then_every_limit_written_one_event_per_mode(
    engine: Engine, settings: Settings
) -> None:
    assert rows(engine) == {}
    report = migrate.sync_risk_limits(engine, settings, command="db upgrade")
    assert [c.mode for c in report.changes] == list(RiskMode)
    table = rows(engine)
    assert len(table) == len(RiskMode) * len(LIMIT_NAMES) == 96
    assert table[("balanced", "spread_hard_bps")] == (D(2), "perpbot")
    assert table[("volume_focused", "max_market_age_s")][0] == 5
    written = events(engine)
    assert [e.details["mode"] for e in written] == [m.value for m in RiskMode]
    source = str(Path(str(settings.config)).resolve())
    first = written[0]
    assert first.actor == "perpbot" and first.details["source"] == source
    assert first.details["command"] == "db upgrade"
    assert first.details["changes"]["spread_soft_bps"] == [None, "-2"]
    assert first.reason.startswith(f"conservative risk limits set from {source}: ")
    assert "spread_soft_bps default -> -2" in first.reason


def test_sync_when_in_line_then_writes_nothing(engine: Engine, settings: Settings) -> None:
    migrate.sync_risk_limits(engine, settings)
    before_rows, before_events = rows(engine), len(events(engine))
    assert migrate.sync_risk_limits(engine, settings).changes == ()
    assert rows(engine) == before_rows and len(events(engine)) == before_events


def test_sync_when_a_setting_changed_then_only_that_limit_with_old_and_new(
    engine: Engine, settings: Settings
) -> None:
    migrate.sync_risk_limits(engine, settings)
    start = len(events(engine))
    changed = with_risk(settings, balanced={"spread_hard_bps": "1.5", "min_score": 55})
    report = migrate.sync_risk_limits(engine, changed, actor="ops", command="run")
    assert [(c.mode, list(c.changes)) for c in report.changes] == [
        (B, ["spread_hard_bps", "min_score"])
    ]
    [event] = events(engine)[start:]
    assert event.actor == "ops" and event.details["command"] == "run"
    assert event.details["changes"] == {"spread_hard_bps": ["2", "1.5"], "min_score": ["50", "55"]}
    assert "spread_hard_bps 2 -> 1.5, min_score 50 -> 55" in event.reason
    table = rows(engine)
    assert table[("balanced", "spread_hard_bps")] == (D("1.5"), "ops")
    assert table[("balanced", "spread_soft_bps")] == (D(0), "perpbot")  # untouched row


def test_sync_when_no_exchange_is_configured_then_table_left_as_it_is(
    engine: Engine, settings: Settings
) -> None:
    bare = settings.model_copy(update={"exchanges": {}})
    report = migrate.sync_risk_limits(engine, bare)
    assert report.skipped is not None and "no exchange configured" in report.skipped
    assert rows(engine) == {} and events(engine) == []


# -- the tick reads them ----------------------------------------------------------------------


def test_tick_when_max_spread_hard_lowered_then_next_tick_holds_with_the_limit_in_context(
    engine: Engine, settings: Settings
) -> None:
    """The job's net cost is about -24.9 bps (25 bps edge, a 0.1 bps book): a hard
    limit of -30 bps holds it; put back, the next re-score admits it (a held job is
    judged again once its score is ``rescore_after`` old: 0 here)."""
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    risk_limits.set_limit(engine, B, "spread_soft_bps", D(-31), actor="ops", reason="tighten")
    risk_limits.set_limit(engine, B, "spread_hard_bps", D(-30), actor="ops", reason="tighten")
    report = tick.run_tick(engine, config())
    assert report.admitted == [] and report.held == {"spread_hard_limit": 1}
    row = job_decision(engine, job_id)
    assert row.status == "pending" and row.decision_code == "spread_hard_limit"
    assert row.decision_context["limit"] == "-30"
    assert D(row.decision_context["value"]) > D(-30)
    risk_limits.set_limit(engine, B, "spread_hard_bps", D(2), actor="ops", reason="loosen")
    put_market(engine)
    assert tick.run_tick(engine, config(rescore_after=timedelta(0))).admitted == [job_id]
    assert statuses(engine) == {job_id: "admitted"}


def test_tick_when_min_score_synced_from_settings_then_next_tick_holds_below_it(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    strict = with_risk(settings, balanced={"min_score": 99})
    migrate.sync_risk_limits(engine, strict)
    report = tick.run_tick(engine, config())
    assert report.held == {"score_below_threshold": 1}
    assert job_decision(engine, job_id).decision_context["min_score"] == "99"


def test_tick_when_a_hand_written_row_breaks_a_rule_then_admits_nothing_and_says_which(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO risk_limits (mode, name, value, updated_by) "
                "VALUES ('aggressive', 'latency_soft_ms', 5000, 'psql')"
            )
        )
    report = tick.run_tick(engine, config())
    assert report.admitted == []
    assert report.skipped is not None
    assert "risk.aggressive.latency_soft_ms: must not exceed latency_hard_ms" in report.skipped
    assert statuses(engine) == {job_id: "pending"}


# -- perpbot risk set ---------------------------------------------------------------------------


def test_risk_set_when_valid_then_one_audited_event_and_the_row(engine: Engine) -> None:
    change = risk_limits.set_limit(
        engine, B, "latency_hard_ms", D(600), actor="ops", reason="venue is slow today"
    )
    assert change is not None and change.diff() == "latency_hard_ms 750 -> 600"
    [event] = events(engine)
    assert (event.actor, event.reason) == ("ops", "venue is slow today")
    assert event.details == {
        "mode": "balanced",
        "changes": {"latency_hard_ms": ["750", "600"]},
        "command": "risk set",
    }
    assert rows(engine) == {("balanced", "latency_hard_ms"): (D(600), "ops")}
    with engine.connect() as conn:
        assert risk_limits.in_force(conn)[B].latency_hard_ms == 600
        assert risk_limits.in_force(conn)[RiskMode.AGGRESSIVE] == LIMITS[RiskMode.AGGRESSIVE]


def test_risk_set_when_weights_change_together_then_one_event_and_the_tick_scores_with_them(
    engine: Engine, settings: Settings
) -> None:
    with pytest.raises(risk_limits.RiskLimitError, match="weight_edge: the weights must sum"):
        risk_limits.set_limit(engine, B, "weight_edge", D("0.45"), actor="ops", reason="r")
    change = risk_limits.set_limits(
        engine, B, {"weight_edge": D("0.45"), "weight_pnl": D(0)}, actor="ops", reason="edge"
    )
    assert change is not None and change.diff() == "weight_edge 0.25 -> 0.45, weight_pnl 0.2 -> 0"
    [event] = events(engine)
    assert event.details["changes"] == {"weight_edge": ["0.25", "0.45"], "weight_pnl": ["0.2", "0"]}
    with engine.connect() as conn:
        assert risk_limits.in_force(conn)[B].weights["edge"] == D("0.45")


def test_risk_set_when_value_already_in_force_then_writes_nothing(engine: Engine) -> None:
    assert risk_limits.set_limit(engine, B, "min_score", D("50.0"), actor="o", reason="r") is None
    assert rows(engine) == {} and events(engine) == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("spread_soft_bps", D(3), "risk.balanced.spread_soft_bps: must not exceed spread_hard_bps"),
        ("spread_hard_bps", D(-1), "risk.balanced.spread_soft_bps: must not exceed"),
        ("min_score", D(101), "risk.balanced.min_score: must be within 0-100"),
        ("latency_hard_ms", D("NaN"), "risk.balanced.latency_hard_ms: must be a finite number"),
        ("volatility_hard", D(0), "risk.balanced.volatility_hard: must be above 0"),
        ("max_spread", D(1), "risk.balanced.max_spread: unknown limit"),
    ],
)
def test_risk_set_when_bad_then_names_the_limit_and_writes_nothing(
    engine: Engine, name: str, value: D, message: str
) -> None:
    with pytest.raises(risk_limits.RiskLimitError) as info:
        risk_limits.set_limit(engine, B, name, value, actor="ops", reason="try")
    assert str(info.value).startswith(message), str(info.value)
    assert rows(engine) == {} and events(engine) == []


def test_risk_set_when_checked_then_against_the_limits_in_force_not_the_defaults(
    engine: Engine,
) -> None:
    risk_limits.set_limit(engine, B, "spread_hard_bps", D(5), actor="ops", reason="loosen")
    risk_limits.set_limit(engine, B, "spread_soft_bps", D(4), actor="ops", reason="loosen")
    with pytest.raises(risk_limits.RiskLimitError, match="must not exceed spread_hard_bps"):
        risk_limits.set_limit(engine, B, "spread_soft_bps", D(6), actor="ops", reason="r")
    assert rows(engine)[("balanced", "spread_soft_bps")][0] == 4


def test_risk_set_without_reason_then_refused_and_nothing_written(engine: Engine) -> None:
    with pytest.raises(ControlError, match="reason"):
        risk_limits.set_limit(engine, B, "min_score", D(60), actor="ops", reason=" ")
    assert rows(engine) == {} and events(engine) == []


# -- the database keeps its own rules ---------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "name", "value", "constraint"),
    [
        ("balanced", "max_spread", "1", "ck_risk_limits_name"),
        ("reckless", "min_score", "1", "ck_risk_limits_mode"),
        ("balanced", "min_score", "NaN", "ck_risk_limits_finite"),
    ],
)
def test_database_when_a_row_breaks_a_rule_then_refused(
    engine: Engine, mode: str, name: str, value: str, constraint: str
) -> None:
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO risk_limits (mode, name, value, updated_by) "
                "VALUES (:mode, :name, CAST(:value AS numeric), 'psql')"
            ),
            {"mode": mode, "name": name, "value": value},
        )


def test_database_accepts_every_limit_name_of_every_mode(engine: Engine) -> None:
    with engine.begin() as conn:
        for mode in RiskMode:
            for name in LIMIT_NAMES:
                conn.execute(
                    text(
                        "INSERT INTO risk_limits (mode, name, value, updated_by) "
                        "VALUES (:m, :n, 1, 'test')"
                    ),
                    {"m": mode.value, "n": name},
                )
    assert len(rows(engine)) == 96
