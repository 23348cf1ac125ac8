"""The statements not yet moved to their entity's module: the lifecycle's status changes
(submit, expire, admit, reject, claim, finish, retry, lease recovery, cancel, pause,
resume, halt), the tick's candidate reads, workers and the lease fence.

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

# -- hedge jobs: submission --------------------------------------------------


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


def _array_literal(values: Sequence[object], *, quote: bool = True) -> str:
    """A PostgreSQL array literal (``{"a","b",NULL}``) for ``CAST(:x AS type[])``.

    The driver's own list adaptation quotes element by element with regular
    expressions, which cost more CPU than validating the jobs (measured: 4.5 s of
    10 s writing 50,000 jobs); this is two ``str.replace`` per element.  Every
    element is quoted, so any text survives (NUL never reaches here: validation
    refuses it), and ``None`` is ``NULL``.  ``quote=False`` is for numbers only
    (ints, and decimals as text), which need no quoting."""
    if not quote:
        return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"
    return (
        "{"
        + ",".join(
            "NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


#: The submission's text columns: quoted in their array literals (the rest are numbers).
_SUBMIT_TEXT = frozenset(
    {"strategy", "symbol", "deadline", "idempotency_key", "metadata"}
    | {"exchange", "side", "client_order_id"}
)


_JOB_SUBMIT_BATCH = text(
    """
    WITH new_jobs AS (
        INSERT INTO hedge_jobs (
            id, strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
            expected_volume_usd, risk_score, latency_score, vol_score, funding_score,
            liquidity_score, max_attempts, deadline, idempotency_key, metadata
        )
        SELECT u.id, u.strategy, u.symbol, u.notional_usd, u.expected_edge_bps,
               u.expected_pnl_usd, u.expected_volume_usd, u.risk_score, u.latency_score,
               u.vol_score, u.funding_score, u.liquidity_score, u.max_attempts,
               COALESCE(u.deadline,
                        statement_timestamp() + make_interval(secs => :max_pending_s)),
               u.idempotency_key, u.metadata
        FROM unnest(
            CAST(:id AS bigint[]), CAST(:strategy AS text[]), CAST(:symbol AS text[]),
            CAST(:notional_usd AS numeric[]), CAST(:expected_edge_bps AS numeric[]),
            CAST(:expected_pnl_usd AS numeric[]), CAST(:expected_volume_usd AS numeric[]),
            CAST(:risk_score AS numeric[]), CAST(:latency_score AS numeric[]),
            CAST(:vol_score AS numeric[]), CAST(:funding_score AS numeric[]),
            CAST(:liquidity_score AS numeric[]), CAST(:max_attempts AS integer[]),
            CAST(:deadline AS timestamptz[]), CAST(:idempotency_key AS text[]),
            CAST(:metadata AS jsonb[])
        ) AS u(id, strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
               expected_volume_usd, risk_score, latency_score, vol_score, funding_score,
               liquidity_score, max_attempts, deadline, idempotency_key, metadata)
        WHERE u.idempotency_key IS NULL
           OR NOT EXISTS (SELECT FROM hedge_jobs_archive a
                          WHERE a.idempotency_key = u.idempotency_key)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, symbol
    ),
    new_legs AS (
        INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, client_order_id)
        SELECT l.job_id, l.leg_index, l.exchange, j.symbol, l.side, l.quantity, l.client_order_id
        FROM unnest(
            CAST(:leg_job_id AS bigint[]), CAST(:leg_index AS smallint[]),
            CAST(:leg_exchange AS text[]), CAST(:leg_side AS text[]),
            CAST(:leg_quantity AS numeric[]), CAST(:leg_client_order_id AS text[])
        ) AS l(job_id, leg_index, exchange, side, quantity, client_order_id)
        JOIN new_jobs j ON j.id = l.job_id
    ),
    new_events AS (
        INSERT INTO job_events (job_id, from_status, to_status, actor, reason)
        SELECT id, NULL, :to_status, :actor, 'submitted' FROM new_jobs
    )
    SELECT id FROM new_jobs
    """
)


def job_submit_batch(
    conn: Connection,
    jobs: dict[str, list[Any]],
    legs: dict[str, list[Any]],
    *,
    to_status: str,
    actor: str,
    max_pending_s: float,
) -> set[int]:
    """Insert jobs, their legs and one ``null -> pending`` event each, in one statement.

    ``jobs`` and ``legs`` are parallel arrays (legs keyed by ``job_id``).  A job
    whose idempotency key already exists, in the table, its archive or earlier
    in the same batch, is skipped with its legs.  Returns the ids actually
    inserted.  A batch with keys holds :func:`archive_lock` (shared) first, so no
    job moves to the archive between the two checks.  A job without a deadline
    gets one ``max_pending_s`` after this statement (database clock): every
    pending job has a deadline.
    """
    params: dict[str, Any] = {
        k: _array_literal(v, quote=k in _SUBMIT_TEXT) for k, v in jobs.items()
    }
    params.update(
        {
            f"leg_{k}" if k != "leg_index" else k: _array_literal(v, quote=k in _SUBMIT_TEXT)
            for k, v in legs.items()
        }
    )
    params.update(to_status=to_status, actor=actor, max_pending_s=max_pending_s)
    return set(conn.execute(_JOB_SUBMIT_BATCH, params).scalars())


def job_ids_by_idempotency_key(conn: Connection, keys: list[str]) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT idempotency_key, id FROM hedge_jobs_all "
            "WHERE idempotency_key = ANY(CAST(:keys AS text[]))"
        ),
        {"keys": keys},
    )
    return {key: job_id for key, job_id in rows}


# -- control -------------------------------------------------------------------

_SYSTEM_STATE_SET = text(
    """
    UPDATE system_state
    SET status = :to_status, halt_reason = :halt_reason,
        consecutive_failures = CASE WHEN :reset_failures THEN 0 ELSE consecutive_failures END,
        updated_at = now(), updated_by = :actor
    WHERE status = ANY(CAST(:from_statuses AS text[]))
    RETURNING status
    """
)


def system_state_set_status(
    conn: Connection,
    *,
    from_statuses: list[str],
    to_status: str,
    actor: str,
    halt_reason: str | None = None,
    reset_failures: bool = False,
) -> bool:
    """Move the control row, guarded by the statuses it may come from."""
    row = conn.execute(
        _SYSTEM_STATE_SET,
        {
            "from_statuses": from_statuses,
            "to_status": to_status,
            "halt_reason": halt_reason,
            "actor": actor,
            "reset_failures": reset_failures,
        },
    ).first()
    return row is not None


# -- the admission tick ----------------------------------------------------------

_JOB_EXPIRE_OVERDUE = text(
    """
    WITH expired AS (
        UPDATE hedge_jobs j
        SET status = 'expired', finished_at = :now, updated_at = :now,
            decision_code = 'deadline_passed',
            decision_context = jsonb_strip_nulls(jsonb_build_object(
                'deadline', j.deadline, 'held_code', j.decision_code,
                'held_context', j.decision_context))
        WHERE j.status = 'pending' AND j.deadline IS NOT NULL AND j.deadline <= :now
        RETURNING j.id, j.decision_context
    )
    INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
    SELECT id, :now, 'pending', 'expired', :actor,
           'deadline passed' || coalesce(', held: ' || (decision_context ->> 'held_code'), ''),
           'deadline_passed', decision_context
    FROM expired
    RETURNING job_id
    """
)


def job_expire_overdue(conn: Connection, *, now: datetime, actor: str) -> list[int]:
    """pending -> expired for every job whose deadline has passed (uses the deadline index),
    with the last reason it was held (``held_code``, ``held_context``) in its context."""
    return list(conn.execute(_JOB_EXPIRE_OVERDUE, {"now": now, "actor": actor}).scalars())


_JOB_TRANSITION_BATCH = text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:id AS bigint[]), CAST(:score AS numeric[]), CAST(:code AS text[]),
            CAST(:context AS jsonb[])
        ) AS u(id, score, code, context)
    ),
    moved AS (
        UPDATE hedge_jobs j
        SET status = :to_status,
            final_score = coalesce(u.score, j.final_score),
            scored_at = CASE WHEN u.score IS NULL THEN j.scored_at ELSE :now END,
            decision_code = u.code, decision_context = u.context,
            admitted_at = CASE WHEN :to_status = 'admitted' THEN :now ELSE j.admitted_at END,
            finished_at = CASE WHEN :finishes THEN :now ELSE j.finished_at END,
            updated_at = :now
        FROM u
        WHERE j.id = u.id AND j.status = :from_status
        RETURNING j.id, u.code, u.context
    )
    INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
    SELECT id, :now, :from_status, :to_status, :actor, :reason, code, context FROM moved
    RETURNING job_id
    """
)


def job_transition_batch(
    conn: Connection,
    *,
    from_status: str,
    to_status: str,
    finishes: bool,
    actor: str,
    reason: str,
    now: datetime,
    ids: list[int],
    codes: list[str],
    contexts: list[str],
    scores: list[str | None],
) -> list[int]:
    """Move jobs along one lifecycle edge, guarded by ``from_status``, with one event each.

    Returns the ids that moved; a job no longer in ``from_status`` is left alone.
    Callers go through :mod:`perpbot_db.store.transitions`, which checks the edge.
    """
    if not ids:
        return []
    return list(
        conn.execute(
            _JOB_TRANSITION_BATCH,
            {
                "from_status": from_status,
                "to_status": to_status,
                "finishes": finishes,
                "actor": actor,
                "reason": reason,
                "now": now,
                "id": ids,
                "code": codes,
                "context": contexts,
                "score": scores,
            },
        ).scalars()
    )


# -- cancel ----------------------------------------------------------------------


def job_status_lock(conn: Connection, job_id: int) -> str | None:
    """The job's status, its row locked for the rest of the transaction (None: no such job)."""
    value = conn.execute(
        text("SELECT status FROM hedge_jobs WHERE id = :id FOR UPDATE"), {"id": job_id}
    ).scalar()
    return None if value is None else str(value)


# -- workers: claim, lease, finish ----------------------------------------------------

#: System statuses in which new work may start (admission and claims alike).
STARTING_STATUSES = ("running", "manual_override")

_LEG_COLUMNS = """
    l.id, l.job_id, l.leg_index, l.attempt, l.exchange, l.symbol, l.side, l.quantity,
    l.reduce_only, l.unwinds_leg_id, l.client_order_id, l.status, l.filled_quantity,
    l.avg_price, l.fee_usd, l.exchange_order_id, l.error
"""


_JOB_CLAIM_BATCH = text(
    f"""
    WITH starting AS (
        SELECT status FROM system_state
        WHERE status = ANY(CAST(:starting AS text[])) FOR SHARE
    ), picked AS (
        SELECT id FROM hedge_jobs
        WHERE status = 'admitted' AND EXISTS (SELECT FROM starting)
        ORDER BY admitted_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE hedge_jobs j
        SET status = 'running', worker_id = :worker, attempts = j.attempts + 1,
            lease_expires_at = now() + make_interval(secs => :lease_s),
            started_at = now(), updated_at = now()
        FROM picked p WHERE j.id = p.id AND j.status = 'admitted'
        RETURNING j.id, j.attempts, j.max_attempts
    ), events AS (
        INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
        SELECT id, now(), 'admitted', 'running', :worker, 'claimed', 'claimed',
               jsonb_build_object('attempt', attempts)
        FROM claimed
    ), sent AS (
        UPDATE legs l SET status = 'sent', sent_at = now(), updated_at = now()
        FROM claimed c WHERE l.job_id = c.id AND l.attempt = c.attempts AND l.status = 'pending'
        RETURNING l.*
    )
    SELECT c.attempts AS job_attempt, c.max_attempts, {_LEG_COLUMNS}
    FROM claimed c JOIN sent l ON l.job_id = c.id
    ORDER BY l.job_id, l.leg_index
    """
)


def job_claim_batch(
    conn: Connection, *, worker_id: str, limit: int, lease_s: float
) -> Sequence[RowMapping]:
    """admitted -> running for up to ``limit`` jobs in one statement, their legs marked sent.

    Marking a leg ``sent`` before its order goes out is what makes a crash safe:
    whoever finds the job later asks the exchange before doing anything else.
    Nothing is claimed unless the system is running (a halt or pause stops starts).
    """
    return (
        conn.execute(
            _JOB_CLAIM_BATCH,
            {
                "worker": worker_id,
                "limit": limit,
                "lease_s": lease_s,
                "starting": list(STARTING_STATUSES),
            },
        )
        .mappings()
        .all()
    )


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


_JOB_FINISH_BATCH = text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:id AS bigint[]), CAST(:to_status AS text[]), CAST(:code AS text[]),
            CAST(:context AS jsonb[]), CAST(:result AS jsonb[]), CAST(:unhedged AS boolean[]),
            CAST(:backoff_s AS float8[])
        ) AS u(id, to_status, code, context, result, unhedged, backoff_s)
    ), moved AS (
        UPDATE hedge_jobs j
        SET status = u.to_status, decision_code = u.code, decision_context = u.context,
            result = u.result, unhedged = j.unhedged OR u.unhedged,
            finished_at = CASE WHEN u.to_status = 'pending' THEN NULL ELSE now() END,
            run_after = CASE WHEN u.to_status = 'pending'
                             THEN now() + make_interval(secs => u.backoff_s) ELSE j.run_after END,
            scored_at = CASE WHEN u.to_status = 'pending' THEN '-infinity' ELSE j.scored_at END,
            lease_expires_at = NULL, updated_at = now()
        FROM u
        WHERE j.id = u.id AND j.status = 'running' AND j.worker_id = :worker
        RETURNING j.id, u.to_status, u.code, u.context
    ), events AS (
        INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
        SELECT m.id, now(), e.from_status, e.to_status, :worker, e.reason, m.code, m.context
        FROM moved m CROSS JOIN LATERAL (VALUES
            ('running', CASE WHEN m.to_status = 'pending' THEN 'failed' ELSE m.to_status END,
             'attempt ended'),
            ('failed', 'pending', 'retry after backoff')
        ) AS e(from_status, to_status, reason)
        WHERE e.from_status = 'running' OR m.to_status = 'pending'
    ), released AS (
        UPDATE capital_reservations
        SET status = 'released', released_at = now(), release_reason = 'job ' || m.to_status
        FROM moved m WHERE job_id = m.id AND status = 'active'
    ), booked AS (
        UPDATE legs l
        SET status = v.status, filled_quantity = v.filled, avg_price = v.avg_price,
            fee_usd = v.fee, exchange_order_id = v.exchange_order_id, error = v.error,
            realized_pnl_usd = v.pnl, booked_at = now(), updated_at = now()
        FROM unnest(
            CAST(:leg_id AS bigint[]), CAST(:leg_status AS text[]), CAST(:leg_filled AS numeric[]),
            CAST(:leg_avg_price AS numeric[]), CAST(:leg_fee AS numeric[]),
            CAST(:leg_exchange_order_id AS text[]), CAST(:leg_error AS text[]),
            CAST(:leg_pnl AS numeric[])
        ) AS v(id, status, filled, avg_price, fee, exchange_order_id, error, pnl)
        WHERE l.id = v.id AND l.job_id IN (SELECT id FROM moved)
    ), next_legs AS (
        INSERT INTO legs (job_id, leg_index, attempt, exchange, symbol, side, quantity,
                          client_order_id)
        SELECT n.job_id, n.leg_index, n.attempt, n.exchange, n.symbol, n.side, n.quantity,
               n.client_order_id
        FROM unnest(
            CAST(:next_job_id AS bigint[]), CAST(:next_leg_index AS smallint[]),
            CAST(:next_attempt AS smallint[]), CAST(:next_exchange AS text[]),
            CAST(:next_symbol AS text[]), CAST(:next_side AS text[]),
            CAST(:next_quantity AS numeric[]), CAST(:next_client_order_id AS text[])
        ) AS n(job_id, leg_index, attempt, exchange, symbol, side, quantity, client_order_id)
        WHERE n.job_id IN (SELECT id FROM moved WHERE to_status = 'pending')
    )
    SELECT id FROM moved
    """
)


def job_finish_batch(
    conn: Connection,
    *,
    worker_id: str,
    jobs: dict[str, list[Any]],
    legs: dict[str, list[Any]],
    next_legs: dict[str, list[Any]],
) -> list[int]:
    """End attempts in one statement, guarded by status ``running`` and this worker's id.

    For each job that moved: its events (``running -> failed -> pending`` for a
    retry), its reservations released, its orders' fills and PnL booked, and a
    retry's fresh legs.  A job recovered from under this worker is left alone;
    returns the ids that moved (only those may be counted).
    """
    if not jobs["id"]:
        return []
    params: dict[str, Any] = {"worker": worker_id, **jobs, **legs, **next_legs}
    return list(conn.execute(_JOB_FINISH_BATCH, params).scalars())
