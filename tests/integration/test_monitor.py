"""The monitoring state against a real database: its numbers are the tables', its reads are
bounded (statement_timeout, EXPLAIN), and its cache builds once for many callers."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from psycopg import Connection
from sqlalchemy import Engine, text

from perpbot_db.domain import risk
from perpbot_db.domain.health import ReasonCode, Verdict
from perpbot_db.domain.protections import Lock, ProtectionCode, Scope
from perpbot_db.services import control, tick
from perpbot_db.services import monitor as svc
from perpbot_db.settings import Settings
from perpbot_db.store import locks, workers
from perpbot_db.store import monitor as reads
from tests.builders import (
    HANG_S,
    admitted,
    claim,
    config,
    job,
    put_market,
    submit,
    wait_for,
    work,
)

CONFIG = svc.MonitorConfig()
#: A job above the single-job cap (4,850 > 10 % of bybit's 30,000): rejected at once under
#: :data:`LOOSE` (leverage limits that let the capital check speak first).
BIG: dict[str, Any] = {
    "notional_usd": 4850,
    "legs": [
        {"exchange": "bybit", "side": "buy", "quantity": "0.05"},
        {"exchange": "binance", "side": "sell", "quantity": "0.05"},
    ],
}
LOOSE = {
    mode: replace(limits, leverage_soft=Decimal(1), leverage_hard=Decimal(1))
    for mode, limits in risk.LIMITS.items()
}


@contextlib.contextmanager
def raw(engine: Engine, *, autocommit: bool = True) -> Iterator[Connection[Any]]:
    """A bare driver connection, as the read commands and the console hold one."""
    pooled = engine.raw_connection()
    try:
        conn = pooled.driver_connection
        assert isinstance(conn, Connection)
        conn.autocommit = autocommit
        yield conn
    finally:
        pooled.invalidate()  # never back to the pool: its settings were ours


@pytest.fixture
def read(engine: Engine) -> Iterator[Connection[Any]]:
    with raw(engine) as conn:
        yield conn


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def register_worker(engine: Engine, worker_id: str = "w-monitor") -> None:
    with engine.begin() as conn:
        workers.register(conn, worker_id=worker_id, host="here", pid=1, concurrency=4)


@contextlib.contextmanager
def leading(engine: Engine, name: str = "scheduler:test:1:abc") -> Iterator[str]:
    """Hold the leader lock as a scheduler's leader connection does."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name})
        assert locks.leader_try_acquire(conn)
        yield name


def lock(engine: Engine, code: ProtectionCode, scope: Scope, target: str, **ctx: str) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        locks.protection_lock_insert(
            conn,
            Lock(scope, target, code, f"{code.value} on {target}", now + timedelta(hours=1), ctx),
            created_by="test",
            now=now,
        )


# -- the sections hold what the tables hold ----------------------------------------------------


def test_state_after_submit_tick_claim_and_work_matches_the_tables(
    engine: Engine, fast: Settings, read: Connection[Any]
) -> None:
    done = admitted(engine, fast, 2)
    work(engine, fast)  # both complete: counters booked, worker stopped
    more = submit(engine, fast, [job(10), job(11), job(12, symbol="SOL/USDT:USDT")])
    report = tick.run_tick(engine, config())
    assert sorted(report.admitted) == more[:2] and report.held == {"market_data_missing": 1}
    [running] = claim(engine, "w-claimer", limit=1)
    register_worker(engine)

    state = svc.build_state(read, CONFIG)

    assert state.version == 1
    g = state.global_
    with engine.connect() as conn:
        day = conn.execute(
            text(
                "SELECT volume_usd, fees_usd, realized_pnl_usd, loss_used_usd, jobs_completed, "
                "jobs_failed FROM daily_counters WHERE scope = 'global' "
                "AND day = (now() AT TIME ZONE 'UTC')::date"
            )
        ).one()
        limit = conn.execute(text("SELECT daily_loss_limit_usd FROM system_state")).scalar_one()
    assert (g.volume_usd, g.fees_usd, g.realized_pnl_usd, g.loss_used_usd) == tuple(day[:4])
    assert (g.jobs_completed, g.jobs_failed) == (day[4], day[5]) == (2, 0)
    assert g.volume_usd > 0 and g.fees_usd > 0
    assert g.status == "running" and g.risk_mode == "balanced" and not g.override.active
    assert g.daily_loss_limit_usd == limit
    assert g.loss_used_ratio == g.loss_used_usd / limit

    jobs = state.jobs
    live = {
        s: scalar(engine, "SELECT count(*) FROM hedge_jobs WHERE status = :s", s=s)
        for s in ("pending", "admitted", "running")
    }
    assert (jobs.pending, jobs.admitted, jobs.running) == tuple(live.values()) == (1, 1, 1)
    assert (jobs.completed_today, jobs.failed_today) == (2, 0)
    [rj] = jobs.running_jobs
    assert rj.id == running.id and rj.worker_id == "w-claimer" and rj.attempt == 1
    assert rj.age_s >= 0 and jobs.running_next is None
    assert [(leg.exchange, leg.side, leg.quantity, leg.status) for leg in rj.legs] == [
        ("binance", "buy", Decimal("0.01"), "sent"),
        ("okx", "sell", Decimal("0.01"), "sent"),
    ]

    with engine.connect() as conn:
        held = {
            (ex, tier): amount
            for ex, tier, amount in conn.execute(
                text(
                    "SELECT exchange, tier, sum(amount_usd) FROM capital_reservations "
                    "WHERE status = 'active' GROUP BY 1, 2"
                )
            )
        }
        equity = dict(conn.execute(text("SELECT name, equity_usd FROM exchanges")).all())
    assert held  # the admitted and the running job hold capital
    for cap in state.capital:
        for t in cap.tiers:
            assert t.used_usd == held.get((cap.exchange, t.tier.value), 0)
            assert t.budget_usd == equity[cap.exchange] * t.share
            assert Decimal(0) <= t.available_usd <= t.budget_usd
        assert cap.inflight_usd == sum(t.used_usd for t in cap.tiers)
        assert cap.reserve_usd == equity[cap.exchange] * Decimal("0.2")
        assert cap.inflight_limit_usd == equity[cap.exchange] * Decimal("0.3")
        assert cap.breaches == []
    by_name = {e.name: e for e in state.exchanges}
    assert {n: (e.concurrent_jobs, e.running_jobs) for n, e in by_name.items()} == {
        "binance": (2, 1),
        "bybit": (0, 0),
        "okx": (2, 1),
    }
    assert by_name["okx"].max_concurrent_jobs == 3
    assert by_name["okx"].latency_ms == Decimal(40)
    assert by_name["okx"].funding_rates == {
        "BTC/USDT:USDT": Decimal("0.0001"),
        "ETH/USDT:USDT": Decimal("0.0001"),
    }
    assert by_name["binance"].today.volume_usd > 0 and by_name["bybit"].today.volume_usd == 0

    assert [(h.code, h.jobs, h.example_job_id) for h in state.risk.holds] == [
        ("market_data_missing", 1, more[2])
    ]
    assert "symbol=SOL/USDT:USDT" in state.risk.holds[0].example
    assert len(state.market) == 6 and not any(m.stale for m in state.market)
    assert all(0 <= m.age_s < 3600 for m in state.market)

    p = state.processes
    assert p.live_workers == 1 and [w.id for w in p.workers] == ["w-monitor"]
    assert p.leader is None and p.last_tick_at is not None and p.tick_age_s is not None
    assert state.health.verdict is Verdict.DOWN
    assert [r.code for r in state.health.reasons] == [ReasonCode.NO_SCHEDULER_LEADER]
    assert done  # the first two jobs are the completed ones
    assert state.built_at.utcoffset() == timedelta(0) and state.build_ms >= 0
    assert all(m.observed_at.utcoffset() == timedelta(0) for m in state.market)


def test_state_serialises_as_versioned_json_with_money_as_strings(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    admitted(engine, settings, 1)
    body = json.loads(svc.build_state(read, CONFIG).to_json())
    assert body["version"] == 1
    assert set(body) == {
        "version",
        "built_at",
        "build_ms",
        "global",
        "capital",
        "exchanges",
        "jobs",
        "risk",
        "market",
        "processes",
        "health",
    }
    assert isinstance(body["global"]["daily_loss_limit_usd"], str)
    assert isinstance(body["capital"][0]["tiers"][0]["used_usd"], str)
    assert body["health"]["verdict"] in {"ok", "degraded", "down"}
    assert body["exchanges"][0]["open_positions"] is None
    assert svc.build_state(read, CONFIG).to_dict()["global"]["status"] == "running"


def test_with_a_leader_a_live_worker_and_fresh_ticks_the_verdict_is_ok(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(1, symbol="SOL/USDT:USDT")])  # held: a tick scored it
    tick.run_tick(engine, config())
    register_worker(engine)
    with leading(engine) as name:
        state = svc.build_state(read, CONFIG)
        with engine.connect() as conn:
            assert locks.leader_current(conn) == name
    assert state.processes.leader == name
    # put_market covers binance, okx and bybit: none is missing, none stale
    assert state.health.verdict is Verdict.OK, state.health.reasons


def test_a_tick_older_than_n_intervals_makes_the_verdict_down_and_none_ever_too(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    register_worker(engine)
    with leading(engine):
        never = svc.build_state(read, CONFIG)
        tick.run_tick(engine, config(), scheduler="scheduler:test:1:abc")
        fresh = svc.build_state(read, CONFIG)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE scheduler_ticks SET last_tick_at = now() - interval '1 hour'")
            )
        stale = svc.build_state(read, CONFIG)
    assert [r.code for r in never.health.reasons] == [ReasonCode.TICK_STALE]
    assert never.processes.last_tick_at is None and never.processes.schedulers == []
    assert fresh.health.verdict is Verdict.OK, fresh.health.reasons
    [s] = fresh.processes.schedulers
    assert (s.scheduler, s.ticks, s.skipped) == ("scheduler:test:1:abc", 1, None)
    assert s.last_tick_at == fresh.processes.last_tick_at and s.duration_ms >= 0
    assert [r.code for r in stale.health.reasons] == [ReasonCode.TICK_STALE]
    assert stale.health.verdict is Verdict.DOWN
    assert stale.processes.tick_age_s is not None and stale.processes.tick_age_s >= 3600


def test_denials_and_failures_of_the_last_hour_by_code_match_the_events(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    ids = submit(engine, settings, [job(1, **BIG), job(2, symbol="SOL/USDT:USDT")])
    first = tick.run_tick(engine, config(limits=LOOSE))
    assert first.rejected == {ids[0]: "capital_single_job_cap"}
    with engine.begin() as conn:  # its deadline passes while it is held
        conn.execute(
            text("UPDATE hedge_jobs SET deadline = now() - interval '1 s' WHERE id = :id"),
            {"id": ids[1]},
        )
    assert tick.run_tick(engine, config()).expired == [ids[1]]

    state = svc.build_state(read, CONFIG)

    assert [
        (d.action, d.code, d.held_code, d.events, d.example_job_id) for d in state.risk.denials
    ] == [
        ("expire", "deadline_passed", "market_data_missing", 1, ids[1]),
        ("reject", "capital_single_job_cap", None, 1, ids[0]),
    ]
    reject = state.risk.denials[1]
    assert reject.example.startswith("can never pass")
    assert "limit_usd=3000" in reject.example
    in_window = scalar(
        engine,
        "SELECT count(*) FROM job_events WHERE at >= now() - interval '1 hour' "
        "AND action IN ('reject', 'expire')",
    )
    assert sum(d.events for d in state.risk.denials) == in_window == 2
    assert state.risk.failures == [] and state.risk.unhedged_ends == 0
    assert state.risk.holds == []  # nothing is pending any more
    assert 3600 <= state.risk.window_s < 3660  # from the minute an hour ago


def test_events_older_than_the_window_are_not_counted(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(1, **BIG)])
    assert tick.run_tick(engine, config(limits=LOOSE)).rejected
    assert svc.build_state(read, CONFIG).risk.denials
    later = scalar(engine, "SELECT statement_timestamp()") + timedelta(hours=2)
    assert svc.build_state(read, CONFIG, now=later).risk.denials == []


def test_locks_fast_markets_delays_and_unhedged_exposure_show_in_risk_and_health(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine, okx={"latency_ms": Decimal(5000)})
    lock(engine, ProtectionCode.FAST_MARKET, Scope.SYMBOL, "ETH/USDT:USDT", exchange="bybit",
         volatility="0.2", limit="0.05")  # fmt: skip
    lock(engine, ProtectionCode.UNHEDGED_EXPOSURE, Scope.EXCHANGE, "binance", jobs="7",
         exposure_usd="970.5", limit_usd="0")  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE exchanges SET safe_mode = true, safe_mode_reason = 'unhedged job 7' "
                "WHERE name = 'binance'"
            )
        )
    state = svc.build_state(read, CONFIG)
    risk = state.risk
    assert [(lk.code, lk.target) for lk in risk.locks] == [
        ("unhedged_exposure", "binance"),
        ("fast_market", "ETH/USDT:USDT"),
    ]
    assert all(3500 < lk.expires_in_s <= 3600 for lk in risk.locks)
    [fast] = risk.fast_markets
    assert (fast.symbol, fast.exchange, fast.volatility, fast.locked_until is not None) == (
        "ETH/USDT:USDT",
        "bybit",
        "0.2",
        True,
    )
    [slow] = risk.delayed_exchanges
    assert (slow.exchange, Decimal(slow.latency_ms or "0"), slow.locked_until) == (
        "okx",
        Decimal(5000),
        None,
    )
    assert slow.limit_ms == state.exchanges[0].latency_hard_ms
    codes = {r.code: r.text for r in state.health.reasons}
    assert "binance 970.5 USD (job 7)" in codes[ReasonCode.UNHEDGED_EXPOSURE]
    assert codes[ReasonCode.EXCHANGE_SAFE_MODE] == "binance in safe mode: unhedged job 7"
    by_name = {e.name: e for e in state.exchanges}
    assert by_name["binance"].safe_mode and by_name["binance"].safe_mode_reason == "unhedged job 7"


def test_halt_and_override_are_shown_with_who_and_why(
    engine: Engine, read: Connection[Any]
) -> None:
    control.halt(engine, actor="alice", reason="exchange incident")
    halted = svc.build_state(read, CONFIG)
    assert halted.global_.status == "halted" and halted.risk.halted
    assert halted.global_.halt_reason == "exchange incident"
    assert halted.health.reasons[0].code is ReasonCode.HALTED
    assert halted.health.reasons[0].text == "halted: exchange incident"

    control.clear_halt(engine, actor="bob", reason="incident over, watching")
    state = svc.build_state(read, CONFIG)
    o = state.global_.override
    assert state.global_.status == "manual_override" and state.risk.override == o
    assert (o.active, o.by, o.reason) == (True, "bob", "incident over, watching")
    assert ReasonCode.MANUAL_OVERRIDE in [r.code for r in state.health.reasons]


def test_stale_market_data_is_flagged_as_admission_judges_it(
    engine: Engine, read: Connection[Any]
) -> None:
    put_market(engine, at=datetime.now(UTC) - timedelta(minutes=10))
    state = svc.build_state(read, CONFIG)
    assert all(m.stale and m.age_s >= 600 for m in state.market)
    assert state.risk.max_market_age_s == 10
    stale = [r for r in state.health.reasons if r.code is ReasonCode.MARKET_DATA_STALE]
    assert [r.text.split(":")[0] for r in stale] == ["binance", "bybit", "okx"]
    assert all(e.stale_symbols == ["BTC/USDT:USDT", "ETH/USDT:USDT"] for e in state.exchanges)


def test_an_unusable_volatility_is_shown_as_a_fast_market_not_a_failed_build(
    engine: Engine, read: Connection[Any]
) -> None:
    put_market(engine)
    with engine.begin() as conn:  # a hand-written row: NaN passes the CHECK (NaN >= 0)
        conn.execute(
            text(
                "UPDATE market_snapshots SET volatility = 'NaN' "
                "WHERE exchange = 'okx' AND symbol = 'ETH/USDT:USDT'"
            )
        )
    state = svc.build_state(read, CONFIG)
    [fast] = state.risk.fast_markets
    assert (fast.symbol, fast.exchange, fast.volatility) == ("ETH/USDT:USDT", "okx", "NaN")
    assert '"volatility":"NaN"' in state.to_json()


# -- the running jobs are keyset-paginated ------------------------------------------------------


def test_running_jobs_page_by_start_then_id_and_every_job_comes_once(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    legs = [
        {"exchange": "binance", "side": "buy", "quantity": "0.01"},
        {"exchange": "bybit", "side": "sell", "quantity": "0.01"},
    ]  # okx takes 3 jobs at a time, these two take 5
    ids = admitted(engine, settings, 5, legs=legs)
    assert len(claim(engine, "w-pages", limit=5)) == 5
    small = svc.MonitorConfig(running_limit=2)
    state = svc.build_state(read, small)
    seen = [j.id for j in state.jobs.running_jobs]
    cursor = state.jobs.running_next
    while cursor is not None:
        page = svc.running_page(read, small, after=cursor)
        seen += [j.id for j in page.jobs]
        assert all(len(j.legs) == 2 for j in page.jobs)
        cursor = page.next
    assert seen == sorted(ids) and state.jobs.running == 5


def test_store_rows_are_frozen_with_slots_and_statements_typed() -> None:
    """As tests/pure/test_store_types.py asks of the entity modules."""
    import dataclasses
    import inspect

    row_types = [
        cls
        for _, cls in inspect.getmembers(reads, inspect.isclass)
        if cls.__module__ == reads.__name__ and dataclasses.is_dataclass(cls)
    ]
    assert len(row_types) > 15
    for cls in row_types:
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        assert "__slots__" in cls.__dict__, cls
    for name, fn in inspect.getmembers(reads, inspect.isfunction):
        if fn.__module__ == reads.__name__ and not name.startswith("_"):
            hints = inspect.get_annotations(fn)
            assert "return" in hints and len(hints) == len(inspect.signature(fn).parameters) + 1


def test_a_half_cursor_is_refused() -> None:
    with pytest.raises(ValueError, match="after"):
        reads.running_jobs(None, reads.RunningPage(datetime.now(UTC), None, 10))  # type: ignore[arg-type]


# -- statement_timeout ------------------------------------------------------------------------


def test_every_read_of_a_snapshot_runs_under_its_statement_timeout(
    read: Connection[Any],
) -> None:
    before = reads.statement_timeout(read)
    with reads.snapshot(read, reads.SnapshotParams(statement_timeout_ms=1234)):
        assert reads.statement_timeout(read) == "1234ms"
    assert reads.statement_timeout(read) == before  # SET LOCAL: gone with the snapshot


def test_a_slow_read_is_cancelled_by_the_timeout(read: Connection[Any]) -> None:
    with (
        pytest.raises(svc.MonitorTimeout, match="statement_timeout 200 ms"),
        reads.snapshot(read, reads.SnapshotParams(statement_timeout_ms=200)),
    ):
        read.execute("SELECT pg_sleep(%s)", (HANG_S,))
    assert read.execute("SELECT 1").fetchone() == (1,)  # the connection is still usable


def test_a_build_blocked_by_a_lock_is_cut_by_the_timeout_and_the_cache_says_why(
    engine: Engine, read: Connection[Any]
) -> None:
    with engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE system_state IN ACCESS EXCLUSIVE MODE"))
        with pytest.raises(svc.MonitorTimeout):
            svc.build_state(read, svc.MonitorConfig(statement_timeout_ms=200))
        cache = svc.StateCache(
            lambda: svc.build_state(read, svc.MonitorConfig(statement_timeout_ms=200)),
            interval_s=60,
        )
        with pytest.raises(svc.StateUnavailable, match="statement_timeout"):
            cache.get()
        with pytest.raises(svc.StateUnavailable):  # remembered for the interval: no new build
            cache.get()
        assert cache.builds == 1 and cache.last_good() is None
        blocker.rollback()
    assert svc.build_state(read, CONFIG).global_.status == "running"


def test_events_cut_by_the_timeout_leave_the_rest_of_the_state_standing(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    admitted(engine, settings, 1)
    quick = svc.MonitorConfig(statement_timeout_ms=200)
    with engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE job_events IN ACCESS EXCLUSIVE MODE"))
        state = svc.build_state(read, quick)
        tally = svc.EventTally(quick.events_window)
        kept = svc.build_state(read, quick, tally=tally)
        blocker.rollback()
    for s in (state, kept):
        assert s.jobs.admitted == 1 and s.risk.denials == [] and s.risk.window_s == 0
        assert s.risk.events_problem is not None
        assert "ran past the statement_timeout" in s.risk.events_problem
    again = svc.build_state(read, quick, tally=tally)  # the tally was left as it was
    assert again.risk.events_problem is None and again.risk.window_s > 0


def test_a_snapshot_inside_an_open_transaction_uses_a_savepoint_and_leaves_no_trace(
    engine: Engine,
) -> None:
    with raw(engine, autocommit=False) as conn:
        conn.execute("SELECT 1")  # the read commands' connection: a transaction is open
        state = svc.build_state(conn, svc.MonitorConfig(statement_timeout_ms=4321))
        assert state.global_.status == "running"
        assert reads.statement_timeout(conn) == "0"
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.rollback()


# -- the cache ----------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when told, and counts who read it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        self._mutex = threading.Lock()

    def __call__(self) -> float:
        with self._mutex:
            self.reads += 1
            return self.now


def test_cache_builds_once_for_n_concurrent_callers_and_again_after_the_interval(
    engine: Engine, settings: Settings
) -> None:
    """Before any state exists, N concurrent callers wait for one build; once it is past
    the interval, every caller gets the last state at once while one rebuild runs in the
    background, and the rebuilt state is what callers get next."""
    admitted(engine, settings, 1)
    n = 8
    clock = FakeClock()
    builds: list[int] = []
    release = threading.Event()
    real = svc.state_builder(lambda: raw(engine), CONFIG)  # as the console builds it

    def build() -> svc.MonitoringState:
        builds.append(1)
        if len(builds) == 2:  # the rebuild: held until every caller has had its answer
            assert release.wait(timeout=HANG_S)
        return real()

    cache = svc.StateCache(build, interval_s=1.0, clock=clock)
    barrier = threading.Barrier(n)
    got: list[svc.MonitoringState] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            barrier.wait(timeout=HANG_S)
            got.append(cache.get())
        except BaseException as exc:
            errors.append(exc)

    def callers() -> None:
        threads = [threading.Thread(target=caller) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=HANG_S)

    callers()  # no state yet: they wait for the one build
    assert errors == [] and len(got) == n and len(builds) == 1 and cache.builds == 1
    first = got[0]
    assert all(state is first for state in got)
    assert cache.get() is first and len(builds) == 1  # fresh: no build, no query

    clock.now = 1.0  # the interval has passed
    got.clear()
    callers()  # none waits for the rebuild: each gets the last state at once
    assert errors == [] and len(got) == n and all(state is first for state in got)
    assert cache.builds == 2  # one rebuild started, whatever the number of callers
    release.set()
    assert wait_for(lambda: cache.peek() is not first, timeout=HANG_S)
    fresh = cache.get()
    assert fresh is not first and len(builds) == 2 and cache.last_good() is fresh


def test_cache_makes_the_first_caller_wait_for_a_fresh_state_after_a_long_quiet(
    engine: Engine, settings: Settings
) -> None:
    """Past ``max_stale_s`` (nobody asked for a while) the last state is not served: the
    caller waits for a fresh one; between the interval and that bound it is served at
    once while a rebuild runs."""
    admitted(engine, settings, 1)
    clock = FakeClock()
    real = svc.state_builder(lambda: raw(engine), CONFIG)
    cache = svc.StateCache(real, interval_s=1.0, clock=clock, max_stale_s=3.0)
    first = cache.get()
    clock.now = 2.0  # stale but within the bound: served at once, one refresh started
    assert cache.get() is first and cache.builds == 2
    assert wait_for(lambda: cache.peek() is not first, timeout=HANG_S)
    second = cache.get()
    clock.now = 10.0  # older than max_stale_s: this caller waits for a fresh build
    third = cache.get()
    assert third is not second and cache.builds == 3 and cache.peek() is third
    with pytest.raises(ValueError, match="max_stale_s"):
        svc.StateCache(real, interval_s=2.0, max_stale_s=1.0)


def test_cache_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        svc.StateCache(lambda: None, interval_s=0)  # type: ignore[arg-type,return-value]


def test_config_from_settings_takes_the_daemons_intervals_and_names_a_bad_value(
    settings: Settings,
) -> None:
    cfg = svc.MonitorConfig.from_settings(settings, statement_timeout_ms=500)
    assert cfg.tick_interval == timedelta(seconds=settings.tick_interval_s)
    assert cfg.worker_alive == timedelta(seconds=settings.lease_s)
    assert cfg.statement_timeout_ms == 500
    with pytest.raises(ValueError, match="statement_timeout_ms"):
        svc.MonitorConfig.from_settings(settings, statement_timeout_ms=0)
    with pytest.raises(ValueError, match="nonsense"):
        svc.MonitorConfig.from_settings(settings, nonsense=1)


# -- no read scans history (EXPLAIN) ----------------------------------------------------------


def _plan(conn: Connection[Any], sql: str, params: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_events_by_minute_reads_only_the_windows_refusals_through_their_index(
    engine: Engine, read: Connection[Any]
) -> None:
    history, recent, busy = 200_000, 500, 20_000
    with engine.begin() as conn:
        # thirty days of history, then the last hour, inserted in time order (as they are)
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, "
                "reason, code) "
                "SELECT g, now() - interval '30 days' + g * interval '12 s', 'pending', "
                "'rejected', 'reject', 'scheduler', 'can never pass', "
                "(ARRAY['capital_single_job_cap', 'leverage_hard_limit'])[1 + g % 2] "
                "FROM generate_series(1, :n) g"
            ),
            {"n": history},
        )
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, "
                "reason, code) "
                "SELECT g, now() - interval '50 minutes' + g * interval '1 s', 'pending', "
                "'rejected', 'reject', 'scheduler', 'can never pass', 'capital_single_job_cap' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": recent},
        )
        # a busy hour: admissions, claims and completions outnumber the refusals 40 to 1
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, "
                "reason) "
                "SELECT g, now() - interval '50 minutes' + g * interval '100 ms', 'pending', "
                "'admitted', 'admit', 'scheduler', 'admitted' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": busy},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE job_events"))
    now = read.execute("SELECT statement_timestamp()").fetchone()[0]  # type: ignore[index]
    params = {
        "since": now - timedelta(hours=1),
        "until": now,
        "actions": ["reject", "expire", "fail", "recover_fail"],
        "limit": 100_000,
    }
    plan = _plan(read, reads.EVENTS_BY_MINUTE_SQL, params)
    nodes = [n for n in _nodes(plan) if n.get("Relation Name") == "job_events"]
    assert "Seq Scan" not in {n["Node Type"] for n in nodes}, nodes
    window = [n for n in nodes if n.get("Index Name") == "ix_job_events_refusals"]
    assert window, {n.get("Index Name") for n in nodes}
    examined = sum(
        n["Actual Rows"] * n.get("Actual Loops", 1)
        + n.get("Rows Removed by Filter", 0)
        + n.get("Rows Removed by Index Recheck", 0)
        for n in nodes
    )
    # the window's refusals (not history, not the admits), then one example per group
    assert examined <= recent + plan["Actual Rows"], examined
    rows = reads.events_by_minute(
        read, reads.EventWindow(params["since"], now, ("reject", "expire", "fail"), 100_000)
    )
    assert {r.code for r in rows} == {"capital_single_job_cap"}
    assert sum(r.events for r in rows) == recent
    assert len({r.minute for r in rows}) >= 8  # 500 s of events: one row per minute


def test_events_by_minute_refuses_actions_its_index_does_not_hold(
    read: Connection[Any],
) -> None:
    now = read.execute("SELECT statement_timestamp()").fetchone()[0]  # type: ignore[index]
    with pytest.raises(ValueError, match="actions must be among"):
        reads.events_by_minute(
            read, reads.EventWindow(now - timedelta(hours=1), now, ("reject", "admit"), 10)
        )


def _events_every_10_s_for_two_hours(engine: Engine) -> datetime:
    """Rejections, expiries (by their hold) and failures, one every 10 s; returns now."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, "
                "reason, code, details) "
                "SELECT g, now() - g * interval '10 s', 'pending', "
                "(ARRAY['rejected', 'expired', 'failed'])[1 + g % 3], "
                "(ARRAY['reject', 'expire', 'fail'])[1 + g % 3], 'scheduler', 'why', "
                "(ARRAY['capital_single_job_cap', 'deadline_passed', 'unhedged'])[1 + g % 3], "
                "CASE WHEN g % 3 = 1 THEN jsonb_build_object('held_code', "
                "(ARRAY['market_data_stale', 'spread_hard_limit'])[1 + g % 2]) "
                "ELSE '{}'::jsonb END "
                "FROM generate_series(1, 720) g"
            )
        )
        now: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return now


def test_event_tally_reads_each_past_minute_once_and_agrees_with_a_full_read(
    engine: Engine, read: Connection[Any]
) -> None:
    t0 = _events_every_10_s_for_two_hours(engine)
    tally = svc.EventTally(timedelta(hours=1))  # seal after 2 min, back-fill 10 min a build
    covered_after = None
    for k in range(60):
        now = t0 - timedelta(minutes=40) + k * timedelta(seconds=40)
        kept = svc.build_state(read, CONFIG, now=now, tally=tally).risk
        full = svc.build_state(read, CONFIG, now=now).risk
        assert full.window_s >= 3600 and full.denials and full.failures
        if kept.window_s < full.window_s:  # still back-filling: a part of the window
            assert covered_after is None, "coverage never shrinks"
            assert sum(d.events for d in kept.denials) < sum(d.events for d in full.denials)
            continue
        covered_after = k if covered_after is None else covered_after
        assert kept.window_s == full.window_s
        assert (kept.denials, kept.failures, kept.unhedged_ends) == (
            full.denials,
            full.failures,
            full.unhedged_ends,
        )
        if k > covered_after:  # steady state: only the last few minutes are read
            assert all(since >= now - timedelta(minutes=4) for since, _ in tally.last_reads)
    assert covered_after is not None and covered_after <= 6
    by = {(d.action, d.held_code): d.events for d in full.denials}
    assert set(by) == {
        ("reject", None),
        ("expire", "market_data_stale"),
        ("expire", "spread_hard_limit"),
    }
    assert full.unhedged_ends == sum(f.events for f in full.failures) > 0

    back = t0 - timedelta(hours=1)  # a clock that went back starts over
    kept = svc.build_state(read, CONFIG, now=back, tally=tally).risk
    assert kept.window_s < 3600
    for _ in range(6):
        kept = svc.build_state(read, CONFIG, now=back, tally=tally).risk
    full = svc.build_state(read, CONFIG, now=back).risk
    assert (kept.window_s, kept.denials) == (full.window_s, full.denials)


def test_event_tally_refuses_a_window_it_cannot_keep() -> None:
    with pytest.raises(ValueError, match="seal_after"):
        svc.EventTally(timedelta(hours=1), seal_after=timedelta(seconds=10))
    with pytest.raises(ValueError, match="backfill"):
        svc.EventTally(timedelta(hours=1), backfill=timedelta(0))


def test_live_counts_holds_running_and_capital_never_scan_finished_jobs(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    finished = 100_000
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd, "
                "status, finished_at, created_at, scored_at, admitted_at) "
                "SELECT 'arb', 'BTC/USDT:USDT', 100, 200, "
                "(ARRAY['completed', 'failed', 'rejected', 'expired'])[1 + g % 4], "
                "now() - g * interval '1 s', now() - g * interval '1 s', "
                "now() - g * interval '1 s', now() - g * interval '1 s' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": finished},
        )
        conn.execute(
            text(
                "INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd, status, "
                "release_reason, released_at) "
                "SELECT id, 'binance', 'arbitrage', 100, 'released', 'completed', now() "
                "FROM hedge_jobs"
            )
        )
    admitted(engine, settings, 3)
    claim(engine, "w-explain", limit=1)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE hedge_jobs"))
        conn.execute(text("VACUUM ANALYZE capital_reservations"))
    statements = {
        "live counts": (reads._LIVE_COUNTS, {}),
        "active counts": (reads._ACTIVE_COUNTS, {}),
        "pending by code": (reads._PENDING_BY_CODE, {"limit": 100}),
        "running": (
            reads._RUNNING,
            {"after_started_at": None, "after_id": None, "limit": 100},
        ),
        "exchanges": (reads._EXCHANGES, {"limit": 100}),
    }
    for name, (sql, params) in statements.items():
        plan = _plan(read, sql, params)
        scans = [
            (n["Node Type"], n.get("Index Name"))
            for n in _nodes(plan)
            if n.get("Relation Name") in {"hedge_jobs", "capital_reservations"}
        ]
        assert scans, name
        assert all(kind != "Seq Scan" for kind, _ in scans), (name, scans)
        examined = max(n.get("Actual Rows", 0) for n in _nodes(plan))
        assert examined < 1000, (name, examined)
    state = svc.build_state(read, CONFIG)
    assert (state.jobs.admitted, state.jobs.running) == (2, 1)
