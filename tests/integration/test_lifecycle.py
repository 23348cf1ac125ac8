"""The lifecycle on a real database: every edge of both tables is taken by some code path,
nothing outside them is, and every transition statement refuses a row in the wrong status."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from perpbot_db.domain import risk
from perpbot_db.domain.decisions import Decision, DecisionCode
from perpbot_db.domain.lifecycle import (
    FINISHED,
    JOB_EDGES,
    SYSTEM_EDGES,
    JobAction,
    JobStatus,
    SystemAction,
    SystemStatus,
)
from perpbot_db.services import audit, cancel, control, tick
from perpbot_db.services.submit import submit_lines
from perpbot_db.settings import Settings
from perpbot_db.store import system, transitions
from tests.builders import claim, config, expire_leases, job, put_market, submit, work
from workers.executor import order_request
from workers.recovery import Recovery
from workers.venues.adapters import build_adapters

NOW = datetime.now(UTC)
OP = {"actor": "alice", "reason": "lifecycle test"}


def coid(job_id: int, leg: int, attempt: int = 1) -> str:
    return f"pb{job_id}L{leg}A{attempt}"


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def status_of(engine: Engine, job_id: int) -> str:
    return str(scalar(engine, "SELECT status FROM hedge_jobs WHERE id = :j", j=job_id))


def loose_leverage() -> Any:
    return {
        mode: replace(lim, leverage_soft=Decimal(1), leverage_hard=Decimal(1))
        for mode, lim in risk.LIMITS.items()
    }


# -- (a) every edge taken, nothing outside the tables -------------------------------------


def test_every_edge_of_both_tables_is_taken_by_some_code_path_and_no_other_edge(
    engine: Engine, fast: Settings
) -> None:
    # expire: a job whose deadline passes before it is admitted
    put_market(engine)
    deadline = datetime.now(UTC) + timedelta(minutes=1)
    [late] = submit(engine, fast, [job(0, deadline=deadline.isoformat())])
    report = tick.run_tick(engine, config(), now=deadline + timedelta(seconds=1))
    assert report.expired == [late]

    # recover_complete and recover_fail: two workers die after their claims, one with both
    # orders out, one with one; recovery asks the exchange and ends their attempts
    put_market(engine)
    dead_done, dead_half = submit(engine, fast, [job(1), job(2)])
    assert sorted(tick.run_tick(engine, config()).admitted) == [dead_done, dead_half]
    claimed = {j.id: j for j in claim(engine, "worker:dead")}
    adapters = build_adapters(engine, fast)
    adapters["binance"].create_orders([order_request(claimed[dead_done].legs[0])])
    adapters["okx"].create_orders([order_request(claimed[dead_done].legs[1])])
    adapters["binance"].create_orders([order_request(claimed[dead_half].legs[0])])
    expire_leases(engine)
    recovery = Recovery(engine, fast, adapters)
    try:
        assert recovery.run_once().recovered == [dead_done, dead_half]
    finally:
        recovery.close()
    assert status_of(engine, dead_done) == "completed"
    assert status_of(engine, dead_half) == "failed"

    # admit, reject, cancel (admitted), claim, complete, fail, retry
    put_market(engine)
    other = [  # okx runs three jobs at most
        {"exchange": "binance", "side": "buy", "quantity": "0.01"},
        {"exchange": "bybit", "side": "sell", "quantity": "0.01"},
    ]
    big = [
        {"exchange": "bybit", "side": "buy", "quantity": "0.05"},  # above the single-job cap
        {"exchange": "binance", "side": "sell", "quantity": "0.05"},
    ]
    ok, failing, retried, dropped, too_big = submit(
        engine,
        fast,
        [job(3), job(4), job(5), job(6, legs=other), job(7, legs=big, notional_usd=4850)],
    )
    with engine.begin() as conn:
        conn.execute(text("UPDATE hedge_jobs SET max_attempts = 1 WHERE id = :j"), {"j": failing})
    report = tick.run_tick(engine, config(limits=loose_leverage()))
    assert sorted(report.admitted) == [ok, failing, retried, dropped], report.held
    assert report.rejected == {too_big: "capital_single_job_cap"}
    assert cancel.cancel(engine, dropped, **OP) is JobStatus.ADMITTED
    faults = {coid(j, leg): "reject" for j in (failing, retried) for leg in (0, 1)}
    worker = work(engine, fast, faults)
    assert worker.tally.completed == 1
    assert [status_of(engine, j) for j in (ok, failing, retried)] == [
        "completed",
        "failed",
        "pending",
    ]
    # cancel (pending): the retried job waits for its backoff
    assert cancel.cancel(engine, retried, **OP) is JobStatus.PENDING

    # the system: every edge of its table, through the control actions
    steps = [
        (control.pause, SystemStatus.PAUSED),  # running -> paused
        (control.halt, SystemStatus.HALTED),  # paused -> halted
        (control.clear_halt, SystemStatus.MANUAL_OVERRIDE),
        (control.pause, SystemStatus.PAUSED),  # manual_override -> paused
        (control.resume, SystemStatus.RUNNING),
        (control.halt, SystemStatus.HALTED),  # running -> halted
        (control.clear_halt, SystemStatus.MANUAL_OVERRIDE),
        (control.halt, SystemStatus.HALTED),  # manual_override -> halted
    ]
    for act, status in steps:
        act(engine, **OP)
        assert scalar(engine, "SELECT status FROM system_state") == status.value, act

    with engine.connect() as conn:
        job_seen = set(
            conn.execute(text("SELECT DISTINCT action, from_status, to_status FROM job_events"))
        )
        system_seen = set(
            conn.execute(
                text(
                    "SELECT DISTINCT action, details ->> 'previous', details ->> 'to' "
                    "FROM control_events WHERE action = ANY(:actions)"
                ),
                {"actions": [a.value for a in SystemAction]},
            )
        )
        breaches = audit.run_audit(conn, max_concurrent_jobs=1000)
    job_table = {
        (e.action.value, None if s is None else s.value, e.target.value)
        for e in JOB_EDGES.values()
        for s in e.sources
    }
    system_table = {
        (e.action.value, s.value, e.target.value) for e in SYSTEM_EDGES.values() for s in e.sources
    }
    assert job_table - job_seen == set(), "edges no code path took"
    assert job_seen - job_table == set(), "edges outside the table"
    assert system_table - system_seen == set(), "system edges no code path took"
    assert system_seen - system_table == set(), "system edges outside the table"
    assert breaches == []


def test_a_retry_writes_both_edges_in_order_and_a_recovery_names_its_own(
    engine: Engine, fast: Settings
) -> None:
    put_market(engine)
    worked, recovered = submit(engine, fast, [job(1), job(2)])
    assert sorted(tick.run_tick(engine, config()).admitted) == [worked, recovered]
    claim(engine, "worker:dead", limit=1)  # the first admitted: `worked`'s id is lower
    expire_leases(engine)
    recovery = Recovery(engine, fast, build_adapters(engine, fast))
    try:
        assert recovery.run_once().recovered == [worked]  # nothing was sent: a retry
    finally:
        recovery.close()
    work(engine, fast, {coid(recovered, 0): "reject", coid(recovered, 1): "reject"})

    def history(job_id: int) -> list[tuple[str, str | None, str]]:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT action, from_status, to_status FROM job_events "
                    "WHERE job_id = :j ORDER BY id"
                ),
                {"j": job_id},
            ).all()
        return [(a, b, c) for a, b, c in rows]

    head = [("submit", None, "pending"), ("admit", "pending", "admitted")]
    claimed = [("claim", "admitted", "running")]
    assert history(worked) == [
        *head,
        *claimed,
        ("recover_fail", "running", "failed"),
        ("retry", "failed", "pending"),
    ]
    assert history(recovered) == [
        *head,
        *claimed,
        ("fail", "running", "failed"),
        ("retry", "failed", "pending"),
    ]


# -- (c) each statement refuses a row in the wrong status ----------------------------------


def make_job(conn: Connection, status: str, **columns: Any) -> int:
    """A job in ``status`` written directly (set-up only), with its two legs."""
    extra: dict[str, Any] = {"deadline": NOW + timedelta(hours=1)}
    if status in {s.value for s in FINISHED}:
        extra["finished_at"] = NOW
    if status == "running":
        extra.update(worker_id="worker:t", lease_expires_at=NOW + timedelta(minutes=5))
    cols = {
        "strategy": "arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": 970,
        "expected_volume_usd": 1940,
        "status": status,
        **extra,
        **columns,
    }
    names = ", ".join(cols)
    values = ", ".join(f":{k}" for k in cols)
    job_id = int(
        conn.execute(
            text(f"INSERT INTO hedge_jobs ({names}) VALUES ({values}) RETURNING id"), cols
        ).scalar_one()
    )
    for leg, (exchange, side) in enumerate((("binance", "buy"), ("okx", "sell"))):
        conn.execute(
            text(
                "INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, "
                "client_order_id) VALUES (:j, :i, :e, 'BTC/USDT:USDT', :s, 0.01, :c)"
            ),
            {"j": job_id, "i": leg, "e": exchange, "s": side, "c": coid(job_id, leg)},
        )
    return job_id


def events_of(conn: Connection, job_id: int) -> int:
    return int(
        conn.execute(
            text("SELECT count(*) FROM job_events WHERE job_id = :j"), {"j": job_id}
        ).scalar_one()
    )


def outcome(job_id: int) -> list[transitions.Outcome]:
    return [transitions.Outcome(job_id, Decision(DecisionCode.ADMITTED))]


@pytest.mark.parametrize(
    ("action", "status"),
    [
        (JobAction.ADMIT, "admitted"),
        (JobAction.ADMIT, "expired"),
        (JobAction.REJECT, "running"),
        (JobAction.REJECT, "cancelled"),
    ],
)
def test_move_leaves_a_job_in_another_status_alone(
    engine: Engine, action: JobAction, status: str
) -> None:
    with engine.begin() as conn:
        job_id = make_job(conn, status)
        moved = transitions.move(conn, action, outcome(job_id), actor="t", reason="x", now=NOW)
        assert moved == [] and events_of(conn, job_id) == 0
        assert (
            conn.execute(
                text("SELECT status FROM hedge_jobs WHERE id = :j"), {"j": job_id}
            ).scalar_one()
            == status
        )


@pytest.mark.parametrize("status", ["pending", "admitted"])
def test_cancel_is_guarded_by_the_status_it_names(engine: Engine, status: str) -> None:
    other = JobStatus.ADMITTED if status == "pending" else JobStatus.PENDING
    with engine.begin() as conn:
        job_id = make_job(conn, status)
        moved = transitions.move(
            conn, JobAction.CANCEL, outcome(job_id), actor="t", reason="x", now=NOW,
            from_status=other,
        )  # fmt: skip
        assert moved == [] and events_of(conn, job_id) == 0


def test_move_refuses_an_edge_outside_the_lifecycle(engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(ValueError, match="not a lifecycle edge"):
            transitions.move(
                conn, JobAction.CANCEL, outcome(1), actor="t", reason="x", now=NOW,
                from_status=JobStatus.RUNNING,
            )  # fmt: skip
        with pytest.raises(ValueError, match="say which"):
            transitions.move(conn, JobAction.CANCEL, outcome(1), actor="t", reason="x", now=NOW)
        with pytest.raises(ValueError, match="its own statement"):
            transitions.move(conn, JobAction.CLAIM, outcome(1), actor="t", reason="x", now=NOW)


def test_expire_leaves_an_admitted_job_past_its_deadline_alone(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = make_job(conn, "admitted", deadline=NOW - timedelta(hours=1))
        assert transitions.expire(conn, now=NOW, actor="t") == []
        assert events_of(conn, job_id) == 0


def test_claim_takes_no_job_that_is_not_admitted(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = [make_job(conn, s) for s in ("pending", "running", "completed", "cancelled")]
        assert transitions.claim(conn, worker_id="worker:t", limit=10, lease_s=30) == []
        assert [events_of(conn, j) for j in ids] == [0, 0, 0, 0]


def test_claim_takes_nothing_while_the_system_stops_starts(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = make_job(conn, "admitted", admitted_at=NOW)
        conn.execute(text("UPDATE system_state SET status = 'paused'"))
        assert transitions.claim(conn, worker_id="worker:t", limit=10, lease_s=30) == []
        assert events_of(conn, job_id) == 0


def ending(job_id: int, to_status: str) -> transitions.AttemptEnd:
    return transitions.AttemptEnd(
        id=job_id,
        to_status=to_status,
        code="filled",
        context="{}",
        result="{}",
        unhedged=False,
        backoff_s=1.0,
    )


@pytest.mark.parametrize("recovering", [False, True], ids=["worker", "recovery"])
@pytest.mark.parametrize("status", ["admitted", "pending", "completed"])
def test_finish_leaves_a_job_that_is_not_running_alone(
    engine: Engine, status: str, recovering: bool
) -> None:
    with engine.begin() as conn:
        job_id = make_job(conn, status, worker_id="worker:t")
        moved = transitions.finish(
            conn,
            worker_id="worker:t",
            ends=[ending(job_id, "completed")],
            legs=[],
            next_legs=[],
            recovering=recovering,
        )
        assert moved == [] and events_of(conn, job_id) == 0


def test_finish_refuses_an_end_that_is_not_an_edge_from_running(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = make_job(conn, "running", worker_id="worker:t")
        with pytest.raises(ValueError, match="to_status"):
            transitions.finish(
                conn,
                worker_id="worker:t",
                ends=[ending(job_id, "cancelled")],
                legs=[],
                next_legs=[],
            )
        assert events_of(conn, job_id) == 0


def test_submit_writes_nothing_for_a_job_that_exists(engine: Engine, settings: Settings) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    again = submit_lines(engine, [job(1)], settings, datetime.now(UTC))
    assert again.inserted == 0 and again.existing == 1
    with engine.connect() as conn:
        assert events_of(conn, job_id) == 1


def set_status(conn: Connection, status: SystemStatus) -> None:
    """Set-up only: the control row in ``status`` (a halt has its reason)."""
    conn.execute(
        text("UPDATE system_state SET status = :s, halt_reason = :r"),
        {"s": status.value, "r": "set-up" if status is SystemStatus.HALTED else None},
    )


@pytest.mark.parametrize("action", list(SystemAction))
def test_every_system_statement_refuses_a_status_it_does_not_start_from(
    engine: Engine, action: SystemAction
) -> None:
    edge = SYSTEM_EDGES[action]
    for status in set(SystemStatus) - set(edge.sources):
        with engine.begin() as conn:
            set_status(conn, status)
            before = conn.execute(text("SELECT count(*) FROM control_events")).scalar_one()
            halt_reason = "x" if edge.target is SystemStatus.HALTED else None
            moved = transitions.system_move(
                conn, action, actor="t", reason="x", halt_reason=halt_reason
            )
            assert moved is None
            after = conn.execute(text("SELECT count(*) FROM control_events")).scalar_one()
            now = conn.execute(text("SELECT status FROM system_state")).scalar_one()
            assert (after, now) == (before, status.value), status


@pytest.mark.parametrize("action", list(SystemAction))
def test_every_system_statement_moves_from_each_of_its_sources_with_its_event(
    engine: Engine, action: SystemAction
) -> None:
    edge = SYSTEM_EDGES[action]
    for source in edge.sources:
        with engine.begin() as conn:
            set_status(conn, source)
            halting = edge.target is SystemStatus.HALTED
            previous = transitions.system_move(
                conn,
                action,
                actor="t",
                reason="why",
                halt_reason="why" if halting else None,
                details={"k": 1},
            )
            assert previous == source.value
            row = conn.execute(
                text("SELECT action, reason, details FROM control_events ORDER BY id DESC LIMIT 1")
            ).one()
            assert (row.action, row.reason) == (action.value, "why")
            assert row.details["previous"] == source.value
            assert row.details["to"] == edge.target.value and row.details["k"] == 1
            state = system.get(conn)
            assert state.status == edge.target.value


def test_control_actions_write_their_event_in_the_statement_that_moves(engine: Engine) -> None:
    control.halt(engine, actor="alice", reason="manual stop")
    assert not control.halt(engine, actor="alice", reason="again")  # already halted: nothing
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, details FROM control_events WHERE action = 'halt'")
        ).all()
        state = system.get(conn)
    assert [(a, d["previous"]) for a, d in rows] == [("halt", "running")]
    assert state.halt_reason == "manual stop"
    control.clear_halt(engine, actor="alice", reason="checked")
    with engine.connect() as conn:
        details = conn.execute(
            text("SELECT details FROM control_events WHERE action = 'override_clear_halt'")
        ).scalar_one()
    assert json.loads(json.dumps(details))["halt_reason"] == "manual stop"


def test_a_halt_needs_its_reason_and_nothing_else_keeps_one(engine: Engine) -> None:
    with engine.begin() as conn:
        before = conn.execute(text("SELECT count(*) FROM control_events")).scalar_one()
        with pytest.raises(ValueError, match="halt_reason"):
            transitions.system_move(conn, SystemAction.HALT, actor="t", reason="x")
        with pytest.raises(ValueError, match="halt_reason"):
            transitions.system_move(
                conn, SystemAction.PAUSE, actor="t", reason="x", halt_reason="y"
            )
        assert conn.execute(text("SELECT count(*) FROM control_events")).scalar_one() == before
