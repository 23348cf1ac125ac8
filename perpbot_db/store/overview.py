"""What ``perpbot status`` and ``perpbot jobs`` read, on a bare driver connection.

No SQLAlchemy here: the read commands connect with the driver alone
(:mod:`perpbot_db.runtime.reader`) so they start at once.  Every statement takes
typed parameters and returns frozen rows; live and archived jobs both count
(the ``*_all`` views).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

from psycopg import Connection
from psycopg.rows import class_row

#: The connection the read commands hold (the services name it without the driver).
ReadConnection: TypeAlias = Connection[Any]


@dataclass(frozen=True)
class SystemStateRow:
    status: str
    risk_mode: str
    daily_loss_limit_usd: Decimal
    halt_reason: str | None
    consecutive_failures: int
    max_consecutive_failures: int
    updated_at: datetime
    updated_by: str | None


@dataclass(frozen=True)
class ExchangeRow:
    name: str
    enabled: bool
    equity_usd: Decimal
    safe_mode: bool
    safe_mode_reason: str | None
    max_concurrent_jobs: int
    reserved_usd: Decimal
    active_reservations: int


@dataclass(frozen=True)
class JobListParams:
    status: str | None
    limit: int


@dataclass(frozen=True)
class JobListRow:
    id: int
    strategy: str
    symbol: str
    notional_usd: Decimal
    final_score: Decimal | None
    status: str
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    idempotency_key: str | None
    decision_code: str | None
    legs: str | None
    decision_context: dict[str, Any] | None


def system_state(conn: Connection[Any]) -> SystemStateRow:
    with conn.cursor(row_factory=class_row(SystemStateRow)) as cur:
        row = cur.execute(
            "SELECT status, risk_mode, daily_loss_limit_usd, halt_reason, "
            "consecutive_failures, max_consecutive_failures, updated_at, updated_by "
            "FROM system_state"
        ).fetchone()
    if row is None:
        raise LookupError("system_state has no row")
    return row


def exchanges_with_capital(conn: Connection[Any]) -> list[ExchangeRow]:
    """Each exchange with the capital its active reservations hold."""
    with conn.cursor(row_factory=class_row(ExchangeRow)) as cur:
        return cur.execute(
            """
            SELECT e.name, e.enabled, e.equity_usd, e.safe_mode, e.safe_mode_reason,
                   e.max_concurrent_jobs,
                   coalesce(r.reserved_usd, 0) AS reserved_usd,
                   coalesce(r.reservations, 0) AS active_reservations
            FROM exchanges e
            LEFT JOIN (
                SELECT exchange, sum(amount_usd) AS reserved_usd, count(*) AS reservations
                FROM capital_reservations WHERE status = 'active' GROUP BY exchange
            ) r ON r.exchange = e.name
            ORDER BY e.name
            """
        ).fetchall()


def job_count_by_status(conn: Connection[Any]) -> dict[str, int]:
    """Every job ever submitted, live or archived, by status."""
    rows = conn.execute("SELECT status, count(*) FROM hedge_jobs_all GROUP BY status")
    return {str(status): int(n) for status, n in rows}


def job_count_by_exchange_status(conn: Connection[Any]) -> dict[str, dict[str, int]]:
    """Jobs per exchange they touch and status (a job counts once per exchange)."""
    rows = conn.execute(
        """
        SELECT l.exchange, j.status, count(DISTINCT j.id)
        FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id
        WHERE l.attempt = 1
        GROUP BY l.exchange, j.status
        """
    )
    out: dict[str, dict[str, int]] = {}
    for exchange, status, n in rows:
        out.setdefault(str(exchange), {})[str(status)] = int(n)
    return out


def newest_jobs(conn: Connection[Any], params: JobListParams) -> list[JobListRow]:
    """The newest jobs (optionally of one status), each with its legs and last decision."""
    with conn.cursor(row_factory=class_row(JobListRow)) as cur:
        return cur.execute(
            """
            SELECT j.id, j.strategy, j.symbol, j.notional_usd, j.final_score, j.status,
                   j.attempts, j.created_at, j.finished_at, j.idempotency_key,
                   j.decision_code,
                   (SELECT string_agg(
                               l.side || ' ' || trim_scale(l.quantity)::text
                               || '@' || l.exchange,
                               ', ' ORDER BY l.leg_index)
                    FROM legs_all l WHERE l.job_id = j.id AND l.attempt = 1) AS legs,
                   j.decision_context
            FROM hedge_jobs_all j
            WHERE %(status)s::text IS NULL OR j.status = %(status)s::text
            ORDER BY j.id DESC
            LIMIT %(limit)s
            """,
            {"status": params.status, "limit": params.limit},
        ).fetchall()


@dataclass(frozen=True)
class ActiveLockRow:
    """A protection lock in force (not released): what it stops, why, and until when."""

    id: int
    scope: str
    target: str
    code: str
    reason: str
    created_by: str
    created_at: datetime
    until: datetime


@dataclass(frozen=True)
class LeaderRow:
    """The session holding the scheduler leader lock (:mod:`perpbot_db.runtime.leader`).

    ``application_name`` is the scheduler's identity; it and ``client_addr`` are None
    when this role may not see the other session's details (``pg_stat_activity``)."""

    pid: int
    application_name: str | None
    client_addr: str | None
    backend_start: datetime | None


def active_locks(conn: Connection[Any]) -> list[ActiveLockRow]:
    """Every protection lock not released yet, oldest first (the leader releases a lock
    at its ``until``; until then it is in force)."""
    with conn.cursor(row_factory=class_row(ActiveLockRow)) as cur:
        return cur.execute(
            """
            SELECT id, scope, target, code, reason, created_by, created_at, until
            FROM protection_locks
            WHERE released_at IS NULL
            ORDER BY id
            """
        ).fetchall()


def leader(conn: Connection[Any]) -> LeaderRow | None:
    """Who holds the leader lock in this database, if anyone (``pg_locks`` lists every
    database's advisory locks: the key is only this database's)."""
    with conn.cursor(row_factory=class_row(LeaderRow)) as cur:
        return cur.execute(
            """
            SELECT l.pid, nullif(a.application_name, '') AS application_name,
                   host(a.client_addr) AS client_addr, a.backend_start
            FROM pg_locks l
            LEFT JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = hashtext('perpbot.leader')::oid AND l.objid = 0
              AND l.objsubid = 2
            ORDER BY l.pid
            LIMIT 1
            """
        ).fetchone()
