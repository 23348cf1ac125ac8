"""The admission tick against PostgreSQL: capital, limits, protections, audit, indexes."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.domain import admission, capital, risk
from perpbot_db.domain.decisions import DecisionCode
from perpbot_db.domain.lifecycle import RiskMode, Side, Strategy
from perpbot_db.services import control, protect, tick
from perpbot_db.settings import Settings
from perpbot_db.store import exchanges, jobs, pending, system, ticks, transitions
from tests.builders import (
    active_reserved,
    config,
    job,
    put_market,
    statuses,
    submit,
)


def decision_code(engine: Engine, job_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(  # type: ignore[no-any-return]
            text("SELECT decision_code FROM hedge_jobs WHERE id = :j"), {"j": job_id}
        ).scalar_one()


def test_tick_admits_fresh_jobs_reserving_leg_notional_on_each_exchange(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    report = tick.run_tick(engine, config())
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


def test_tick_when_market_data_stale_then_held_pending_and_admitted_once_fresh(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, at=datetime.now(UTC) - timedelta(minutes=5))
    [job_id] = submit(engine, settings, [job(1)])
    report = tick.run_tick(engine, config())
    assert report.admitted == [] and report.rejected == {}
    assert report.held == {"market_data_stale": 1}
    assert statuses(engine) == {job_id: "pending"}
    assert decision_code(engine, job_id) == "market_data_stale"
    assert active_reserved(engine) == {}
    put_market(engine)  # the feed caught up
    assert tick.run_tick(engine, config()).admitted == [job_id]


def test_feed_gap_holds_the_whole_queue_and_rejects_nothing(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, at=datetime.now(UTC) - timedelta(seconds=30))  # 30 s behind
    ids = submit(engine, settings, [job(i) for i in range(300)])
    report = tick.run_tick(engine, config(rescore_batch=1000))
    assert report.rejected == {} and report.admitted == []
    assert report.held == {"market_data_stale": 300}
    assert set(statuses(engine).values()) == {"pending"}
    put_market(engine)
    admitted = tick.run_tick(engine, config(max_concurrent_jobs=50)).admitted
    assert len(admitted) == 3  # okx allows 3 at once: the queue goes on where it stood
    assert set(admitted) <= set(ids)


def test_tick_when_market_data_missing_then_held(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1, symbol="SOL/USDT:USDT")])
    report = tick.run_tick(engine, config())
    assert report.rejected == {} and report.held == {"market_data_missing": 1}
    assert statuses(engine) == {job_id: "pending"}


def test_held_job_past_its_deadline_expires_with_the_last_reason_it_was_held(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    deadline = datetime.now(UTC) + timedelta(minutes=1)
    [job_id] = submit(
        engine, settings, [job(1, symbol="SOL/USDT:USDT", deadline=deadline.isoformat())]
    )
    tick.run_tick(engine, config())  # held: no SOL market data
    report = tick.run_tick(engine, config(), now=deadline + timedelta(seconds=1))
    assert report.expired == [job_id]
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, decision_code, decision_context FROM hedge_jobs WHERE id = :j"),
            {"j": job_id},
        ).one()
        event = conn.execute(
            text(
                "SELECT reason, code, details FROM job_events "
                "WHERE job_id = :j AND to_status = 'expired'"
            ),
            {"j": job_id},
        ).one()
    assert row.status == "expired" and row.decision_code == "deadline_passed"
    assert row.decision_context["held_code"] == "market_data_missing"
    assert row.decision_context["held_context"]["symbol"] == "SOL/USDT:USDT"
    assert event.reason == "deadline passed, held: market_data_missing"
    assert event.code == "deadline_passed" and event.details == row.decision_context


def test_tick_when_paused_does_nothing(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    control.pause(engine, actor="ops", reason="maintenance")
    report = tick.run_tick(engine, config())
    assert report.skipped == "system is paused"
    assert statuses(engine) == {job_id: "pending"}


def test_tick_expires_pending_jobs_past_their_deadline(engine: Engine, settings: Settings) -> None:
    put_market(engine)
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    [job_id] = submit(engine, settings, [job(1, deadline=soon)])
    report = tick.run_tick(engine, config(), now=datetime.now(UTC) + timedelta(minutes=1))
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
    first = tick.run_tick(engine, config(max_concurrent_jobs=2))
    second = tick.run_tick(engine, config(max_concurrent_jobs=2))
    assert len(first.admitted) == 2 and second.admitted == []
    assert list(statuses(engine).values()).count("admitted") == 2


def test_exchange_concurrency_limit_holds_jobs_pending_with_the_code(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)  # okx allows 3 concurrent jobs in the test settings
    submit(engine, settings, [job(i) for i in range(5)])
    report = tick.run_tick(engine, config())
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
    report = tick.run_tick(engine, config())
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
    report = tick.run_tick(engine, config(limits=_loose_leverage()))
    assert report.rejected == {job_id: "capital_single_job_cap"}


def _loose_leverage() -> Any:
    from dataclasses import replace

    from perpbot_db.domain import risk

    return {mode: replace(lim, leverage_soft=Decimal(1), leverage_hard=Decimal(1))
            for mode, lim in risk.LIMITS.items()}  # fmt: skip


def test_fast_market_blacklists_symbol_until_cooldown_ends(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, volatility=Decimal("0.5"))
    patient = settings.model_copy(update={"max_pending_s": 3600.0})  # outlives the cool-down
    [job_id] = submit(engine, patient, [job(1)])
    report = tick.run_tick(engine, config())
    assert "BTC/USDT:USDT" in report.blacklisted
    assert statuses(engine) == {job_id: "pending"}
    assert decision_code(engine, job_id) == "symbol_blacklisted"
    put_market(engine)  # calm again, but the lock holds until it expires
    tick.run_tick(engine, config())
    assert decision_code(engine, job_id) == "symbol_blacklisted"
    assert statuses(engine) == {job_id: "pending"}
    later = datetime.now(UTC) + timedelta(minutes=6)
    put_market(engine, at=later)
    assert tick.run_tick(engine, config(), now=later).admitted == [job_id]


def test_exchange_latency_above_hard_limit_enters_safe_mode_until_operator_clears(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine, okx={"latency_ms": Decimal(5000)})
    [slow] = submit(engine, settings, [job(1)])
    report = tick.run_tick(engine, config())
    assert report.safe_mode_entered == ["okx"]
    assert report.rejected == {}  # the market may lift it: held, never rejected
    assert report.held == {"exchange_safe_mode": 1}
    put_market(engine)
    [job_id] = submit(engine, settings, [job(2)])
    assert tick.run_tick(engine, config()).held == {"exchange_safe_mode": 1}
    assert statuses(engine) == {slow: "pending", job_id: "pending"}
    control.leave_safe_mode(engine, "okx", actor="ops", reason="latency back to normal")
    assert sorted(tick.run_tick(engine, config()).admitted) == [slow, job_id]
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
    report = tick.run_tick(engine, config())
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
    first = tick.run_tick(engine, config())
    assert weak not in first.admitted
    assert statuses(engine)[weak] == "pending"
    control.force_admit(engine, weak, actor="ops", reason="hedge needed now")
    control.force_admit(engine, stale_symbol, actor="ops", reason="try it anyway")
    report = tick.run_tick(engine, config())
    assert report.admitted == [weak]
    assert statuses(engine)[stale_symbol] == "pending"  # no override passes missing data
    assert decision_code(engine, stale_symbol) == "market_data_missing"
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
    tick.run_tick(engine, config())
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
    from perpbot_db.runtime.db import engine_for

    put_market(engine)
    legs = [
        {"exchange": "bybit", "side": "buy", "quantity": "0.01"},
        {"exchange": "binance", "side": "sell", "quantity": "0.01"},
    ]
    submit(engine, settings, [job(i, legs=legs) for i in range(60)])
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET max_concurrent_jobs = 1000"))
    engines = [engine_for(db_url), engine_for(db_url)]
    reports: list[tick.TickReport] = []
    barrier = threading.Barrier(2)

    def ticker(eng: Engine) -> None:
        for _ in range(10):
            barrier.wait()
            reports.append(tick.run_tick(eng, config(candidates=7)))

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
        ("rescore", "ix_hedge_jobs_pending_scored_at_id"),
        ("expire", "ix_hedge_jobs_pending_deadline"),
        ("inflight", "ix_hedge_jobs_admitted"),
        ("inflight", "ix_hedge_jobs_running_lease"),
    ],
)
def test_hot_path_queries_use_their_partial_index(
    engine: Engine, settings: Settings, query: str, index: str
) -> None:

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
            "candidates": pending.SELECT_CANDIDATES,
            "rescore": pending.SELECT_FOR_RESCORE,
            "expire": transitions._EXPIRE,
            "inflight": jobs.INFLIGHT_TOTALS,
        }[query]
        params = {
            "now": datetime.now(UTC),
            "limit": 50,
            "actor": "explain",
            "scored_before": datetime.now(UTC),
            "after_score": "50",
            "after_id": 1,
            "held_codes": ["score_below_threshold"],
            "markets": ["binance BTC/USDT:USDT", "okx BTC/USDT:USDT"],
            "reducing_markets": [],
            "reducing_strategies": ["hedge_rebalance"],
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
    report = tick.run_tick(engine, config())
    assert report.safe_mode_entered == ["okx"]
    tick.run_tick(engine, config())
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
    patient = settings.model_copy(update={"max_pending_s": 3600.0})  # outlives the cool-down
    [job_id] = submit(engine, patient, [job(1)])
    report = tick.run_tick(engine, config())
    assert report.safe_mode_entered == ["binance"]
    assert statuses(engine) == {job_id: "pending"}
    later = datetime.now(UTC) + timedelta(minutes=16)  # the 15-minute cool-down is over
    put_market(engine, at=later)
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET consecutive_failures = 0"))
        # the leader's protection expiry, the one place where safe mode ends
        assert protect.expire(conn, later, actor="scheduler").safe_mode_left == ["binance"]
    after = tick.run_tick(engine, config(), now=later)
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


def test_tick_leaves_the_cyclic_collector_running(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process-wide gc.disable() in a threaded service: a worker thread's cycles
    are collected while a tick runs."""
    seen: list[bool] = []
    run_once = protect.run_once

    def spy(*args: Any, **kwargs: Any) -> protect.ProtectReport:
        seen.append(gc.isenabled())
        return run_once(*args, **kwargs)

    monkeypatch.setattr(protect, "run_once", spy)
    put_market(engine)
    submit(engine, settings, [job(1)])
    assert gc.isenabled()
    assert tick.run_tick(engine, config()).ran
    assert seen == [True]
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
    first = tick.run_tick(engine, config())
    assert len(first.admitted) == 2
    [held] = set(ids) - set(first.admitted)
    assert decision_code(engine, held) == "loss_budget"
    # the two admitted jobs still count against the budget in the next tick
    assert tick.run_tick(engine, config()).admitted == []
    with engine.begin() as conn:  # a higher limit leaves room for a third worst case
        conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 25"))
    assert tick.run_tick(engine, config()).admitted == [held]


# -- a held job never blocks one that could run ------------------------------------------

BYBIT_BINANCE = [
    {"exchange": "bybit", "side": "buy", "quantity": "0.01"},
    {"exchange": "binance", "side": "sell", "quantity": "0.01"},
]
BINANCE_OKX = [
    {"exchange": "binance", "side": "buy", "quantity": "0.01"},
    {"exchange": "okx", "side": "sell", "quantity": "0.01"},
]


def roomy_exchanges(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET max_concurrent_jobs = 10000"))


def test_safe_mode_on_one_exchange_never_starves_the_others_at_10000_pending(
    engine: Engine, settings: Settings
) -> None:
    roomy_exchanges(engine)
    blocked = submit(  # better scores, all touching bybit
        engine,
        settings,
        [job(i, legs=BYBIT_BINANCE, expected_edge_bps=60) for i in range(9_900)],
    )
    small = [dict(leg, quantity="0.001") for leg in BINANCE_OKX]  # capital never binds
    free = submit(
        engine,
        settings,
        [job(20_000 + i, legs=small, notional_usd=97) for i in range(100)],
    )
    with engine.begin() as conn:
        exchanges.enter_safe_mode(conn, name="bybit", reason="test", until=None)
    put_market(engine)  # fresh for the tick, however long the submission took
    report = tick.run_tick(engine, config(max_concurrent_jobs=50, rescore_batch=10_000))
    assert len(report.admitted) == 50
    assert set(report.admitted) <= set(free)
    assert report.held["exchange_safe_mode"] == len(blocked)
    with engine.connect() as conn:
        best = conn.execute(
            text("SELECT min(final_score) FROM hedge_jobs WHERE id = ANY(:ids)"),
            {"ids": blocked},
        ).scalar_one()
        runner_up = conn.execute(
            text("SELECT max(final_score) FROM hedge_jobs WHERE id = ANY(:ids)"), {"ids": free}
        ).scalar_one()
    assert best > runner_up  # the blocked jobs were ahead in the queue


def test_window_pages_past_jobs_held_by_capital_until_the_slots_are_filled(
    engine: Engine, settings: Settings
) -> None:
    roomy_exchanges(engine)
    big_legs = [dict(leg, quantity="0.04") for leg in BINANCE_OKX]  # 3,880 USD a leg
    big = submit(
        engine,
        settings,
        [job(i, legs=big_legs, notional_usd=3880, expected_edge_bps=60) for i in range(300)],
    )
    small_legs = [dict(leg, quantity="0.001") for leg in BYBIT_BINANCE]
    small = submit(
        engine, settings, [job(1000 + i, legs=small_legs, notional_usd=97) for i in range(10)]
    )
    put_market(engine)
    report = tick.run_tick(engine, config(max_concurrent_jobs=50, rescore_batch=1000))
    admitted_big = [j for j in report.admitted if j in big]
    assert len(admitted_big) == 3  # okx's 30 % in-flight cap (12,000) holds the rest
    assert sorted(j for j in report.admitted if j not in big) == sorted(small)


def test_jobs_held_for_their_own_hard_limit_leave_the_window_until_rescored(
    engine: Engine, settings: Settings
) -> None:
    def market() -> None:  # fresh before every tick: a slow submission must not age it
        # binance funding of 10 bps per 8 h: buying there pays 9 bps net, beyond balanced's 5.
        put_market(engine, binance={"funding_rate": Decimal("0.001")})

    market()
    roomy_exchanges(engine)
    given = {
        "risk_score": 0,
        "latency_score": 100,
        "vol_score": 100,
        "funding_score": 100,
        "liquidity_score": 100,
    }
    adverse = submit(  # the best scores in the queue, and every one beyond a hard limit
        engine,
        settings,
        [
            job(i, legs=BINANCE_OKX, expected_edge_bps=60, expected_pnl_usd=50, **given)
            for i in range(3000)
        ],
    )
    receiving = [dict(leg, side="sell" if leg["side"] == "buy" else "buy") for leg in BINANCE_OKX]
    good = submit(engine, settings, [job(5000 + i, legs=receiving) for i in range(10)])
    market()
    first = tick.run_tick(engine, config(candidates=100, rescore_batch=0))
    assert first.admitted == []  # nothing scored yet: no candidate at all
    market()
    report = tick.run_tick(engine, config(candidates=100, rescore_batch=5000))
    assert report.held["funding_hard_limit"] == len(adverse)
    assert sorted(report.admitted) == sorted(good)
    market()
    assert tick.run_tick(engine, config(candidates=100)).admitted == []
    with engine.connect() as conn:
        codes = set(
            conn.execute(
                text("SELECT decision_code FROM hedge_jobs WHERE id = ANY(:ids)"), {"ids": adverse}
            ).scalars()
        )
    assert codes == {"funding_hard_limit"}  # held, never rejected: the market may turn


def _window_job(i: int, exchange: str, strategy: Strategy) -> admission.Candidate:
    legs = (
        risk.LegView(exchange, Side.BUY, Decimal("0.01")),
        risk.LegView("okx", Side.SELL, Decimal("0.01")),
    )
    return admission.Candidate(
        risk.JobView(
            id=i,
            strategy=strategy,
            symbol="BTC/USDT:USDT",
            notional_usd=Decimal(970),
            expected_edge_bps=Decimal(25),
            expected_pnl_usd=Decimal("2.4"),
            legs=legs,
        )
    )


def _in_window(candidate: admission.Candidate, window: admission.Window) -> bool:
    job_ = candidate.job
    allowed = set(window.markets)
    if job_.strategy.value in window.reducing_strategies:
        allowed |= set(window.reducing_markets)
    return all(admission.market_key(leg.exchange, job_.symbol) in allowed for leg in job_.legs)


BLOCKS = {
    "open": {},
    "disabled": {"enabled": frozenset({"okx"})},
    "blacklisted_exchange": {"blacklisted_exchanges": frozenset({"binance"})},
    "blacklisted_symbol": {"blacklisted_symbols": frozenset({"BTC/USDT:USDT"})},
    "full": {"inflight_jobs": {"binance": 100, "okx": 0}},
    "safe_mode": {"safe_mode": True},
    "stale": {"market": {"observed_at": datetime(2026, 11, 21, 7, 0, tzinfo=UTC)}},
    "slow": {"market": {"latency_ms": Decimal(5000)}},
    "fast": {"market": {"volatility": Decimal("0.2")}},
    "no_volatility": {"market": {"volatility": None}},
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("strategy", list(Strategy))
def test_candidate_window_leaves_out_exactly_jobs_that_judge_would_only_hold(
    block: str, strategy: Strategy
) -> None:
    ctx = _pure_context(max_total=10)
    change = dict(BLOCKS[block])
    if change.pop("safe_mode", False):
        ctx.books["binance"] = replace(ctx.books["binance"], safe_mode=True)
    market_change = change.pop("market", None)
    if market_change is not None:
        key = ("binance", "BTC/USDT:USDT")
        ctx.markets = {**ctx.markets, key: replace(ctx.markets[key], **market_change)}
    ctx = replace(ctx, **change)
    candidate = _window_job(1, "binance", strategy)
    verdict = admission.judge(candidate, ctx)
    inside = _in_window(candidate, admission.candidate_window(ctx))
    if verdict.outcome is admission.Outcome.ADMIT:
        assert inside, f"{block}: the window would starve an admissible job"
    if not inside:
        assert verdict.outcome is admission.Outcome.STAY, (block, verdict.decision)
    expected_inside = block == "open" or (
        block == "safe_mode" and strategy in capital.RISK_REDUCING
    )
    assert inside is expected_inside, block


def test_candidates_and_rescore_read_their_index_in_order_at_scale(engine: Engine) -> None:
    """50,000 fresh jobs (never scored: all the same ``scored_at``).  The window's leg check
    must stay a per-row filter on the score index: as a NOT EXISTS the planner turned it
    into an anti-join over every pending job's legs and a sort (10x slower at 1,000,000
    pending).  The re-score must take its batch straight off its index, ties included,
    not sort every fresh job first."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                WITH j AS (
                    INSERT INTO hedge_jobs (strategy, symbol, notional_usd,
                                            expected_volume_usd, final_score, deadline)
                    SELECT 'arb', 'BTC/USDT:USDT', 970, 1940, g % 100, now() + interval '1 h'
                    FROM generate_series(1, 50000) g RETURNING id
                )
                INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity,
                                  client_order_id)
                SELECT id, k, (ARRAY['binance', 'okx'])[k + 1], 'BTC/USDT:USDT',
                       (ARRAY['buy', 'sell'])[k + 1], 0.01, 'pb' || id || 'L' || k || 'A1'
                FROM j CROSS JOIN generate_series(0, 1) k
                """
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE hedge_jobs"))
        conn.execute(text("ANALYZE legs"))
    with engine.connect() as conn:
        params = {
            "now": datetime.now(UTC),
            "limit": 2000,
            "after_score": None,
            "after_id": None,
            "held_codes": ["score_below_threshold"],
            "markets": ["binance BTC/USDT:USDT", "okx BTC/USDT:USDT"],
            "reducing_markets": [],
            "reducing_strategies": ["hedge_rebalance"],
        }
        plan = "\n".join(
            conn.execute(text("EXPLAIN " + pending.SELECT_CANDIDATES.text), params).scalars()
        )
        rescore = "\n".join(
            conn.execute(
                text("EXPLAIN " + pending.SELECT_FOR_RESCORE.text),
                {"limit": 1000, "scored_before": datetime.now(UTC)},
            ).scalars()
        )
    assert "Index Scan using ix_hedge_jobs_pending_score" in plan, plan
    assert "Seq Scan" not in plan and "Anti Join" not in plan, plan
    assert "Index Scan using ix_hedge_jobs_pending_scored_at_id" in rescore, rescore
    assert "Sort" not in rescore, rescore


def test_every_tick_that_ran_is_recorded_under_its_scheduler(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    first = tick.run_tick(engine, config(), scheduler="scheduler:a")
    control.pause(engine, actor="ops", reason="maintenance")
    paused = tick.run_tick(engine, config(), scheduler="scheduler:a")
    tick.run_tick(engine, config(), scheduler="scheduler:b")
    with engine.connect() as conn:
        rows = {row.scheduler: row for row in ticks.latest(conn)}
        clock = conn.execute(text("SELECT now()")).scalar_one()
    assert first.admitted == [job_id] and paused.skipped == "system is paused"
    a = rows["scheduler:a"]
    assert a.ticks == 2 and a.skipped == "system is paused"  # the last tick's
    assert (a.admitted, a.rejected, a.expired) == (0, 0, 0)
    assert first.duration_s is not None and a.duration_ms >= 0
    assert a.last_tick_at <= clock and rows["scheduler:b"].ticks == 1
    assert list(rows) == ["scheduler:b", "scheduler:a"]  # the most recent first


def test_a_tick_that_finds_another_ticking_records_nothing(
    engine: Engine, settings: Settings
) -> None:
    with engine.begin() as conn:
        assert system.tick_try_lock(conn)  # another scheduler holds the tick
        report = tick.run_tick(engine, config(), scheduler="scheduler:late")
    assert report.skipped == "another scheduler is ticking" and not report.ran
    with engine.connect() as conn:
        assert ticks.latest(conn) == []
