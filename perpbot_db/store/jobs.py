"""Hedge jobs as read by the status views, and the writes that change no status.

Every statement that changes a job's status lives with the lifecycle's transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows


def count_by_status(conn: Connection) -> dict[str, int]:
    """Every job ever submitted, live or archived, by status."""
    result = conn.execute(text("SELECT status, count(*) FROM hedge_jobs_all GROUP BY status"))
    return {str(status): int(n) for status, n in result}


def count_by_exchange_status(conn: Connection) -> dict[str, dict[str, int]]:
    """Jobs per exchange they touch and status (a job counts once per exchange)."""
    result = conn.execute(
        text(
            """
            SELECT l.exchange, j.status, count(DISTINCT j.id)
            FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id
            WHERE l.attempt = 1
            GROUP BY l.exchange, j.status
            """
        )
    )
    out: dict[str, dict[str, int]] = {}
    for exchange, status, n in result:
        out.setdefault(str(exchange), {})[str(status)] = int(n)
    return out


@dataclass(frozen=True, slots=True)
class JobLine:
    """One line of ``perpbot jobs``: a live or archived job and its first attempt's legs
    (``"buy 0.01@binance, sell 0.01@okx"``)."""

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


_LIST = text(
    f"""
    SELECT {", ".join("j." + name for name in rows.names(JobLine) if name != "legs")},
           (SELECT string_agg(
                       l.side || ' ' || trim_scale(l.quantity)::text || '@' || l.exchange,
                       ', ' ORDER BY l.leg_index)
            FROM legs_all l WHERE l.job_id = j.id AND l.attempt = 1) AS legs
    FROM hedge_jobs_all j
    WHERE CAST(:status AS text) IS NULL OR j.status = CAST(:status AS text)
    ORDER BY j.id DESC
    LIMIT :limit
    """
)


def list_recent(conn: Connection, *, status: str | None, limit: int) -> list[JobLine]:
    """The newest ``limit`` jobs, live or archived, optionally of one status."""
    return [JobLine(*row) for row in conn.execute(_LIST, {"status": status, "limit": limit})]


# Two counts, each on its partial index: an IN across states would scan the table.
INFLIGHT_TOTALS = text(
    "SELECT count(*), coalesce(sum(notional_usd), 0) FROM ("
    "  SELECT notional_usd FROM hedge_jobs WHERE status = 'admitted'"
    "  UNION ALL SELECT notional_usd FROM hedge_jobs WHERE status = 'running') j"
)


def inflight_totals(conn: Connection) -> tuple[int, Decimal]:
    """Admitted plus running jobs: how many, and their notional (USD) together."""
    count, notional = conn.execute(INFLIGHT_TOTALS).one()
    return int(count), Decimal(notional)


def set_operator_override(conn: Connection, *, job_id: int, actor: str) -> bool:
    """Mark a pending job as forced by ``actor`` (``override_by``): the next tick admits it
    past its job-level holds.  Its status does not change here.  False: not pending."""
    result = conn.execute(
        text(
            "UPDATE hedge_jobs SET override_by = :actor, updated_at = now() "
            "WHERE id = :id AND status = 'pending'"
        ),
        {"id": job_id, "actor": actor},
    )
    return bool(result.rowcount)
