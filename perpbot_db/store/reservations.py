"""Capital reservations: what admission holds on each exchange for a job until it ends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows


@dataclass(frozen=True, slots=True)
class NewReservation:
    """One reservation admission writes (``tier``: volume, arbitrage or reserve)."""

    job_id: int
    exchange: str
    tier: str
    amount_usd: Decimal


_INSERT_BATCH = text(
    """
    INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd, created_at)
    SELECT job_id, exchange, tier, amount_usd, :now FROM unnest(
        CAST(:job_id AS bigint[]), CAST(:exchange AS text[]), CAST(:tier AS text[]),
        CAST(:amount_usd AS numeric[])
    ) AS u(job_id, exchange, tier, amount_usd)
    """
)


def insert_batch(
    conn: Connection, *, now: datetime, reservations: Sequence[NewReservation]
) -> None:
    """Write active reservations in one statement."""
    if reservations:
        params: dict[str, object] = {**rows.arrays(NewReservation, reservations), "now": now}
        conn.execute(_INSERT_BATCH, params)


def release_for_jobs(
    conn: Connection, *, job_ids: Sequence[int], reason: str, now: datetime
) -> int:
    """Release the active reservations of jobs that end (in the transaction that ends them)."""
    result = conn.execute(
        text(
            "UPDATE capital_reservations SET status = 'released', released_at = :now, "
            "release_reason = :reason "
            "WHERE job_id = ANY(CAST(:ids AS bigint[])) AND status = 'active'"
        ),
        {"ids": list(job_ids), "reason": reason, "now": now},
    )
    return int(result.rowcount)
