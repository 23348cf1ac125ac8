"""What ``perpbot job ID`` reads: one job, its legs, its reservations, its events.

On a bare driver connection (no SQLAlchemy: the command starts at once), from
the ``*_all`` views so an archived job reads like a live one.  Typed parameters,
frozen rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import Connection
from psycopg.rows import class_row


@dataclass(frozen=True)
class JobRef:
    job_id: int


@dataclass(frozen=True)
class JobRow:
    id: int
    status: str
    strategy: str
    symbol: str
    notional_usd: Decimal
    expected_edge_bps: Decimal
    expected_pnl_usd: Decimal
    risk_score: Decimal | None
    latency_score: Decimal | None
    vol_score: Decimal | None
    funding_score: Decimal | None
    liquidity_score: Decimal | None
    final_score: Decimal | None
    scored_at: datetime | None  # None: never scored
    attempts: int
    max_attempts: int
    run_after: datetime
    deadline: datetime | None
    worker_id: str | None
    lease_expires_at: datetime | None
    idempotency_key: str | None
    decision_code: str | None
    decision_context: dict[str, Any] | None
    override_by: str | None
    unhedged: bool
    result: dict[str, Any] | None
    created_at: datetime
    admitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    archived: bool


@dataclass(frozen=True)
class LegRow:
    id: int
    leg_index: int
    attempt: int
    exchange: str
    symbol: str
    side: str
    quantity: Decimal
    reduce_only: bool
    client_order_id: str
    exchange_order_id: str | None
    status: str
    filled_quantity: Decimal
    avg_price: Decimal | None
    fee_usd: Decimal
    realized_pnl_usd: Decimal
    error: str | None
    unwinds_leg_id: int | None
    sent_at: datetime | None


@dataclass(frozen=True)
class ReservationRow:
    id: int
    exchange: str
    tier: str
    amount_usd: Decimal
    status: str
    release_reason: str | None
    created_at: datetime
    released_at: datetime | None


@dataclass(frozen=True)
class EventRow:
    id: int
    at: datetime
    from_status: str | None
    to_status: str
    actor: str
    reason: str
    code: str | None
    details: dict[str, Any]


def job_by_id(conn: Connection[Any], ref: JobRef) -> JobRow | None:
    with conn.cursor(row_factory=class_row(JobRow)) as cur:
        return cur.execute(
            """
            SELECT j.id, j.status, j.strategy, j.symbol, j.notional_usd, j.expected_edge_bps,
                   j.expected_pnl_usd, j.risk_score, j.latency_score, j.vol_score,
                   j.funding_score, j.liquidity_score, j.final_score,
                   nullif(j.scored_at, '-infinity') AS scored_at,
                   j.attempts, j.max_attempts, j.run_after, j.deadline, j.worker_id,
                   j.lease_expires_at, j.idempotency_key, j.decision_code, j.decision_context,
                   j.override_by, j.unhedged, j.result, j.created_at, j.admitted_at,
                   j.started_at, j.finished_at,
                   NOT EXISTS (SELECT FROM hedge_jobs h WHERE h.id = j.id) AS archived
            FROM hedge_jobs_all j
            WHERE j.id = %(job_id)s
            """,
            {"job_id": ref.job_id},
        ).fetchone()


def legs_of_job(conn: Connection[Any], ref: JobRef) -> list[LegRow]:
    """Every leg of every attempt (unwinds included), in sending order."""
    with conn.cursor(row_factory=class_row(LegRow)) as cur:
        return cur.execute(
            """
            SELECT id, leg_index, attempt, exchange, symbol, side, quantity, reduce_only,
                   client_order_id, exchange_order_id, status, filled_quantity, avg_price,
                   fee_usd, realized_pnl_usd, error, unwinds_leg_id, sent_at
            FROM legs_all
            WHERE job_id = %(job_id)s
            ORDER BY attempt, leg_index, id
            """,
            {"job_id": ref.job_id},
        ).fetchall()


def reservations_of_job(conn: Connection[Any], ref: JobRef) -> list[ReservationRow]:
    with conn.cursor(row_factory=class_row(ReservationRow)) as cur:
        return cur.execute(
            """
            SELECT id, exchange, tier, amount_usd, status, release_reason, created_at,
                   released_at
            FROM capital_reservations_all
            WHERE job_id = %(job_id)s
            ORDER BY id
            """,
            {"job_id": ref.job_id},
        ).fetchall()


def events_of_job(conn: Connection[Any], ref: JobRef) -> list[EventRow]:
    """The job's status changes, oldest first (events never move to an archive)."""
    with conn.cursor(row_factory=class_row(EventRow)) as cur:
        return cur.execute(
            """
            SELECT id, at, from_status, to_status, actor, reason, code, details
            FROM job_events
            WHERE job_id = %(job_id)s
            ORDER BY id
            """,
            {"job_id": ref.job_id},
        ).fetchall()
