"""A simulation's statements: its virtual clock, and what its report reads (the ledger,
the outcomes, the peak capital).

They run on a simulation's scratch database only (see
:mod:`perpbot_db.runtime.simclock`): ``sim.clock`` exists nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

#: The time functions the engine's SQL calls, each redefined in ``sim`` to read the clock.
CLOCK_FUNCTIONS = ("now", "statement_timestamp", "clock_timestamp", "transaction_timestamp")

_CLOCK_DDL = (
    "CREATE SCHEMA sim",
    "CREATE TABLE sim.clock (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
    "at timestamptz NOT NULL)",
    *(
        f"CREATE FUNCTION sim.{name}() RETURNS timestamptz LANGUAGE sql STABLE "
        "AS 'SELECT at FROM sim.clock'"
        for name in CLOCK_FUNCTIONS
    ),
)
_CLOCK_START = text("INSERT INTO sim.clock (at) VALUES (:at)")
_CLOCK_SET = text("UPDATE sim.clock SET at = :at WHERE at <= :at RETURNING at")
_CLOCK_READ = text("SELECT at FROM sim.clock")


def clock_create(conn: Connection, start: datetime) -> None:
    """Schema ``sim``: the one-row clock at ``start`` and the functions that read it."""
    for ddl in _CLOCK_DDL:
        conn.execute(text(ddl))
    conn.execute(_CLOCK_START, {"at": start})


def clock_set(conn: Connection, at: datetime) -> bool:
    """Move the clock to ``at``; False (nothing written) if that would move it back."""
    return conn.execute(_CLOCK_SET, {"at": at}).first() is not None


def clock_read(conn: Connection) -> datetime:
    value: datetime = conn.execute(_CLOCK_READ).scalar_one()
    return value


#: What the leader's chores would act on at ``:now``, each as its own statement finds it:
#: a running job whose lease expired (``attempts.RECOVER_EXPIRED``), an active protection
#: lock past its ``until`` (``locks.protection_lock_release_expired``), a timed safe mode
#: past its end (``exchanges.leave_expired_safe_mode``).
_CHORES_DUE = text(
    """
    SELECT EXISTS (SELECT 1 FROM hedge_jobs WHERE status = 'running' AND lease_expires_at < :now)
        OR EXISTS (SELECT 1 FROM protection_locks WHERE released_at IS NULL AND until <= :now)
        OR EXISTS (SELECT 1 FROM exchanges WHERE safe_mode AND safe_mode_until IS NOT NULL
                   AND safe_mode_until <= :now)
    """
)


def chores_due(conn: Connection, now: datetime) -> bool:
    """Would the chores (recovery, the protections' expiry) at ``now`` change anything?
    False: they would read and write nothing, and the simulation leaves them out."""
    return bool(conn.execute(_CHORES_DUE, {"now": now}).scalar_one())


_LOCKS = text(
    "SELECT scope, target, code, created_at, until, released_at FROM protection_locks "
    "ORDER BY created_at, scope, target, code"
)


def protection_locks(conn: Connection) -> list[tuple[object, ...]]:
    """Every protection lock written: what, when, until when, released when."""
    return [tuple(row) for row in conn.execute(_LOCKS)]


#: The ledger in a fixed order: every leg's order and fill with its job's outcome.  Ids
#: are part of it (a fresh scratch database numbers jobs and legs the same way each run);
#: exchange order ids and wall-clock columns are not.
_LEDGER = text(
    """
    SELECT j.id, j.idempotency_key, j.strategy, j.symbol, j.status, j.attempts,
           l.attempt, l.leg_index, l.exchange, l.side, l.quantity, l.reduce_only, l.status,
           l.filled_quantity, l.avg_price, l.fee_usd, l.realized_pnl_usd, j.finished_at
    FROM hedge_jobs j JOIN legs l ON l.job_id = j.id
    ORDER BY j.id, l.attempt, l.leg_index, l.id
    """
)

#: What the tick stored on each job, in a fixed order: its last decision, score and when.
_DECISIONS = text(
    """
    SELECT id, status, decision_code, decision_context::text, final_score,
           nullif(scored_at, '-infinity'), run_after
    FROM hedge_jobs ORDER BY id
    """
)

_JOBS_BY_STATUS = text("SELECT status, count(*) FROM hedge_jobs GROUP BY status ORDER BY status")
_ADMITTED = text("SELECT count(DISTINCT job_id) FROM job_events WHERE to_status = 'admitted'")
_DENIALS = text(
    """
    SELECT to_status || ':' || coalesce(code, reason), count(*) FROM job_events
    WHERE to_status IN ('rejected', 'expired') GROUP BY 1 ORDER BY 1
    """
)
_MONEY = text(
    """
    SELECT coalesce(sum(filled_quantity * avg_price), 0), coalesce(sum(fee_usd), 0),
           coalesce(sum(realized_pnl_usd), 0)
    FROM legs WHERE filled_quantity > 0
    """
)
#: The peak of active reservations per exchange: +amount at creation, -amount at
#: release; at one instant the tick's reservations come before the releases that
#: follow them (a simulated step ticks, then works).
_PEAK_CAPITAL = text(
    """
    WITH moves AS (
        SELECT exchange, created_at AS at, 0 AS ord, amount_usd AS delta
        FROM capital_reservations
        UNION ALL
        SELECT exchange, released_at, 1, -amount_usd
        FROM capital_reservations WHERE released_at IS NOT NULL
    ), running AS (
        SELECT exchange, sum(delta) OVER (PARTITION BY exchange ORDER BY at, ord
                                          ROWS UNBOUNDED PRECEDING) AS used
        FROM moves
    )
    SELECT e.name, e.equity_usd, coalesce(max(r.used), 0)
    FROM exchanges e LEFT JOIN running r ON r.exchange = e.name
    WHERE e.enabled GROUP BY e.name, e.equity_usd ORDER BY e.name
    """
)


@dataclass(frozen=True)
class Money:
    volume_usd: Decimal
    fees_usd: Decimal
    realized_pnl_usd: Decimal


@dataclass(frozen=True)
class PeakCapital:
    exchange: str
    equity_usd: Decimal
    peak_reserved_usd: Decimal


def ledger_rows(conn: Connection) -> list[tuple[object, ...]]:
    return [tuple(row) for row in conn.execute(_LEDGER)]


def decision_rows(conn: Connection) -> list[tuple[object, ...]]:
    return [tuple(row) for row in conn.execute(_DECISIONS)]


def jobs_by_status(conn: Connection) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute(_JOBS_BY_STATUS)}


def jobs_admitted(conn: Connection) -> int:
    return int(conn.execute(_ADMITTED).scalar_one())


def denials(conn: Connection) -> dict[str, int]:
    """Rejections and expiries by ``status:code``."""
    return {str(k): int(n) for k, n in conn.execute(_DENIALS)}


def money(conn: Connection) -> Money:
    volume, fees, pnl = conn.execute(_MONEY).one()
    return Money(Decimal(volume), Decimal(fees), Decimal(pnl))


def peak_capital(conn: Connection) -> list[PeakCapital]:
    return [PeakCapital(str(n), Decimal(e), Decimal(p)) for n, e, p in conn.execute(_PEAK_CAPITAL)]
