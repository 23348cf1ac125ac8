"""Hedge jobs: in-flight totals for admission, and the writes that change no status.

Every statement that changes a job's status lives with the lifecycle's transitions.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import Connection, text

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
