"""What one ``perpbot demo`` run did, read back from the tables (and their archives).

Every statement is bounded by the run's start (``since``, the database clock), so a
database that kept earlier runs reports this one only.  The ``*_all`` views hold the
archived rows too: a finished job leaves the hot tables after ``archive_after_s``,
which a minute-long demo passes (job events are never archived).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

_JOBS_BY_STATUS = text(
    "SELECT status, count(*) FROM hedge_jobs_all WHERE created_at >= :since "
    "GROUP BY status ORDER BY status"
)
_COMPLETED_BY_STRATEGY = text(
    "SELECT strategy, count(*) FROM hedge_jobs_all "
    "WHERE created_at >= :since AND status = 'completed' GROUP BY strategy ORDER BY strategy"
)
_MONEY = text(
    "SELECT coalesce(sum(l.filled_quantity * l.avg_price), 0), coalesce(sum(l.fee_usd), 0), "
    "       coalesce(sum(l.realized_pnl_usd), 0) "
    "FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id WHERE j.created_at >= :since"
)
_UNWINDS = text(
    "SELECT count(DISTINCT l.job_id) FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id "
    "WHERE j.created_at >= :since AND l.reduce_only"
)
_REFUSALS = text(
    # an expiry by the hold it had (its own code is always deadline_passed)
    "SELECT e.action, CASE WHEN e.action = 'expire' "
    "  THEN coalesce(e.details ->> 'held_code', e.code) ELSE coalesce(e.code, '-') END, "
    "  count(*) "
    "FROM job_events e WHERE e.at >= :since "
    "AND e.action IN ('reject', 'expire', 'fail', 'recover_fail') "
    "GROUP BY 1, 2 ORDER BY 1, 2"
)
_HOLDS = text(  # what holds the pending jobs now (a hold is a decision, not an event)
    "SELECT decision_code, count(*) FROM hedge_jobs "
    "WHERE created_at >= :since AND status = 'pending' AND decision_code IS NOT NULL "
    "GROUP BY 1 ORDER BY 1"
)
_LOCKS = text(
    "SELECT scope, target, code FROM protection_locks WHERE created_at >= :since "
    "ORDER BY created_at, id"
)
_HALT = text(
    "SELECT reason FROM control_events WHERE at >= :since AND action = 'halt' "
    "ORDER BY at DESC LIMIT 1"
)


@dataclass
class RunSummary:
    """A run's outcome: jobs by status, completed jobs by strategy, money, what the risk
    manager did (refusals by action and code, holds by code, locks) and the halt."""

    jobs_by_status: dict[str, int] = field(default_factory=dict)
    completed_by_strategy: dict[str, int] = field(default_factory=dict)
    volume_usd: Decimal = Decimal(0)
    fees_usd: Decimal = Decimal(0)
    realized_pnl_usd: Decimal = Decimal(0)
    unwound_jobs: int = 0
    refusals: list[tuple[str, str, int]] = field(default_factory=list)
    holds: dict[str, int] = field(default_factory=dict)
    locks: list[tuple[str, str, str]] = field(default_factory=list)
    halt_reason: str | None = None


def run_summary(conn: Connection, *, since: datetime) -> RunSummary:
    """The run that started at ``since``, in one snapshot (the caller's transaction)."""
    p = {"since": since}
    volume, fees, pnl = conn.execute(_MONEY, p).one()
    return RunSummary(
        jobs_by_status={str(s): int(n) for s, n in conn.execute(_JOBS_BY_STATUS, p)},
        completed_by_strategy={str(s): int(n) for s, n in conn.execute(_COMPLETED_BY_STRATEGY, p)},
        volume_usd=Decimal(volume),
        fees_usd=Decimal(fees),
        realized_pnl_usd=Decimal(pnl),
        unwound_jobs=int(conn.execute(_UNWINDS, p).scalar_one()),
        refusals=[(str(a), str(c), int(n)) for a, c, n in conn.execute(_REFUSALS, p)],
        holds={str(c): int(n) for c, n in conn.execute(_HOLDS, p)},
        locks=[(str(s), str(t), str(c)) for s, t, c in conn.execute(_LOCKS, p)],
        halt_reason=conn.execute(_HALT, p).scalar_one_or_none(),
    )
