"""``store.simulate.chores_due``: true exactly when the leader's chores at that time
would act (a lease, a protection lock or a safe mode past its time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from perpbot_db.domain.protections import Lock, ProtectionCode, Scope
from perpbot_db.services import protect
from perpbot_db.settings import Settings
from perpbot_db.store import exchanges, locks, system
from perpbot_db.store import simulate as store_sim
from perpbot_db.store.reading import reading
from tests.builders import admitted, claim, expire_leases


def _now(engine: Engine) -> datetime:
    with reading(engine) as conn:
        return system.db_now(conn)


def _due(engine: Engine, at: datetime) -> bool:
    with reading(engine) as conn:
        return store_sim.chores_due(conn, at)


def test_nothing_is_due_on_a_quiet_database(engine: Engine) -> None:
    assert not _due(engine, _now(engine) + timedelta(days=365))


def test_a_protection_lock_is_due_from_its_until(engine: Engine) -> None:
    now = _now(engine)
    until = now + timedelta(minutes=5)
    lock = Lock(Scope.SYMBOL, "BTC/USDT:USDT", ProtectionCode.FAST_MARKET, "test", until)
    with engine.begin() as conn:
        assert locks.protection_lock_insert(conn, lock, created_by="test", now=now) is not None
    assert not _due(engine, until - timedelta(microseconds=1))
    assert _due(engine, until)
    with engine.begin() as conn:  # what the chore does at that time: release it
        assert protect.expire(conn, until, actor="test").released
    assert not _due(engine, until)


def test_a_timed_safe_mode_is_due_from_its_end(engine: Engine) -> None:
    now = _now(engine)
    until = now + timedelta(minutes=5)
    with engine.begin() as conn:
        name = sorted(exchanges.names_enabled(conn))[0]
        assert exchanges.enter_safe_mode(conn, name=name, reason="test", until=until)
    assert not _due(engine, until - timedelta(microseconds=1))
    assert _due(engine, until)
    with engine.begin() as conn:
        assert protect.expire(conn, until, actor="test").safe_mode_left == [name]
    assert not _due(engine, until)


def test_a_running_job_is_due_once_its_lease_expired(engine: Engine, settings: Settings) -> None:
    admitted(engine, settings)
    assert claim(engine, "w1")
    with reading(engine) as conn:
        lease = conn.execute(
            text("SELECT lease_expires_at FROM hedge_jobs WHERE status = 'running'")
        ).scalar_one()
    assert not _due(engine, lease)  # recovery takes a lease strictly past
    assert _due(engine, lease + timedelta(microseconds=1))
    expire_leases(engine)
    assert _due(engine, _now(engine))


def test_a_far_future_is_not_due_for_released_locks(engine: Engine) -> None:
    now = _now(engine)
    until = now + timedelta(seconds=1)
    lock = Lock(Scope.SYMBOL, "BTC/USDT:USDT", ProtectionCode.FAST_MARKET, "test", until)
    with engine.begin() as conn:
        locks.protection_lock_insert(conn, lock, created_by="test", now=now)
        assert protect.expire(conn, until, actor="test").released
    assert not _due(engine, datetime(2100, 1, 1, tzinfo=UTC))
