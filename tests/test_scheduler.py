"""The admission tick against PostgreSQL: capital, limits, protections, audit, indexes."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db import admission, capital, control, market, risk, scheduler
from perpbot_db.decisions import DecisionCode
from perpbot_db.lifecycle import RiskMode, Side, Strategy
from perpbot_db.settings import Settings
from perpbot_db.submit import submit_lines

PRICES = {"BTC/USDT:USDT": Decimal(97000), "ETH/USDT:USDT": Decimal(3100)}
EXCHANGES = ("binance", "okx", "bybit")


def put_market(engine: Engine, *, at: datetime | None = None, **overrides: Any) -> None:
    """Fresh, calm snapshots for every exchange and symbol (overrides apply to all)."""
    snaps = []
    for symbol, price in PRICES.items():
        for exchange in EXCHANGES:
            fields: dict[str, Any] = {
                "exchange": exchange,
                "symbol": symbol,
                "bid": price,
                "ask": price + price / 100_000,
                "last": price,
                "funding_rate": Decimal("0.0001"),
                "volatility": Decimal("0.005"),
                "latency_ms": Decimal(40),
                "observed_at": at,
            }
            fields.update(overrides.get(exchange, {}) if exchange in overrides else {})
            fields.update({k: v for k, v in overrides.items() if k not in EXCHANGES})
            snaps.append(market.SnapshotIn(**fields))
    with engine.begin() as conn:
        market.upsert_snapshots(conn, snaps, at or datetime.now(UTC))


def job(i: int, **overrides: Any) -> str:
    body: dict[str, Any] = {
        "strategy": "arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": 970,
        "expected_edge_bps": 25,
        "expected_pnl_usd": 2.4,
        "legs": [
            {"exchange": "binance", "side": "buy", "quantity": "0.01"},
            {"exchange": "okx", "side": "sell", "quantity": "0.01"},
        ],
        "idempotency_key": f"t-{i}",
    }
    body.update(overrides)
    return json.dumps(body) + "\n"


def submit(engine: Engine, settings: Settings, lines: list[str]) -> list[int]:
    result = submit_lines(engine, lines, settings, datetime.now(UTC))
    assert result.written, result.problems
    return result.job_ids


def config(**overrides: Any) -> scheduler.TickConfig:
    return scheduler.TickConfig(**{"max_concurrent_jobs": 1000, **overrides})


def statuses(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, status FROM hedge_jobs")).all())  # type: ignore[arg-type]


def decision_code(engine: Engine, job_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            text("SELECT decision_code FROM hedge_jobs WHERE id = :j"), {"j": job_id}
        ).scalar_one()


def active_reserved(engine: Engine) -> dict[str, Decimal]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT exchange, sum(amount_usd) FROM capital_reservations "
                "WHERE status = 'active' GROUP BY exchange"
            )
        ).all()
    return {exchange: amount for exchange, amount in rows}


def test_tick_admits_fresh_jobs_reserving_leg_notional_on_each_exchange(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    report = scheduler.run_tick(engine, config())
    assert report.ran and report.admitted == [job_id]
    assert statuses(engine) == {job_id: "admitted"}
    assert active_reserved(engine) == {
        "binance": Decimal("970.00000000"),
        "okx": Decimal("970.00000000"),
    }
    with engine.connect() as conn:
        tiers = set(conn.execute(text("SELECT tier FROM capital_reservations")).scalars())
        events = conn.execute(
            text("SELECT from_status, to_status, actor, code FROM job_events ORDER BY id")
        ).all()
        row = conn.execute(
            text("SELECT final_score, decision_code, admitted_at FROM hedge_jobs")
        ).one()
    assert tiers == {"arbitrage"}
    assert [tuple(e) for e in events] == [
        (None, "pending", "submit", None),
        ("pending", "admitted", "scheduler", "admitted"),
    ]
    assert row.decision_code == "admitted" and row.admitted_at is not None
    assert Decimal(0) <= row.final_score <= Decimal(100)


def test_tick_when_market_data_stale_then_rejected_never_admitted(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, at=datetime.now(UTC) - timedelta(minutes=5))
    [job_id] = submit(engine, settings, [job(1)])
    report = scheduler.run_tick(engine, config())
    assert report.admitted == []
    assert report.rejected == {job_id: "market_data_stale"}
    assert statuses(engine) == {job_id: "rejected"}
    assert active_reserved(engine) == {}


def test_tick_when_market_data_missing_then_rejected(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1, symbol="SOL/USDT:USDT")])
    report = scheduler.run_tick(engine, config())
    assert report.rejected == {job_id: "market_data_missing"}


def test_tick_when_paused_does_nothing(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    control.pause(engine, actor="ops", reason="maintenance")
    report = scheduler.run_tick(engine, config())
    assert report.skipped == "system is paused"
    assert statuses(engine) == {job_id: "pending"}


def test_tick_expires_pending_jobs_past_their_deadline(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    [job_id] = submit(engine, settings, [job(1, deadline=soon)])
    report = scheduler.run_tick(engine, config(), now=datetime.now(UTC) + timedelta(minutes=1))
    assert report.expired == [job_id]
    assert statuses(engine) == {job_id: "expired"}
    with engine.connect() as conn:
        code = conn.execute(
            text("SELECT code FROM job_events WHERE to_status = 'expired'")
        ).scalar_one()
    assert code == "deadline_passed"


def test_global_concurrency_limit_holds_across_ticks(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(6)])
    first = scheduler.run_tick(engine, config(max_concurrent_jobs=2))
    second = scheduler.run_tick(engine, config(max_concurrent_jobs=2))
    assert len(first.admitted) == 2 and second.admitted == []
    assert list(statuses(engine).values()).count("admitted") == 2


def test_exchange_concurrency_limit_holds_jobs_pending_with_the_code(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)  # okx allows 3 concurrent jobs in the test settings
    submit(engine, settings, [job(i) for i in range(5)])
    report = scheduler.run_tick(engine, config())
    assert len(report.admitted) == 3
    assert report.held["exchange_concurrency"] == 2
    with engine.connect() as conn:
        held = (
            conn.execute(
                text(
                    "SELECT decision_context FROM hedge_jobs "
                    "WHERE decision_code = 'exchange_concurrency'"
                )
            )
            .scalars()
            .all()
        )
    assert {h["exchange"] for h in held} == {"okx"}


def test_inflight_capital_cap_is_never_exceeded(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    # bybit: equity 30,000, in-flight cap 30 % = 9,000; each job 0.03 BTC = 2,910 USD.
    legs = [
        {"exchange": "bybit", "side": "buy", "quantity": "0.03"},
        {"exchange": "binance", "side": "sell", "quantity": "0.03"},
    ]
    submit(engine, settings, [job(i, legs=legs, notional_usd=2910) for i in range(5)])
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET max_concurrent_jobs = 100"))
    report = scheduler.run_tick(engine, config())
    assert len(report.admitted) == 3  # 3 x 2,910 = 8,730 <= 9,000 < 4 x 2,910
    assert active_reserved(engine)["bybit"] <= Decimal(9000)
    assert report.held == {"capital_inflight_cap": 2}


def test_single_job_above_cap_is_rejected(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    legs = [
        {"exchange": "bybit", "side": "buy", "quantity": "0.05"},  # 4,850 > 10 % of 30,000
        {"exchange": "binance", "side": "sell", "quantity": "0.05"},
    ]
    [job_id] = submit(engine, settings, [job(1, legs=legs, notional_usd=4850)])
    report = scheduler.run_tick(engine, config(limits=_loose_leverage()))
    assert report.rejected == {job_id: "capital_single_job_cap"}


def _loose_leverage() -> Any:
    from dataclasses import replace

    from perpbot_db import risk

    return {mode: replace(lim, leverage_soft=Decimal(1), leverage_hard=Decimal(1))
            for mode, lim in risk.LIMITS.items()}  # fmt: skip


def test_fast_market_blacklists_symbol_until_cooldown_ends(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, volatility=Decimal("0.5"))
    [job_id] = submit(engine, settings, [job(1)])
    report = scheduler.run_tick(engine, config())
    assert "BTC/USDT:USDT" in report.blacklisted
    assert statuses(engine) == {job_id: "pending"}
    assert decision_code(engine, job_id) == "symbol_blacklisted"
    put_market(engine)  # calm again, but the lock holds until it expires
    scheduler.run_tick(engine, config())
    assert decision_code(engine, job_id) == "symbol_blacklisted"
    assert statuses(engine) == {job_id: "pending"}
    later = datetime.now(UTC) + timedelta(minutes=6)
    put_market(engine, at=later)
    assert scheduler.run_tick(engine, config(), now=later).admitted == [job_id]


def test_exchange_latency_above_hard_limit_enters_safe_mode_until_operator_clears(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, okx={"latency_ms": Decimal(5000)})
    [slow] = submit(engine, settings, [job(1)])
    report = scheduler.run_tick(engine, config())
    assert report.safe_mode_entered == ["okx"]
    assert report.rejected == {slow: "latency_hard_limit"}  # a hard limit rejects
    put_market(engine)
    [job_id] = submit(engine, settings, [job(2)])
    scheduler.run_tick(engine, config())  # scores it; safe mode holds it
    assert scheduler.run_tick(engine, config()).held == {"exchange_safe_mode": 1}
    control.leave_safe_mode(engine, "okx", actor="ops", reason="latency back to normal")
    assert scheduler.run_tick(engine, config()).admitted == [job_id]
    with engine.connect() as conn:
        actions = conn.execute(
            # the template's exchanges arrived through an audited sync: not this test's
            text(
                "SELECT actor, action FROM control_events "
                "WHERE action NOT LIKE 'exchange%' ORDER BY id"
            )
        ).all()
    assert [tuple(a) for a in actions] == [
        ("scheduler", "safe_mode_entered"),
        ("ops", "override_leave_safe_mode"),
    ]


def test_daily_loss_limit_halts_with_the_reason(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    submit(engine, settings, [job(1)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO daily_counters (day, scope, loss_used_usd, realized_pnl_usd) "
                "VALUES (current_date, 'global', 1000, -1000)"
            )
        )
    report = scheduler.run_tick(engine, config())
    assert report.halted is not None and "daily loss limit" in report.halted
    assert report.admitted == []
    with engine.connect() as conn:
        state = conn.execute(text("SELECT status, halt_reason FROM system_state")).one()
    assert state.status == "halted" and "daily loss limit" in state.halt_reason


def test_force_admit_passes_the_score_threshold_but_never_a_hard_limit(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    weak, stale_symbol = submit(
        engine,
        settings,
        [
            job(1, expected_edge_bps=0, expected_pnl_usd=0, risk_score=100),
            job(2, symbol="SOL/USDT:USDT"),
        ],
    )
    first = scheduler.run_tick(engine, config())
    assert weak not in first.admitted
    assert statuses(engine)[weak] == "pending"
    control.force_admit(engine, weak, actor="ops", reason="hedge needed now")
    report = scheduler.run_tick(engine, config())
    assert report.admitted == [weak]
    assert statuses(engine)[stale_symbol] == "rejected"  # no override passes missing data
    with engine.connect() as conn:
        ctx = conn.execute(
            text("SELECT details FROM job_events WHERE job_id = :j AND to_status = 'admitted'"),
            {"j": weak},
        ).scalar_one()
    assert ctx["forced_by"] == "ops"


def test_every_decision_can_be_grouped_by_code_with_one_query(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(5)] + [job(9, symbol="SOL/USDT:USDT")])
    scheduler.run_tick(engine, config())
    with engine.connect() as conn:
        grouped = dict(
            conn.execute(  # type: ignore[arg-type]
                text("SELECT decision_code, count(*) FROM hedge_jobs GROUP BY decision_code")
            ).all()
        )
    assert grouped == {"admitted": 3, "exchange_concurrency": 2, "market_data_missing": 1}


def test_two_schedulers_ticking_at_once_never_over_reserve(
    engine: Engine, settings: Settings, db_url: Any
) -> None:
    from perpbot_db.db import engine_for

    put_market(engine)
    legs = [
        {"exchange": "bybit", "side": "buy", "quantity": "0.01"},
        {"exchange": "binance", "side": "sell", "quantity": "0.01"},
    ]
    submit(engine, settings, [job(i, legs=legs) for i in range(60)])
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET max_concurrent_jobs = 1000"))
    engines = [engine_for(db_url), engine_for(db_url)]
    reports: list[scheduler.TickReport] = []
    barrier = threading.Barrier(2)

    def ticker(eng: Engine) -> None:
        for _ in range(10):
            barrier.wait()
            reports.append(scheduler.run_tick(eng, config(candidates=7)))

    threads = [threading.Thread(target=ticker, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    admitted = [i for r in reports for i in r.admitted]
    assert len(admitted) == len(set(admitted))  # no job admitted twice
    reserved = active_reserved(engine)
    assert reserved["bybit"] <= Decimal("9000")  # 30 % of 30,000
    assert reserved["bybit"] == Decimal("970.00000000") * len(admitted)
    assert any(r.skipped == "another scheduler is ticking" for r in reports) or len(admitted) > 0
    with engine.connect() as conn:
        per_job = conn.execute(
            text(
                "SELECT count(*) FROM capital_reservations WHERE status = 'active' "
                "GROUP BY job_id HAVING count(*) <> 2"
            )
        ).all()
    assert per_job == []


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("candidates", "ix_hedge_jobs_pending_score"),
        ("rescore", "ix_hedge_jobs_pending_scored_at"),
        ("expire", "ix_hedge_jobs_pending_deadline"),
        ("inflight", "ix_hedge_jobs_admitted"),
        ("inflight", "ix_hedge_jobs_running_lease"),
    ],
)
def test_hot_path_queries_use_their_partial_index(
    engine: Engine, settings: Settings, query: str, index: str
) -> None:
    from perpbot_db import queries

    lines = [job(i, idempotency_key=None) for i in range(3000)]
    submit(engine, settings, lines)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = 'completed', finished_at = now(), "
                "final_score = (id % 100) WHERE id % 10 <> 0"
            )
        )
        conn.execute(
            text(
                "UPDATE hedge_jobs SET final_score = id % 97, scored_at = now() "
                "WHERE status = 'pending'"
            )
        )
        conn.execute(text("ANALYZE hedge_jobs"))
        sql = {
            "candidates": queries._JOB_SELECT_CANDIDATES,
            "rescore": queries._JOB_SELECT_FOR_RESCORE,
            "expire": queries._JOB_EXPIRE_OVERDUE,
            "inflight": queries._JOB_INFLIGHT_TOTALS,
        }[query]
        params = {
            "now": datetime.now(UTC),
            "limit": 50,
            "actor": "explain",
            "scored_before": datetime.now(UTC),
        }
        plan = "\n".join(conn.execute(text("EXPLAIN " + sql.text), params).scalars())
        conn.rollback()
    assert index in plan, plan


def test_intraday_drawdown_puts_the_exchange_in_safe_mode(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    with engine.begin() as conn:  # okx: equity 40,000; 5 % = 2,000
        conn.execute(
            text(
                "INSERT INTO daily_counters (day, scope, realized_pnl_usd, loss_used_usd) "
                "VALUES (current_date, 'okx', -2500, 2500)"
            )
        )
    [job_id] = submit(engine, settings, [job(1)])
    report = scheduler.run_tick(engine, config())
    assert report.safe_mode_entered == ["okx"]
    scheduler.run_tick(engine, config())
    assert decision_code(engine, job_id) == "exchange_safe_mode"
    with engine.connect() as conn:
        reason = conn.execute(
            text("SELECT safe_mode_reason FROM exchanges WHERE name = 'okx'")
        ).scalar_one()
    assert "drawdown" in reason


def test_consecutive_failures_on_an_exchange_put_it_in_safe_mode_for_a_cooldown(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET consecutive_failures = 3 WHERE name = 'binance'"))
    [job_id] = submit(engine, settings, [job(1)])
    report = scheduler.run_tick(engine, config())
    assert report.safe_mode_entered == ["binance"]
    assert statuses(engine) == {job_id: "pending"}
    later = datetime.now(UTC) + timedelta(minutes=16)  # the 15-minute cool-down is over
    put_market(engine, at=later)
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET consecutive_failures = 0"))
    after = scheduler.run_tick(engine, config(), now=later)
    assert after.safe_mode_left == ["binance"]
    assert after.admitted == [job_id]


# -- admission in memory: how a tick charges its context -------------------------------


def _pure_context(max_total: int) -> admission.AdmissionContext:
    now = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    names = ("binance", "okx")
    return admission.AdmissionContext(
        mode=RiskMode.BALANCED,
        now=now,
        books={
            name: capital.ExchangeBook(
                exchange=name,
                equity_usd=Decimal(20_000),
                volume_share=Decimal("0.5"),
                arbitrage_share=Decimal("0.3"),
                reserve_share=Decimal("0.2"),
                single_job_cap=Decimal("0.5"),
                inflight_cap=Decimal("0.9"),
                safe_mode=False,
            )
            for name in names
        },
        enabled=frozenset(names),
        max_jobs=dict.fromkeys(names, 100),
        inflight_jobs=dict.fromkeys(names, 0),
        inflight_total=0,
        max_total=max_total,
        max_inflight_notional=dict.fromkeys(names),
        markets={
            (name, "BTC/USDT:USDT"): risk.MarketView(
                exchange=name,
                symbol="BTC/USDT:USDT",
                bid=Decimal(97000),
                ask=Decimal(97001),
                last=Decimal(97000),
                funding_rate=Decimal("0.0001"),
                volatility=Decimal("0.005"),
                latency_ms=Decimal(30),
                observed_at=now,
            )
            for name in names
        },
    )


def _pure_candidate(i: int, quantity: str = "0.01") -> admission.Candidate:
    legs = (
        risk.LegView("binance", Side.BUY, Decimal(quantity)),
        risk.LegView("okx", Side.SELL, Decimal(quantity)),
    )
    return admission.Candidate(
        risk.JobView(
            id=i,
            strategy=Strategy.ARB,
            symbol="BTC/USDT:USDT",
            notional_usd=Decimal(970) * Decimal(quantity) / Decimal("0.01"),
            expected_edge_bps=Decimal(25),
            expected_pnl_usd=Decimal("2.4"),
            legs=legs,
        )
    )


def test_admissions_charge_the_context_as_reserving_each_reservation_would() -> None:
    ctx = _pure_context(max_total=100)
    # 0.05 BTC = 4,850 USD a leg: the arbitrage tier (6,000 USD) holds one, not two
    candidates = [_pure_candidate(i, "0.05" if i % 3 == 0 else "0.01") for i in range(12)]
    verdicts, after = admission.admit_greedily(candidates, ctx)
    outcomes = [v.outcome for v in verdicts]
    assert admission.Outcome.ADMIT in outcomes and admission.Outcome.STAY in outcomes
    books = dict(ctx.books)
    for verdict in verdicts:
        for r in verdict.reservations:
            booked = capital.reserve(books[r.exchange], r.tier, r.amount_usd, strategy=Strategy.ARB)
            assert isinstance(booked, capital.ExchangeBook)
            books[r.exchange] = booked
    assert after.books == books
    assert after.inflight_total == outcomes.count(admission.Outcome.ADMIT)
    assert all(book.reserved_total == 0 for book in ctx.books.values())  # input untouched


def test_admission_reads_candidates_only_while_slots_are_free() -> None:
    read: list[int] = []

    def stream() -> Iterator[admission.Candidate]:
        for i in range(1000):
            read.append(i)
            yield _pure_candidate(i)

    verdicts, after = admission.admit_greedily(stream(), _pure_context(max_total=3))
    assert [v.outcome for v in verdicts] == [admission.Outcome.ADMIT] * 3
    assert after.inflight_total == 3
    assert len(read) <= 4


def test_tick_pauses_the_cyclic_collector_and_leaves_it_as_it_found_it() -> None:
    assert gc.isenabled()
    with scheduler._cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with scheduler._cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # paused by someone else: theirs to resume
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), scheduler._cyclic_gc_paused():
        raise RuntimeError("a failed tick")
    assert gc.isenabled()


# -- the loss budget: invariant 7 kept at admission ------------------------------------


def test_worst_case_loss_rounds_up_and_budget_never_goes_below_zero() -> None:
    assert admission.worst_case_loss(Decimal(970), Decimal("0.005")) == Decimal("4.85")
    assert admission.worst_case_loss(Decimal("0.000000001"), Decimal("0.5")) == Decimal(
        "0.00000001"
    )
    left = admission.loss_budget(
        limit_usd=Decimal(100),
        loss_used_usd=Decimal(40),
        inflight_notional_usd=Decimal(10_000),
        rate=Decimal("0.005"),
    )
    assert left == Decimal(10)  # 100 - 40 lost - 50 that in-flight jobs may still lose
    assert (
        admission.loss_budget(
            limit_usd=Decimal(100),
            loss_used_usd=Decimal(99),
            inflight_notional_usd=Decimal(10_000),
            rate=Decimal("0.005"),
        )
        == 0
    )


def test_admit_when_worst_case_exceeds_what_is_left_of_the_loss_limit_then_held() -> None:
    # 970 USD jobs, 0.5 % worst case = 4.85 USD each: a 10 USD budget holds two
    ctx = replace(_pure_context(max_total=100), loss_budget_usd=Decimal(10))
    verdicts, after = admission.admit_greedily([_pure_candidate(i) for i in range(4)], ctx)
    assert [v.outcome for v in verdicts] == [admission.Outcome.ADMIT] * 2 + [
        admission.Outcome.STAY
    ] * 2
    held = verdicts[2].decision
    assert held.code is DecisionCode.LOSS_BUDGET
    assert held.context == {"worst_case_usd": "4.85000000", "budget_usd": "0.30000000"}
    assert after.loss_budget_usd == Decimal("0.30")


def test_forced_admission_does_not_bypass_the_loss_budget() -> None:
    ctx = replace(_pure_context(max_total=100), loss_budget_usd=Decimal(1))
    forced = replace(_pure_candidate(1), forced_by="ops")
    [verdict], _ = admission.admit_greedily([forced], ctx)
    assert verdict.outcome is admission.Outcome.STAY
    assert verdict.decision.code is DecisionCode.LOSS_BUDGET


def test_tick_budgets_todays_losses_and_in_flight_worst_cases(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    with engine.begin() as conn:  # 20 USD limit, 8 lost: 12 left = two 4.85 USD worst cases
        conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 20"))
        conn.execute(
            text(
                "INSERT INTO daily_counters (day, scope, loss_used_usd, realized_pnl_usd) "
                "VALUES (current_date, 'global', 8, -8)"
            )
        )
    ids = submit(engine, settings, [job(i) for i in range(3)])
    first = scheduler.run_tick(engine, config())
    assert len(first.admitted) == 2
    [held] = set(ids) - set(first.admitted)
    assert decision_code(engine, held) == "loss_budget"
    # the two admitted jobs still count against the budget in the next tick
    assert scheduler.run_tick(engine, config()).admitted == []
    with engine.begin() as conn:  # a higher limit leaves room for a third worst case
        conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 25"))
    assert scheduler.run_tick(engine, config()).admitted == [held]
