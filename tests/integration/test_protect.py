"""Protections against PostgreSQL: each writes its lock (reason, until) and its effect;
locks end in one place; maintenance runs on the leader only."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from perpbot_db.domain.protections import Readings, SystemReading
from perpbot_db.runtime.leader import Leader
from perpbot_db.runtime.scheduler import SchedulerService
from perpbot_db.services import control, protect, tick
from perpbot_db.settings import Settings
from perpbot_db.store import locks
from tests.builders import admitted, config, job, put_market, submit, wait_for, work


def active_locks(engine: Engine) -> dict[tuple[str, str, str], Any]:
    with engine.connect() as conn:
        return {
            (r.scope.value, r.target, r.code.value): r
            for r in locks.protection_lock_list(conn, active_only=True)
        }


def exchange(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT safe_mode, safe_mode_reason, safe_mode_until FROM exchanges "
                 "WHERE name = :n"), {"n": name}
        ).one()  # fmt: skip


def execute(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql))


# -- each protection writes its lock with reason and until ------------------------------


def test_daily_loss_writes_a_system_lock_until_utc_midnight_and_halts(engine: Engine) -> None:
    put_market(engine)
    execute(
        engine,
        "INSERT INTO daily_counters (day, scope, loss_used_usd, realized_pnl_usd) "
        "VALUES (current_date, 'global', 1000, -1000)",
    )
    now = datetime.now(UTC)
    report = tick.run_tick(engine, config(), now=now)
    lock = active_locks(engine)[("system", "system", "daily_loss")]
    assert lock.reason == report.halted and "lost 1000" in lock.reason
    assert lock.until == datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert lock.context["limit_usd"] == "1000" and lock.created_by == "scheduler"
    with engine.connect() as conn:
        halt = conn.execute(
            text("SELECT details FROM control_events WHERE action = 'halt'")
        ).scalar_one()
    assert halt["lock_id"] == lock.id and halt["code"] == "daily_loss"
    assert tick.run_tick(engine, config(), now=now).halted is None  # halted once, one lock
    assert len(active_locks(engine)) == 1


def test_global_failure_streak_writes_a_system_lock_for_the_cooldown(engine: Engine) -> None:
    put_market(engine)
    execute(engine, "UPDATE system_state SET consecutive_failures = 5")
    now = datetime.now(UTC)
    report = tick.run_tick(engine, config(), now=now)
    lock = active_locks(engine)[("system", "system", "failure_streak")]
    assert report.halted == lock.reason == "consecutive failures: 5 (limit 5)"
    assert lock.until == now + timedelta(minutes=15)


def test_drawdown_writes_an_exchange_lock_and_safe_mode_until_the_same_time(
    engine: Engine,
) -> None:
    put_market(engine)
    execute(
        engine,
        "INSERT INTO daily_counters (day, scope, realized_pnl_usd, loss_used_usd) "
        "VALUES (current_date, 'okx', -2500, 2500)",
    )
    now = datetime.now(UTC)
    assert tick.run_tick(engine, config(), now=now).safe_mode_entered == ["okx"]
    lock = active_locks(engine)[("exchange", "okx", "drawdown")]
    assert "intraday drawdown 2500 USD" in lock.reason
    assert lock.until == now + timedelta(minutes=15)
    row = exchange(engine, "okx")
    assert row.safe_mode and row.safe_mode_reason == lock.reason
    assert row.safe_mode_until == lock.until


def test_exchange_latency_and_failures_each_write_their_lock_the_latest_until_holds(
    engine: Engine,
) -> None:
    put_market(engine, okx={"latency_ms": Decimal(5000)})
    now = datetime.now(UTC)
    tick.run_tick(engine, config(), now=now)
    first = active_locks(engine)[("exchange", "okx", "api_latency")]
    assert first.reason == "API latency 5000 ms above hard limit 750"  # balanced mode
    assert first.context["latency_ms"] == "5000"
    later = now + timedelta(minutes=5)
    execute(engine, "UPDATE exchanges SET consecutive_failures = 3 WHERE name = 'okx'")
    put_market(engine, at=later)
    assert tick.run_tick(engine, config(), now=later).safe_mode_entered == []  # already in it
    second = active_locks(engine)[("exchange", "okx", "failure_streak")]
    assert second.until == later + timedelta(minutes=15)
    assert exchange(engine, "okx").safe_mode_until == second.until  # extended


def test_fast_market_writes_a_symbol_lock_and_a_blacklist_row_with_the_same_until(
    engine: Engine,
) -> None:
    put_market(engine, binance={"volatility": Decimal("0.5")})
    now = datetime.now(UTC)
    assert tick.run_tick(engine, config(), now=now).blacklisted == [
        "BTC/USDT:USDT",
        "ETH/USDT:USDT",
    ]
    lock = active_locks(engine)[("symbol", "BTC/USDT:USDT", "fast_market")]
    assert "volatility 0.5 on binance" in lock.reason
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT target, expires_at, details FROM blacklist")).all()
    assert {(r.target, r.expires_at) for r in rows} == {
        ("BTC/USDT:USDT", lock.until),
        ("ETH/USDT:USDT", lock.until),
    }  # put_market sets every symbol's volatility on binance
    assert tick.run_tick(engine, config(), now=now).blacklisted == []  # locked: no second row


def test_a_lock_past_its_until_that_trips_again_is_renewed_not_left_to_lapse(
    engine: Engine,
) -> None:
    put_market(engine, binance={"volatility": Decimal("0.5")})
    now = datetime.now(UTC)
    tick.run_tick(engine, config(), now=now)
    before = active_locks(engine)[("symbol", "BTC/USDT:USDT", "fast_market")]
    later = now + timedelta(minutes=6)  # past its until; the leader has not expired it yet
    put_market(engine, at=later, binance={"volatility": Decimal("0.5")})
    assert "BTC/USDT:USDT" in tick.run_tick(engine, config(), now=later).blacklisted
    after = active_locks(engine)[("symbol", "BTC/USDT:USDT", "fast_market")]
    assert after.id == before.id and after.until == later + timedelta(minutes=5)


def test_unhedged_exposure_from_a_worker_writes_an_exchange_lock_with_the_exposure(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {f"pb{j}L0A1": "reject", f"pb{j}L101A1": "reject"})
    lock = active_locks(engine)[("exchange", "okx", "unhedged_exposure")]
    assert lock.reason.startswith(f"job {j} left unhedged: exposure ")
    assert Decimal(lock.context["exposure_usd"]) > 900  # 0.01 BTC at ~97,000
    assert lock.created_by.startswith("worker:")
    assert lock.until - lock.created_at == timedelta(days=1)  # unhedged_lock_s
    row = exchange(engine, "okx")
    assert row.safe_mode and row.safe_mode_until == lock.until


def test_a_worker_reaching_the_daily_loss_limit_writes_the_system_lock(
    engine: Engine, fast: Settings
) -> None:
    admitted(engine, fast, 2)
    execute(engine, "UPDATE system_state SET daily_loss_limit_usd = 0.5")
    worker = work(engine, fast, concurrency=1)
    assert worker.tally.halted
    lock = active_locks(engine)[("system", "system", "daily_loss")]
    assert lock.reason == worker.tally.halted[0]
    assert lock.created_by == worker.identity


def test_run_once_leaves_a_halted_system_alone(engine: Engine) -> None:
    execute(engine, "UPDATE system_state SET status = 'halted', halt_reason = 'ops'")
    with engine.begin() as conn:
        report = protect.run_once(
            conn,
            protect.ProtectConfig(),
            datetime.now(UTC),
            readings=Readings(system=SystemReading(Decimal(10), Decimal(1), 9, 1)),
            mode=tick.RiskMode.BALANCED,
            status="halted",
            actor="test",
        )
    assert report.locks == [] and report.halted is None


# -- locks end in one place ---------------------------------------------------------------


def test_expiry_releases_locks_at_their_until_and_ends_safe_mode_once(engine: Engine) -> None:
    put_market(engine, okx={"latency_ms": Decimal(5000)})
    now = datetime.now(UTC)
    tick.run_tick(engine, config(), now=now)
    lock = active_locks(engine)[("exchange", "okx", "api_latency")]
    with engine.begin() as conn:
        early = protect.expire(conn, lock.until - timedelta(seconds=1), actor="scheduler")
    assert early.released == [] and early.safe_mode_left == []
    assert exchange(engine, "okx").safe_mode
    with engine.begin() as conn:
        due = protect.expire(conn, lock.until, actor="scheduler")
    assert due.released == [lock.id] and due.safe_mode_left == ["okx"]
    assert active_locks(engine) == {}
    assert not exchange(engine, "okx").safe_mode
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT released_at, released_by FROM protection_locks WHERE id = :i"),
            {"i": lock.id},
        ).one()
        ended = conn.execute(
            text("SELECT count(*) FROM control_events WHERE action = 'safe_mode_cooldown_ended'")
        ).scalar_one()
    assert (row.released_at, row.released_by) == (lock.until, "expired")
    assert ended == 1
    with engine.begin() as conn:
        again = protect.expire(conn, lock.until + timedelta(hours=1), actor="scheduler")
    assert again.released == [] and again.safe_mode_left == []


def test_expiry_never_lifts_a_halt_only_an_operator_does(engine: Engine) -> None:
    put_market(engine)
    execute(engine, "UPDATE system_state SET consecutive_failures = 5")
    now = datetime.now(UTC)
    tick.run_tick(engine, config(), now=now)
    with engine.begin() as conn:
        assert protect.expire(conn, now + timedelta(hours=1), actor="scheduler").released
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM system_state")).scalar_one() == "halted"
    # a halted system is not locked again while it stays halted
    assert tick.run_tick(engine, config(), now=now + timedelta(hours=1)).halted is None
    assert active_locks(engine) == {}


def test_operators_release_the_locks_they_override(engine: Engine, settings: Settings) -> None:
    put_market(engine, okx={"latency_ms": Decimal(5000)})
    execute(engine, "UPDATE system_state SET consecutive_failures = 5")
    tick.run_tick(engine, config())
    assert set(active_locks(engine)) == {
        ("system", "system", "failure_streak"),
        ("exchange", "okx", "api_latency"),
    }
    control.leave_safe_mode(engine, "okx", actor="ops", reason="latency back")
    assert set(active_locks(engine)) == {("system", "system", "failure_streak")}
    control.clear_halt(engine, actor="ops", reason="looked into it")
    assert active_locks(engine) == {}
    with engine.connect() as conn:
        released_by = set(conn.execute(text("SELECT released_by FROM protection_locks")).scalars())
    assert released_by == {"ops"}
    [job_id] = submit(engine, settings, [job(1)])
    put_market(engine)
    assert tick.run_tick(engine, config()).admitted == [job_id]


# -- leader-only maintenance ----------------------------------------------------------------


def backend_pid(leader: Leader) -> int:
    assert leader._conn is not None
    return int(leader._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_one_leader_at_a_time_and_a_standby_takes_over_when_its_session_dies(
    engine: Engine,
) -> None:
    a, b = Leader(engine, "scheduler:a"), Leader(engine, "scheduler:b")
    try:
        assert a.is_leader() and not b.is_leader()
        assert a.is_leader() and not b.is_leader()  # re-confirmed, not re-taken
        with engine.connect() as conn:
            assert locks.leader_current(conn) == "scheduler:a"
        execute(engine, f"SELECT pg_terminate_backend({backend_pid(a)})")
        # the lock dies with a's session, once its backend has exited (the signal is sent
        # at once, the exit takes what it takes): b competes until then
        assert wait_for(b.is_leader)
        assert not a.is_leader()  # a finds its session gone and steps down
        assert not a.is_leader()  # and competes again: b holds it
        b.resign()
        assert a.is_leader()
    finally:
        a.resign()
        b.resign()


def test_only_the_leader_scheduler_runs_maintenance_and_the_other_takes_over(
    engine: Engine, settings: Settings
) -> None:
    quick = settings.model_copy(update={"recovery_interval_s": 0.1, "tick_interval_s": 60.0})
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    runs: dict[str, int] = {"a": 0, "b": 0}
    mutex = threading.Lock()

    def counting(name: str) -> Any:
        def run() -> None:
            with mutex:
                runs[name] += 1

        return run

    a = SchedulerService(engine, quick, conninfo, maintenance=counting("a"), identity="sched:a")
    b = SchedulerService(engine, quick, conninfo, maintenance=counting("b"), identity="sched:b")
    a.start()
    try:
        assert wait_for(lambda: runs["a"] >= 3)
        b.start()
        try:
            seen = runs["a"]
            # b competes every round and loses every time while a leads
            assert wait_for(lambda: b.maintenance_rounds >= 10 and runs["a"] >= seen + 10)
            assert runs["b"] == 0
            # a freezes (its rounds stop, as in a hung process): its session still holds
            # the lock, so b still waits
            a.scheduler.pause()
            frozen = b.maintenance_rounds
            assert wait_for(lambda: b.maintenance_rounds >= frozen + 10)
            assert runs["b"] == 0
            # a's connection dies: the lock dies with it and b takes over at its next round
            execute(engine, f"SELECT pg_terminate_backend({backend_pid(a.leader)})")
            assert wait_for(lambda: runs["b"] >= 3)
            with engine.connect() as conn:
                assert locks.leader_current(conn) == "sched:b"
            # a comes back: it finds its session gone, steps down and loses to b
            stopped_at = runs["a"]
            a.scheduler.resume()
            assert wait_for(lambda: a.maintenance_rounds >= stopped_at + 10 and runs["b"] >= 13)
            assert runs["a"] == stopped_at
        finally:
            b.stop()
    finally:
        a.stop()


def test_a_tick_and_a_worker_tripping_the_daily_loss_at_once_never_deadlock(
    engine: Engine,
) -> None:
    """The worker's finish writes the lock while the tick holds the control row shared:
    the worker queues on the row before it touches the lock's index entry."""
    tripped = Readings(system=SystemReading(Decimal(10), Decimal(1), None, 5))
    now = datetime.now(UTC)

    def apply(conn: Any, actor: str) -> protect.ProtectReport:
        return protect.run_once(
            conn,
            protect.ProtectConfig(),
            now,
            readings=tripped,
            mode=tick.RiskMode.BALANCED,
            status="running",
            actor=actor,
        )

    results: dict[str, Any] = {}

    def worker() -> None:
        try:
            with engine.begin() as conn:
                results["worker"] = apply(conn, "worker:w")
        except Exception as exc:  # a deadlock would land here
            results["worker"] = exc

    with engine.begin() as tick_conn:
        tick_conn.execute(text("SELECT status FROM system_state FOR SHARE"))  # as a tick does
        thread = threading.Thread(target=worker)
        thread.start()

        def worker_waits() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND datname = current_database()"
                        )
                    ).scalar_one()
                )

        assert wait_for(worker_waits)
        mine = apply(tick_conn, "scheduler")
    thread.join(timeout=120)
    assert mine.halted is not None and len(mine.locks) == 1
    theirs = results["worker"]
    assert isinstance(theirs, protect.ProtectReport), theirs
    assert theirs.locks == [] and theirs.halted is None  # the tick's lock and halt stand
    assert list(active_locks(engine)) == [("system", "system", "daily_loss")]
