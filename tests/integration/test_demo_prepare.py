"""The demo's preparation: the scenario's loss limit set and an earlier halt cleared, audited."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, text

from perpbot_db.runtime.demo import LOSS_LIMIT_USD, DemoPlan, prepare
from perpbot_db.services import control


def control_actions(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT actor, action FROM control_events ORDER BY id"))
        return [(r.actor, r.action) for r in rows]


def system_row(engine: Engine) -> tuple[str, Decimal]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, daily_loss_limit_usd FROM system_state")).one()
        return row.status, row.daily_loss_limit_usd


def test_prepare_a_halted_system_runs_again_under_the_stress_limit_every_step_audited(
    engine: Engine,
) -> None:
    control.halt(engine, actor="earlier", reason="daily loss limit: an earlier demo")
    before = len(control_actions(engine))
    prepare(engine, DemoPlan(scenario="stress"))
    assert system_row(engine) == ("running", LOSS_LIMIT_USD["stress"])
    assert control_actions(engine)[before:] == [
        ("perpbot demo", "override_clear_halt"),
        ("perpbot demo", "pause"),
        ("perpbot demo", "resume"),
        ("perpbot demo", "daily_loss_limit"),
    ]


def test_prepare_a_running_system_with_the_limit_in_place_writes_nothing(engine: Engine) -> None:
    prepare(engine, DemoPlan(scenario="calm"))  # the default limit is the calm one
    before = control_actions(engine)
    prepare(engine, DemoPlan(scenario="calm"))
    assert control_actions(engine) == before
    assert system_row(engine) == ("running", LOSS_LIMIT_USD["calm"])


def test_a_daily_loss_limit_not_above_zero_is_refused_naming_it(engine: Engine) -> None:
    with pytest.raises(control.ControlError, match="daily_loss_limit_usd: must be above 0"):
        control.set_daily_loss_limit(engine, Decimal(0), actor="ops", reason="why")
    assert system_row(engine)[1] == LOSS_LIMIT_USD["calm"]
