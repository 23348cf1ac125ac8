"""`perpbot audit`: every check holds on a healthy database and catches its breach."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.services import audit, control, tick
from perpbot_db.settings import Settings
from tests.builders import breaches, config, job, put_market, submit
from workers.venues.adapters import build_adapters
from workers.worker import Worker, WorkerTally


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE exchanges SET equity_usd = 1000 WHERE name = 'okx'",  # a crash in equity
            {(1, "exchange in-flight cap"), (1, "single-job cap"), (1, "tier budget")},
        ),
        (
            "UPDATE capital_reservations SET status = 'released', released_at = now(), "
            "release_reason = 'bug' WHERE job_id = :j",
            {(2, "capital held iff admitted or running")},
        ),
        (
            "UPDATE hedge_jobs SET status = 'pending' WHERE id = :j",  # no event, capital kept
            {(2, "capital held iff admitted or running"), (3, "events form a lifecycle path")},
        ),
        (
            "UPDATE hedge_jobs SET status = 'running', worker_id = 'w', "
            "lease_expires_at = now() WHERE status = 'admitted'",
            {(3, "events form a lifecycle path"), (6, "running jobs in total")},
        ),
        (
            "UPDATE legs SET filled_quantity = quantity, status = 'filled' "
            "WHERE job_id = :j AND leg_index = 0; "
            "UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE id = :j",
            {
                (2, "capital held iff admitted or running"),
                (3, "events form a lifecycle path"),
                (8, "finished job flat or flagged unhedged"),
            },
        ),
        (  # job_events has no foreign key (migration 0005): the audit is the check
            "INSERT INTO job_events (job_id, from_status, to_status, actor, reason) "
            "VALUES (:j + 1000000, NULL, 'pending', 'test', 'ghost')",
            {(3, "event without a job")},
        ),
        (
            "UPDATE legs SET exchange = 'kraken' WHERE job_id = :j AND leg_index = 0",
            {(1, "leg or reservation on an unknown exchange")},
        ),
        (
            "UPDATE capital_reservations SET exchange = 'kraken' "
            "WHERE id = (SELECT min(id) FROM capital_reservations WHERE job_id = :j)",
            {(1, "leg or reservation on an unknown exchange")},
        ),
    ],
)
def test_each_breach_is_reported_by_its_invariant(
    engine: Engine, admitted_job: int, sql: str, expected: set[tuple[int, str]]
) -> None:
    with engine.begin() as conn:
        for statement in sql.split("; "):
            conn.execute(text(statement), {"j": admitted_job})
    assert breaches(engine, limit=1) == expected


# -- execution: counters (4), client order ids (5), loss limit (7) -------------------------

MONEY = (4, "counter money equals booked legs")
COUNTS = (4, "counter job counts equal finish events")
TWICE = (5, "client order id seen twice")
UNRECORDED = (5, "order not recorded before sending")
DISAGREES = (5, "leg disagrees with the exchange")
STARTED = (7, "started while halted or paused")
LOSS = (7, "loss limit reached without a halt")


def fast(settings: Settings, **paper: Any) -> Settings:
    """A zero-latency paper exchange (with ``paper`` faults) and retries due at once."""
    return settings.model_copy(
        update={
            "retry_backoff_s": 0.0,
            "paper": settings.paper.model_copy(update={"latency_ms": 0, **paper}),
        }
    )


def work(engine: Engine, settings: Settings) -> WorkerTally:
    worker = Worker(engine, settings, build_adapters(engine, settings), concurrency=8)
    return worker.run(once=True)


def execute(engine: Engine, sql: str, job_id: int) -> None:
    with engine.begin() as conn:
        for statement in sql.split("; "):
            conn.execute(text(statement), {"j": job_id})


def rows_of(engine: Engine, name: tuple[int, str]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(audit.CHECKS[name])).mappings()]


@pytest.fixture
def worked_job(engine: Engine, settings: Settings, admitted_job: int) -> int:
    """Both admitted jobs run to completion on the paper exchange (all checks hold)."""
    tally = work(engine, fast(settings))
    assert tally.completed == 2
    assert breaches(engine) == set()
    return admitted_job


LEG0 = "(SELECT client_order_id FROM legs WHERE job_id = :j AND leg_index = 0)"
GHOST = (
    "INSERT INTO paper_orders (exchange, client_order_id, symbol, side, quantity, status, "
    "filled_quantity, avg_price) VALUES ('okx', 'ghost1', 'BTC/USDT:USDT', 'buy', 0.01, "
    "'filled', 0.01, 97000)"
)


def _before_claims(action: str, micros: int = 1) -> str:
    """A control event just before the claims of job :j (its admission long before)."""
    return (
        "INSERT INTO control_events (at, actor, action, reason) "
        f"SELECT at - interval '{micros} microseconds', 'op', '{action}', 'test' "
        "FROM job_events WHERE job_id = :j AND to_status = 'running'"
    )


def _yesterday(action: str, hour: int) -> str:
    return (
        "INSERT INTO control_events (at, actor, action, reason) VALUES ("
        f"((now() AT TIME ZONE 'UTC')::date - 1)::timestamp AT TIME ZONE 'UTC' "
        f"+ interval '{hour} hours', "
        f"'op', '{action}', 'test')"
    )


TINY_LIMIT = "UPDATE system_state SET daily_loss_limit_usd = 0.00000001"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # 4: counters against the legs and events behind them
        ("UPDATE daily_counters SET volume_usd = volume_usd + 1 WHERE scope = 'okx'", {MONEY}),
        (
            "UPDATE daily_counters SET fees_usd = fees_usd + 0.00000001 WHERE scope = 'global'",
            {MONEY},
        ),
        ("UPDATE daily_counters SET loss_used_usd = 0 WHERE scope = 'binance'", {MONEY}),
        ("UPDATE daily_counters SET jobs_completed = 1 WHERE scope = 'global'", {COUNTS}),
        ("UPDATE daily_counters SET jobs_failed = 1 WHERE scope = 'okx'", {COUNTS}),
        ("DELETE FROM daily_counters WHERE scope = 'binance'", {MONEY, COUNTS}),
        (
            "INSERT INTO daily_counters (day, scope, fees_usd) VALUES ('2020-01-01', 'bybit', 1)",
            {MONEY},
        ),
        (
            "INSERT INTO daily_counters (day, scope, jobs_failed) "
            "VALUES ('2020-01-01', 'global', 1)",
            {COUNTS},
        ),
        ("INSERT INTO daily_counters (day, scope) VALUES ('2020-01-01', 'bybit')", set()),
        (
            "UPDATE legs SET realized_pnl_usd = realized_pnl_usd - 5 "
            "WHERE job_id = :j AND leg_index = 0",
            {MONEY},
        ),
        ("UPDATE legs SET booked_at = booked_at - interval '2 days' WHERE job_id = :j", {MONEY}),
        (
            "UPDATE legs SET avg_price = avg_price * 2 WHERE job_id = :j AND leg_index = 0",
            {MONEY, DISAGREES},
        ),
        # 5: client order ids against the exchange's book
        (
            "DROP INDEX uq_paper_orders_exchange_client_order_id; "
            "INSERT INTO paper_orders (exchange, client_order_id, symbol, side, quantity, status, "
            "filled_quantity, avg_price, fee_usd) SELECT exchange, client_order_id, symbol, side, "
            f"quantity, status, filled_quantity, avg_price, fee_usd FROM paper_orders "
            f"WHERE client_order_id = {LEG0}",
            {TWICE},
        ),
        (GHOST, {UNRECORDED}),
        (
            "INSERT INTO paper_orders (exchange, client_order_id, status) "
            "VALUES ('okx', 'ghost1', 'cancelled')",  # a tombstone: never an order
            set(),
        ),
        (
            f"UPDATE legs SET sent_at = now() + interval '1 hour' WHERE client_order_id = {LEG0}",
            {UNRECORDED},
        ),
        (
            f"UPDATE paper_orders SET exchange = 'bybit' WHERE client_order_id = {LEG0}",
            {UNRECORDED},
        ),
        (
            f"UPDATE paper_orders SET avg_price = avg_price + 1 WHERE client_order_id = {LEG0}",
            {DISAGREES},
        ),
        (
            "UPDATE paper_orders SET filled_quantity = quantity / 2 "
            f"WHERE client_order_id = {LEG0}",
            {DISAGREES},
        ),
        (f"UPDATE paper_orders SET fee_usd = 0 WHERE client_order_id = {LEG0}", {DISAGREES}),
        # 7: nothing starts once halted or paused; the loss limit halts
        (_before_claims("halt"), {STARTED}),
        (_before_claims("pause"), {STARTED}),
        (f"{_before_claims('pause', 2)}; {_before_claims('resume')}", set()),
        (f"{_before_claims('halt', 2)}; {_before_claims('override_clear_halt')}", set()),
        (f"{_before_claims('halt', 2)}; {_before_claims('risk_mode')}", {STARTED}),
        (TINY_LIMIT, {LOSS}),
        (
            f"{TINY_LIMIT}; INSERT INTO control_events (actor, action, reason) "
            "VALUES ('op', 'halt', 'x')",
            set(),
        ),
        (f"{TINY_LIMIT}; {_yesterday('halt', 1)}; {_yesterday('resume', 2)}", {LOSS}),
        (f"{TINY_LIMIT}; {_yesterday('halt', 1)}", {STARTED}),  # halted all day: a start is wrong
    ],
)
def test_each_execution_breach_is_reported_by_its_invariant(
    engine: Engine, worked_job: int, sql: str, expected: set[tuple[int, str]]
) -> None:
    execute(engine, sql, worked_job)
    assert breaches(engine) == expected


def test_breach_rows_name_what_is_wrong(engine: Engine, worked_job: int) -> None:
    execute(engine, "UPDATE daily_counters SET volume_usd = volume_usd + 1 WHERE scope = 'okx'", 0)
    [row] = rows_of(engine, MONEY)
    assert row["scope"] == "okx"
    assert row["counter_volume_usd"] == row["expected_volume_usd"] + 1
    execute(engine, GHOST, 0)
    [row] = rows_of(engine, UNRECORDED)
    assert row["client_order_id"] == "ghost1" and row["leg_id"] is None
    execute(engine, _before_claims("halt"), worked_job)
    started = rows_of(engine, STARTED)
    assert {(r["from_status"], r["to_status"], r["action"]) for r in started} == {
        ("admitted", "running", "halt")
    }
    assert worked_job in {r["job_id"] for r in started}


def test_an_order_for_a_leg_still_pending_was_not_recorded_as_sent(
    engine: Engine, admitted_job: int
) -> None:
    execute(
        engine,
        "INSERT INTO paper_orders (exchange, client_order_id, symbol, side, quantity, status, "
        "filled_quantity, avg_price) SELECT exchange, client_order_id, symbol, side, quantity, "
        "'filled', quantity, 97000 FROM legs WHERE job_id = :j AND leg_index = 0",
        admitted_job,
    )
    [row] = rows_of(engine, UNRECORDED)
    assert row["job_id"] == admitted_job and row["leg_status"] == "pending"
    assert breaches(engine) == {UNRECORDED}


def test_a_pause_stops_claims_and_the_audit_agrees(
    engine: Engine, settings: Settings, admitted_job: int
) -> None:
    control.pause(engine, actor="op", reason="test")
    assert work(engine, fast(settings)).claimed == 0
    assert breaches(engine) == set()
    control.resume(engine, actor="op", reason="test")
    assert work(engine, fast(settings)).completed == 2
    assert breaches(engine) == set()


def test_a_loss_limit_halt_by_the_worker_satisfies_the_audit(
    engine: Engine, settings: Settings, admitted_job: int
) -> None:
    execute(engine, TINY_LIMIT, 0)
    tally = work(engine, fast(settings))
    assert tally.completed == 2 and tally.halted
    ids = submit(engine, settings, [job(3)])
    report = tick.run_tick(engine, config())
    assert report.admitted == [] and ids
    assert breaches(engine) == set()


# -- end to end: tick and workers until drained, every check holds --------------------


def _open_jobs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM hedge_jobs "
                    "WHERE status IN ('pending', 'admitted', 'running')"
                )
            ).scalar_one()
        )


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


@pytest.mark.parametrize(
    "faults",
    [{}, {"reject_rate": 0.3, "partial_fill_rate": 0.3}],
    ids=["clean", "rejects-and-partials"],
)
def test_ticks_and_workers_leave_no_breach(
    engine: Engine, settings: Settings, faults: dict[str, float]
) -> None:
    put_market(engine)
    pairs = [("binance", "okx"), ("okx", "bybit"), ("bybit", "binance")]
    lines = []
    for i in range(18):
        buy, sell = pairs[i % 3]
        eth = i % 2 == 1
        qty = "0.3" if eth else "0.01"
        lines.append(
            job(
                100 + i,
                symbol="ETH/USDT:USDT" if eth else "BTC/USDT:USDT",
                notional_usd=930 if eth else 970,
                legs=[
                    {"exchange": buy, "side": "buy", "quantity": qty},
                    {"exchange": sell, "side": "sell", "quantity": qty},
                ],
            )
        )
    submit(engine, settings, lines)
    # Let the failure streaks run on: the faults are the point here, not the protections.
    execute(engine, "UPDATE system_state SET max_consecutive_failures = 1000", 0)
    tick_config = config(safe_mode_failures=1000)
    run = fast(settings, **faults)
    for _ in range(60):
        report = tick.run_tick(engine, tick_config)
        tally = work(engine, run)
        assert breaches(engine) == set(), report.summary()
        if not report.admitted and tally.claimed == 0:
            # an unhedged job stops its exchanges until an operator lets them out
            with engine.connect() as conn:
                held = conn.execute(text("SELECT name FROM exchanges WHERE safe_mode")).scalars()
                names = list(held)
            if not names:
                break
            for name in names:
                control.leave_safe_mode(engine, name, actor="op", reason="exposure closed")
    assert _open_jobs(engine) == 0
    assert _count(engine, "SELECT count(*) FROM hedge_jobs WHERE status = 'completed'") > 0
    if faults:
        assert _count(engine, "SELECT count(*) FROM legs WHERE unwinds_leg_id IS NOT NULL") > 0
        assert _count(engine, "SELECT count(*) FROM job_events WHERE to_status = 'failed'") > 0
        assert _count(engine, "SELECT count(*) FROM legs WHERE attempt > 1") > 0


LOSS_BEYOND = (7, "daily loss beyond the limit plus one job's worst case")


@pytest.mark.parametrize(
    ("loss_used", "breached"),
    [
        ("1004.85", False),  # over the 1,000 USD limit by exactly one 970 USD job's 0.5 %
        ("1004.86", True),
        ("999", False),
    ],
)
def test_loss_beyond_the_limit_by_more_than_one_jobs_worst_case_is_a_breach(
    engine: Engine, admitted_job: int, loss_used: str, breached: bool
) -> None:
    execute(
        engine,
        "UPDATE capital_reservations SET status = 'released', released_at = now(), "
        "release_reason = 'test' WHERE job_id = :j; "
        "UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE id = :j; "
        "INSERT INTO daily_counters (day, scope, loss_used_usd, realized_pnl_usd) "
        f"VALUES ((now() AT TIME ZONE 'UTC')::date, 'global', {loss_used}, -{loss_used})",
        admitted_job,
    )
    assert (LOSS_BEYOND in breaches(engine)) is breached
