"""The statements not yet moved to their entity's module: submit's id allocation and
idempotency lookup, workers' lease fence, hand-back and unwinds.

Every statement that changes a job's or the system's status is in
:mod:`perpbot_db.store.transitions`, built from the lifecycle's edge tables.

Batched statements take parallel arrays and ``unnest`` them, so one round trip
writes a whole batch.  Numbers travel as text and are cast to ``numeric`` in
SQL: no float ever touches money.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, text


def job_allocate_ids(conn: Connection, count: int) -> list[int]:
    """Reserve ``count`` job ids in one round trip (legs' client order ids need them)."""
    return list(
        conn.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence('hedge_jobs', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": count},
        ).scalars()
    )


def job_ids_by_idempotency_key(conn: Connection, keys: list[str]) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT idempotency_key, id FROM hedge_jobs_all "
            "WHERE idempotency_key = ANY(CAST(:keys AS text[]))"
        ),
        {"keys": keys},
    )
    return {key: job_id for key, job_id in rows}


def job_status_lock(conn: Connection, job_id: int) -> str | None:
    """The job's status, its row locked for the rest of the transaction (None: no such job)."""
    value = conn.execute(
        text("SELECT status FROM hedge_jobs WHERE id = :id FOR UPDATE"), {"id": job_id}
    ).scalar()
    return None if value is None else str(value)


_LEG_COLUMNS = """
    l.id, l.job_id, l.leg_index, l.attempt, l.exchange, l.symbol, l.side, l.quantity,
    l.reduce_only, l.unwinds_leg_id, l.client_order_id, l.status, l.filled_quantity,
    l.avg_price, l.fee_usd, l.exchange_order_id, l.error
"""


_JOB_RECOVER_EXPIRED = text(
    f"""
    WITH picked AS (
        SELECT id, worker_id AS lost_worker, lease_expires_at AS lost_lease FROM hedge_jobs
        WHERE status = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
    ), stolen AS (
        UPDATE hedge_jobs j
        SET worker_id = :worker, lease_expires_at = now() + make_interval(secs => :lease_s),
            updated_at = now()
        FROM picked p
        WHERE j.id = p.id AND j.status = 'running' AND j.lease_expires_at < now()
        RETURNING j.id, j.attempts, j.max_attempts, p.lost_worker, p.lost_lease
    )
    SELECT c.attempts AS job_attempt, c.max_attempts, c.lost_worker, c.lost_lease, {_LEG_COLUMNS}
    FROM stolen c JOIN legs l ON l.job_id = c.id AND l.attempt = c.attempts
    ORDER BY l.job_id, l.leg_index
    """
)


def job_recover_expired(
    conn: Connection, *, worker_id: str, limit: int, lease_s: float
) -> Sequence[RowMapping]:
    """Take over running jobs whose lease expired: the status and lease are re-checked in the
    statement that writes the new owner, so a worker renewing in time keeps its job."""
    return (
        conn.execute(
            _JOB_RECOVER_EXPIRED, {"worker": worker_id, "limit": limit, "lease_s": lease_s}
        )
        .mappings()
        .all()
    )


def handed_back_owner(worker_id: str) -> str:
    """The owner a job is handed back to: neither the worker's heartbeat nor its finish
    matches it again, and recovery takes it once its lease is past."""
    return f"{worker_id}:handed-back"


def job_lease_hand_back(
    conn: Connection,
    *,
    worker_id: str,
    job_ids: Sequence[int],
    not_before: datetime | None = None,
) -> int:
    """Give up jobs this worker cannot finish: the owner becomes ``<worker>:handed-back``, so
    neither its heartbeat nor its finish touches them again, and the lease ends at once, or
    at ``not_before`` (the expiry of orders whose fate is unknown: until then such an order
    may still reach the venue, so recovery must not decide it never will); recovery
    reconciles them next."""
    result = conn.execute(
        text(
            "UPDATE hedge_jobs SET lease_expires_at = greatest(now() - interval '1 microsecond', "
            "CAST(:not_before AS timestamptz)), worker_id = :owner, updated_at = now() "
            "WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'running' "
            "AND worker_id = :worker"
        ),
        {
            "ids": list(job_ids),
            "worker": worker_id,
            "owner": handed_back_owner(worker_id),
            "not_before": not_before,
        },
    )
    return int(result.rowcount)


def job_lease_hand_back_all(conn: Connection, *, worker_id: str) -> int:
    """Give up every job still running under this worker's id while it holds none in hand.

    A claim whose commit went through but whose answer was lost with the connection
    leaves such jobs behind (their legs marked ``sent``, nothing sent), and so does a
    batch cut off after its orders left: recovery asks the exchange and settles them.
    Their lease is left to run out, not cut short: it outlasts every order the fence
    let out, so recovery asks only once those orders can no longer arrive."""
    result = conn.execute(
        text(
            "UPDATE hedge_jobs SET worker_id = :owner, updated_at = now() "
            "WHERE status = 'running' AND worker_id = :worker"
        ),
        {"worker": worker_id, "owner": handed_back_owner(worker_id)},
    )
    return int(result.rowcount)


@dataclass(frozen=True)
class LeaseFence:
    """What a lease fence decided, job by job, in the statement that wrote it.

    ``held``: still this worker's at the expected attempt with enough lease
    left; their orders may go out, expiring at ``db_now + min_left_s``.
    ``handed_back``: still this worker's but with too little lease left (it
    stalled): handed back to recovery, send nothing.
    Any other asked job was recovered (or finished) from under the worker:
    write nothing.  ``db_now``: the database clock at the fence (``None`` only
    when an unwind fence found no job at all).
    """

    held: list[int]
    handed_back: list[int]
    db_now: datetime | None

    def lost(self, job_ids: Iterable[int]) -> list[int]:
        """The asked jobs that are neither held nor handed back."""
        kept = {*self.held, *self.handed_back}
        return [job_id for job_id in job_ids if job_id not in kept]


def _fence_ctes(asked: str) -> str:
    """The fence as two CTEs over ``asked`` (``id``, ``attempt``): ``fence`` reads which of
    them this worker still holds at that attempt and whether each has more than
    ``min_left_s`` of lease left (``held``); ``handed`` hands the others it still owns
    back to recovery.  A held job is only read, never written: the lease it has already
    outlasts every order the fence lets out (they expire ``min_left_s`` after it), and
    recovery takes a job only once its lease is past, re-checked as it writes."""
    return f"""
    fence AS (
        SELECT j.id, j.lease_expires_at > now() + make_interval(secs => :min_left_s) AS held
        FROM hedge_jobs j JOIN {asked} a ON j.id = a.id AND j.attempts = a.attempt
        WHERE j.status = 'running' AND j.worker_id = :worker
    ), handed AS (
        UPDATE hedge_jobs j SET worker_id = :handed_back,
            lease_expires_at = now() - interval '1 microsecond', updated_at = now()
        FROM fence f
        WHERE j.id = f.id AND NOT f.held AND j.status = 'running' AND j.worker_id = :worker
        RETURNING j.id
    )
    """


_JOB_LEASE_FENCE = text(
    f"""
    WITH asked AS (
        SELECT * FROM unnest(CAST(:job_id AS bigint[]), CAST(:attempt AS integer[]))
            AS a(id, attempt)
    ), {_fence_ctes("asked")}
    SELECT now() AS db_now,
           coalesce((SELECT array_agg(id ORDER BY id) FROM fence WHERE held), '{{}}') AS held,
           coalesce((SELECT array_agg(id ORDER BY id) FROM handed), '{{}}') AS handed_back
    """
)


def job_lease_fence(
    conn: Connection,
    *,
    worker_id: str,
    job_ids: Sequence[int],
    attempts: Sequence[int],
    min_left_s: float,
) -> LeaseFence:
    """The fence right before a batch's orders leave, in one statement.

    A job is held when it is still ``running``, owned by ``worker_id``, at the
    attempt whose orders are about to go (``attempts``, aligned with
    ``job_ids``), with more than ``min_left_s`` of lease left.  Still owned but
    with less left: handed back to recovery in the same statement, so a worker
    that stalled between its claim and its send never sends.  Recovery takes a
    job over by changing its owner in one guarded statement once its lease is
    past, so a held job cannot be recovered before ``db_now + min_left_s``, and
    the orders' expiry is no later than that.  Held jobs are only read: the
    common path writes nothing.
    """
    row = (
        conn.execute(
            _JOB_LEASE_FENCE,
            {
                "job_id": list(job_ids),
                "attempt": list(attempts),
                "worker": worker_id,
                "handed_back": handed_back_owner(worker_id),
                "min_left_s": min_left_s,
            },
        )
        .mappings()
        .one()
    )
    return LeaseFence(list(row["held"]), list(row["handed_back"]), row["db_now"])


_LEG_INSERT_UNWINDS = text(
    f"""
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:job_id AS bigint[]), CAST(:leg_index AS smallint[]), CAST(:attempt AS smallint[]),
            CAST(:exchange AS text[]), CAST(:symbol AS text[]), CAST(:side AS text[]),
            CAST(:quantity AS numeric[]), CAST(:unwinds AS bigint[]),
            CAST(:client_order_id AS text[])
        ) AS u(job_id, leg_index, attempt, exchange, symbol, side, quantity, unwinds,
               client_order_id)
    ), asked AS (
        SELECT DISTINCT job_id AS id, attempt FROM u
    ), {_fence_ctes("asked")}, inserted AS (
        INSERT INTO legs (job_id, leg_index, attempt, exchange, symbol, side, quantity,
                          reduce_only, unwinds_leg_id, client_order_id, status, sent_at)
        SELECT u.job_id, u.leg_index, u.attempt, u.exchange, u.symbol, u.side, u.quantity, true,
               u.unwinds, u.client_order_id, 'sent', now()
        FROM u JOIN fence f ON f.id = u.job_id AND f.held
        RETURNING id, job_id, leg_index, client_order_id
    )
    SELECT true AS held, job_id, id, leg_index, client_order_id, now() AS db_now FROM inserted
    UNION ALL
    SELECT false, id, NULL, NULL, NULL, now() FROM handed
    """
)


def leg_insert_unwinds(
    conn: Connection,
    *,
    worker_id: str,
    columns: dict[str, list[Any]],
    min_left_s: float,
) -> tuple[list[RowMapping], LeaseFence]:
    """Record unwind orders as ``sent`` before they go out, behind the same fence as
    :func:`job_lease_fence` (one statement): only for jobs this worker still holds at the
    unwinds' attempt with more than ``min_left_s`` of lease left; a job still owned with
    less left is handed back.  Returns the legs written and the fence."""
    rows = (
        conn.execute(
            _LEG_INSERT_UNWINDS,
            {
                "worker": worker_id,
                "handed_back": handed_back_owner(worker_id),
                "min_left_s": min_left_s,
                **columns,
            },
        )
        .mappings()
        .all()
    )
    legs = [row for row in rows if row["held"]]
    fence = LeaseFence(
        held=sorted({row["job_id"] for row in legs}),
        handed_back=sorted(row["job_id"] for row in rows if not row["held"]),
        db_now=rows[0]["db_now"] if rows else None,
    )
    return legs, fence
