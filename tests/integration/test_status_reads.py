"""``perpbot status``'s view: the protection locks in force and the scheduler leader."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import Connection
from sqlalchemy import URL, Engine

from perpbot_db.domain.protections import Lock, ProtectionCode, Scope
from perpbot_db.runtime.db import engine_for
from perpbot_db.runtime.leader import Leader
from perpbot_db.services import overview
from perpbot_db.store import locks


@pytest.fixture
def read(engine: Engine) -> Iterator[Connection[Any]]:
    """The bare driver connection the read commands use."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, Connection)
        conn.autocommit = True
        yield conn
    finally:
        raw.close()


def _lock(engine: Engine, scope: Scope, target: str, code: ProtectionCode, reason: str) -> int:
    now = datetime.now(UTC)
    lock = Lock(scope, target, code, reason, until=now + timedelta(minutes=15))
    with engine.begin() as conn:
        lock_id = locks.protection_lock_insert(conn, lock, created_by="test", now=now)
    assert lock_id is not None
    return lock_id


def test_status_lists_the_locks_in_force_and_not_the_released_ones(
    engine: Engine, read: Connection[Any]
) -> None:
    assert overview.status_snapshot(read)["locks"] == []
    _lock(engine, Scope.EXCHANGE, "okx", ProtectionCode.API_LATENCY, "okx answers in 900 ms")
    _lock(engine, Scope.SYMBOL, "BTC/USDT:USDT", ProtectionCode.FAST_MARKET, "moved 4 %")
    _lock(engine, Scope.EXCHANGE, "bybit", ProtectionCode.DRAWDOWN, "lost 6 % today")
    with engine.begin() as conn:
        locks.protection_lock_release(conn, scope=Scope.EXCHANGE, target="bybit", actor="ops")

    shown = overview.status_snapshot(read)["locks"]
    assert [(s["scope"], s["target"], s["code"], s["reason"]) for s in shown] == [
        ("exchange", "okx", "api_latency", "okx answers in 900 ms"),
        ("symbol", "BTC/USDT:USDT", "fast_market", "moved 4 %"),
    ]
    until = datetime.fromisoformat(shown[0]["until"])
    assert timedelta(minutes=14) < until - datetime.now(UTC) <= timedelta(minutes=15)
    assert shown[0]["created_by"] == "test"


def test_status_names_the_leader_by_its_session_and_none_when_no_one_leads(
    engine: Engine, read: Connection[Any]
) -> None:
    assert overview.status_snapshot(read)["leader"] is None
    leader = Leader(engine, "scheduler:host-a:4242:abc123")
    try:
        assert leader.is_leader()
        shown = overview.status_snapshot(read)["leader"]
        assert shown is not None
        assert shown["application_name"] == "scheduler:host-a:4242:abc123"
        assert shown["pid"] > 0 and shown["pid"] != read.info.backend_pid
    finally:
        leader.resign()
    assert overview.status_snapshot(read)["leader"] is None


def test_a_leader_of_another_database_on_the_same_server_is_not_this_ones(
    engine: Engine, empty_db_url: URL, read: Connection[Any]
) -> None:
    other = engine_for(empty_db_url)
    leader = Leader(other, "scheduler:other-database")
    try:
        assert leader.is_leader()
        assert overview.status_snapshot(read)["leader"] is None
    finally:
        leader.resign()
        other.dispose()
