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


ALLOCATE_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('hedge_jobs', 'id')) FROM generate_series(1, :n)"
)


def allocate_ids(conn: Connection, count: int) -> list[int]:
    """Reserve ``count`` job ids in one round trip (legs' client order ids need them)."""
    return [int(job_id) for job_id in conn.execute(ALLOCATE_IDS, {"n": count}).scalars()]


IDS_BY_IDEMPOTENCY_KEY = text(
    "SELECT idempotency_key, id FROM hedge_jobs_all "
    "WHERE idempotency_key = ANY(CAST(:keys AS text[]))"
)


def ids_by_idempotency_key(conn: Connection, keys: list[str]) -> dict[str, int]:
    """The live or archived jobs that hold these idempotency keys."""
    return {
        key: int(job_id) for key, job_id in conn.execute(IDS_BY_IDEMPOTENCY_KEY, {"keys": keys})
    }


STATUS_FOR_UPDATE = text("SELECT status FROM hedge_jobs WHERE id = :id FOR UPDATE")


def status_for_update(conn: Connection, job_id: int) -> str | None:
    """The job's status, its row locked for the rest of the transaction (None: no such job)."""
    value = conn.execute(STATUS_FOR_UPDATE, {"id": job_id}).scalar()
    return None if value is None else str(value)
