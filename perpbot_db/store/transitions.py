"""Every status change, in one place: each statement built from the lifecycle's edge tables.

A statement here takes the edges of one action (:data:`perpbot_db.domain.lifecycle.JOB_EDGES`,
:data:`~perpbot_db.domain.lifecycle.SYSTEM_EDGES`): its ``WHERE status IN (...)`` and its
``SET status = ...`` are rendered from the edge when this module is imported (as
literals, so the planner still uses the partial indexes on ``status``), and it writes
its events in the same statement: one ``job_events`` row per job and edge, with the
action, or the ``control_events`` row of a system status change.  A row in another
status is left alone and gets no event.  Nothing else in the code base writes a
job's or the system's status (tests/pure/test_lifecycle_scan.py checks).

The statements stay batched: one round trip moves a whole batch (parallel arrays
through ``unnest``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, TextClause, text

from perpbot_db.domain.decisions import Decision
from perpbot_db.domain.execution import JobRun
from perpbot_db.domain.lifecycle import (
    FINISH_PATHS,
    FINISHED,
    JOB_EDGES,
    RECOVERY_PATHS,
    STARTING,
    SYSTEM_EDGES,
    JobAction,
    JobStatus,
    SystemAction,
    SystemStatus,
    path_steps,
    sql_in,
)
from perpbot_db.store import attempts
from perpbot_db.store import rows as typed

# -- the edges as SQL --------------------------------------------------------------------


def _sources(action: JobAction) -> list[str]:
    return [s.value for s in JOB_EDGES[action].sources if s is not None]


def _one_source(action: JobAction) -> str:
    (source,) = _sources(action)
    return source


def _target(action: JobAction) -> str:
    return JOB_EDGES[action].target.value


# -- submit: null -> pending -------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class NewJobs:
    """A batch of new jobs, one list per column, aligned (numbers as text: no float ever
    touches money).  ``deadline`` is ISO 8601 text, ``None`` for the default one;
    ``metadata`` is JSON text."""

    id: list[int]
    strategy: list[str]
    symbol: list[str]
    notional_usd: list[str]
    expected_edge_bps: list[str]
    expected_pnl_usd: list[str]
    expected_volume_usd: list[str]
    risk_score: list[str | None]
    latency_score: list[str | None]
    vol_score: list[str | None]
    funding_score: list[str | None]
    liquidity_score: list[str | None]
    max_attempts: list[int]
    deadline: list[str | None]
    idempotency_key: list[str | None]
    metadata: list[str | None]

    @classmethod
    def empty(cls) -> NewJobs:
        return cls(*([] for _ in fields(cls)))


@dataclass(frozen=True, slots=True)
class NewLegs:
    """The legs of a batch of new jobs, one list per column, aligned (by ``job_id``)."""

    job_id: list[int]
    index: list[int]
    exchange: list[str]
    side: list[str]
    quantity: list[str]
    client_order_id: list[str]


#: The submission's number columns: written in their array literals unquoted.
_SUBMIT_NUMBERS = frozenset(
    {"id", "notional_usd", "expected_edge_bps", "expected_pnl_usd", "expected_volume_usd"}
    | {"risk_score", "latency_score", "vol_score", "funding_score", "liquidity_score"}
    | {"max_attempts", "leg_job_id", "leg_index", "leg_quantity"}
)

assert JOB_EDGES[JobAction.SUBMIT].sources == (None,), "a submission creates its job"

_SUBMIT = text(
    f"""
    WITH new_jobs AS (
        INSERT INTO hedge_jobs (
            id, status, strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
            expected_volume_usd, risk_score, latency_score, vol_score, funding_score,
            liquidity_score, max_attempts, deadline, idempotency_key, metadata
        )
        SELECT u.id, '{_target(JobAction.SUBMIT)}', u.strategy, u.symbol, u.notional_usd,
               u.expected_edge_bps, u.expected_pnl_usd, u.expected_volume_usd, u.risk_score,
               u.latency_score, u.vol_score, u.funding_score, u.liquidity_score, u.max_attempts,
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
        INSERT INTO job_events (job_id, from_status, to_status, action, actor, reason)
        SELECT id, NULL, '{_target(JobAction.SUBMIT)}', '{JobAction.SUBMIT}', :actor, 'submitted'
        FROM new_jobs
    )
    SELECT id FROM new_jobs
    """
)


def submit(
    conn: Connection,
    jobs: NewJobs,
    legs: NewLegs,
    *,
    actor: str,
    max_pending_s: float,
) -> set[int]:
    """``submit``: insert jobs, their legs and one ``null -> pending`` event each, in one
    statement.

    ``jobs`` and ``legs`` are parallel arrays (legs keyed by ``job_id``).  A job
    whose idempotency key already exists, in the table, its archive or earlier
    in the same batch, is skipped with its legs (the edge's guard: no job yet).
    Returns the ids actually inserted.  A batch with keys holds
    :func:`perpbot_db.store.archive.lock` (shared) first, so no job moves to the
    archive between the two checks.  A job without a deadline gets one
    ``max_pending_s`` after this statement (database clock): every pending job has
    a deadline.
    """
    columns = {**typed.values(jobs), **{f"leg_{k}": v for k, v in typed.values(legs).items()}}
    params: dict[str, object] = {
        name: _array_literal(cast(Sequence[object], values), quote=name not in _SUBMIT_NUMBERS)
        for name, values in columns.items()
    }
    params.update(actor=actor, max_pending_s=max_pending_s)
    return set(conn.execute(_SUBMIT, params).scalars())


# -- expire: pending -> expired ------------------------------------------------------------

_EXPIRE = text(
    f"""
    WITH expired AS (
        UPDATE hedge_jobs j
        SET status = '{_target(JobAction.EXPIRE)}', finished_at = :now, updated_at = :now,
            decision_code = 'deadline_passed',
            decision_context = jsonb_strip_nulls(jsonb_build_object(
                'deadline', j.deadline, 'held_code', j.decision_code,
                'held_context', j.decision_context))
        WHERE j.status = '{_one_source(JobAction.EXPIRE)}'
          AND j.deadline IS NOT NULL AND j.deadline <= :now
        RETURNING j.id, j.decision_context
    )
    INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, reason, code,
                            details)
    SELECT id, :now, '{_one_source(JobAction.EXPIRE)}', '{_target(JobAction.EXPIRE)}',
           '{JobAction.EXPIRE}', :actor,
           'deadline passed' || coalesce(', held: ' || (decision_context ->> 'held_code'), ''),
           'deadline_passed', decision_context
    FROM expired
    RETURNING job_id
    """
)


def expire(conn: Connection, *, now: datetime, actor: str) -> list[int]:
    """``expire``: pending -> expired for every job whose deadline has passed (uses the
    deadline index), with the last reason it was held (``held_code``, ``held_context``)."""
    return list(conn.execute(_EXPIRE, {"now": now, "actor": actor}).scalars())


# -- admit, reject, cancel: one edge, a batch of decisions ---------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    job_id: int
    decision: Decision
    score: Decimal | None = None


def context_json(decision: Decision) -> str:
    return json.dumps(decision.context, default=str, sort_keys=True)


#: The actions :func:`move` takes (each with its own statement); the others have theirs.
MOVES = (JobAction.ADMIT, JobAction.REJECT, JobAction.CANCEL)


def _move_sql(action: JobAction, source: str) -> TextClause:
    target = JOB_EDGES[action].target
    admitted_at = ":now" if target is JobStatus.ADMITTED else "j.admitted_at"
    finished_at = ":now" if target in FINISHED else "j.finished_at"
    return text(
        f"""
        WITH u AS (
            SELECT * FROM unnest(
                CAST(:id AS bigint[]), CAST(:score AS numeric[]), CAST(:code AS text[]),
                CAST(:context AS jsonb[])
            ) AS u(id, score, code, context)
        ),
        moved AS (
            UPDATE hedge_jobs j
            SET status = '{target.value}',
                final_score = coalesce(u.score, j.final_score),
                scored_at = CASE WHEN u.score IS NULL THEN j.scored_at ELSE :now END,
                decision_code = u.code, decision_context = u.context,
                admitted_at = {admitted_at}, finished_at = {finished_at}, updated_at = :now
            FROM u
            WHERE j.id = u.id AND j.status = '{source}'
            RETURNING j.id, u.code, u.context
        )
        INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, reason, code,
                                details)
        SELECT id, :now, '{source}', '{target.value}', '{action}', :actor, :reason, code, context
        FROM moved
        RETURNING job_id
        """
    )


_MOVE: Mapping[tuple[JobAction, str], TextClause] = {
    (action, source): _move_sql(action, source) for action in MOVES for source in _sources(action)
}


def move(
    conn: Connection,
    action: JobAction,
    outcomes: Sequence[Outcome],
    *,
    actor: str,
    reason: str,
    now: datetime,
    from_status: JobStatus | None = None,
) -> list[int]:
    """Move ``outcomes`` along ``action``'s edge, guarded by the status it starts from (the
    edge's, or ``from_status`` when it has several), one event each; returns the ids that
    moved.  A job in another status is left alone."""
    sources = _sources(action)
    if action not in MOVES:
        raise ValueError(f"{action} has its own statement, not move()")
    if from_status is None:
        if len(sources) != 1:
            raise ValueError(f"{action} starts from {sources}: say which (from_status)")
        source = sources[0]
    elif from_status.value in sources:
        source = from_status.value
    else:
        raise ValueError(f"{from_status} -> {action} is not a lifecycle edge")
    if not outcomes:
        return []
    return list(
        conn.execute(
            _MOVE[action, source],
            {
                "actor": actor,
                "reason": reason,
                "now": now,
                "id": [o.job_id for o in outcomes],
                "code": [o.decision.code.value for o in outcomes],
                "context": [context_json(o.decision) for o in outcomes],
                "score": [None if o.score is None else str(o.score) for o in outcomes],
            },
        ).scalars()
    )


# -- claim: admitted -> running ------------------------------------------------------------

_CLAIM = text(
    f"""
    WITH starting AS (
        SELECT status FROM system_state
        WHERE status IN ({sql_in(sorted(STARTING))}) FOR SHARE
    ), picked AS (
        SELECT id FROM hedge_jobs
        WHERE status = '{_one_source(JobAction.CLAIM)}' AND EXISTS (SELECT FROM starting)
        ORDER BY admitted_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE hedge_jobs j
        SET status = '{_target(JobAction.CLAIM)}', worker_id = :worker,
            attempts = j.attempts + 1,
            lease_expires_at = now() + make_interval(secs => :lease_s),
            started_at = now(), updated_at = now()
        FROM picked p WHERE j.id = p.id AND j.status = '{_one_source(JobAction.CLAIM)}'
        RETURNING j.id, j.attempts, j.max_attempts, j.strategy
    ), events AS (
        INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, reason, code,
                                details)
        SELECT id, now(), '{_one_source(JobAction.CLAIM)}', '{_target(JobAction.CLAIM)}',
               '{JobAction.CLAIM}', :worker, 'claimed', 'claimed',
               jsonb_build_object('attempt', attempts)
        FROM claimed
    ), sent AS (
        UPDATE legs l SET status = 'sent', sent_at = now(), updated_at = now()
        FROM claimed c WHERE l.job_id = c.id AND l.attempt = c.attempts AND l.status = 'pending'
        RETURNING l.*
    )
    SELECT c.attempts AS job_attempt, c.max_attempts, c.strategy AS job_strategy,
           {attempts.LEG_COLUMNS}
    FROM claimed c JOIN sent l ON l.job_id = c.id
    ORDER BY l.job_id, l.leg_index
    """
)


def claim(conn: Connection, *, worker_id: str, limit: int, lease_s: float) -> list[JobRun]:
    """``claim``: admitted -> running for up to ``limit`` jobs in one statement, their legs
    marked sent.

    Marking a leg ``sent`` before its order goes out is what makes a crash safe:
    whoever finds the job later asks the exchange before doing anything else.
    Nothing is claimed unless the system lets work start (:data:`STARTING`: a halt or
    pause stops starts).
    """
    found = conn.execute(_CLAIM, {"worker": worker_id, "limit": limit, "lease_s": lease_s})
    return attempts.jobs_of(attempts.attempt_leg(row) for row in found)


# -- finish: running -> completed | failed (-> pending), a worker's or a recovery's ---------


def _finish_events(
    paths: Mapping[JobStatus, tuple[JobAction, ...]], reasons: Mapping[JobAction, str]
) -> str:
    """A ``VALUES`` list: for each status an attempt can end in, the edges it takes, in order."""
    rows = [
        f"('{end.value}', {step}, '{source.value}', '{target.value}', '{action}', "
        f"'{reasons[action]}')"
        for end, path in paths.items()
        for step, (action, source, target) in enumerate(path_steps(path, JobStatus.RUNNING))
    ]
    return ",\n            ".join(rows)


_FINISH_REASONS = {
    JobAction.COMPLETE: "attempt ended",
    JobAction.FAIL: "attempt ended",
    JobAction.RECOVER_COMPLETE: "attempt ended (recovered)",
    JobAction.RECOVER_FAIL: "attempt ended (recovered)",
    JobAction.RETRY: "retry after backoff",
}


def _finish_sql(paths: Mapping[JobStatus, tuple[JobAction, ...]]) -> TextClause:
    sources = {path_steps(p, JobStatus.RUNNING)[0][1].value for p in paths.values()}
    (source,) = sources
    ends = sql_in(sorted(s.value for s in paths))
    retry = JobStatus.PENDING.value
    return text(
        f"""
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
            finished_at = CASE WHEN u.to_status = '{retry}' THEN NULL ELSE now() END,
            run_after = CASE WHEN u.to_status = '{retry}'
                             THEN now() + make_interval(secs => u.backoff_s) ELSE j.run_after END,
            scored_at = CASE WHEN u.to_status = '{retry}' THEN '-infinity' ELSE j.scored_at END,
            lease_expires_at = NULL, updated_at = now()
        FROM u
        WHERE j.id = u.id AND j.status = '{source}' AND j.worker_id = :worker
          AND u.to_status IN ({ends})
        RETURNING j.id, u.to_status, u.code, u.context
    ), events AS (
        INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, reason, code,
                                details)
        SELECT m.id, now(), e.from_status, e.to_status, e.action, :worker, e.reason, m.code,
               m.context
        FROM moved m JOIN (VALUES
            {_finish_events(paths, _FINISH_REASONS)}
        ) AS e(ends, step, from_status, to_status, action, reason) ON e.ends = m.to_status
        ORDER BY m.id, e.step
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
                          unwinds_leg_id, client_order_id)
        SELECT n.job_id, n.leg_index, n.attempt, n.exchange, n.symbol, n.side, n.quantity,
               n.unwinds_leg_id, n.client_order_id
        FROM unnest(
            CAST(:next_job_id AS bigint[]), CAST(:next_leg_index AS smallint[]),
            CAST(:next_attempt AS smallint[]), CAST(:next_exchange AS text[]),
            CAST(:next_symbol AS text[]), CAST(:next_side AS text[]),
            CAST(:next_quantity AS numeric[]), CAST(:next_unwinds_leg_id AS bigint[]),
            CAST(:next_client_order_id AS text[])
        ) AS n(job_id, leg_index, attempt, exchange, symbol, side, quantity, unwinds_leg_id,
               client_order_id)
        WHERE n.job_id IN (SELECT id FROM moved WHERE to_status = '{retry}')
    )
    SELECT id FROM moved
    """
    )


_FINISH = _finish_sql(FINISH_PATHS)
_RECOVER = _finish_sql(RECOVERY_PATHS)


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How one attempt ends: its job's new status (an end of :data:`FINISH_PATHS`, or of
    :data:`RECOVERY_PATHS` for a recovery) and what the job row records."""

    id: int
    to_status: str
    code: str
    context: str  # JSON: the decision context
    result: str  # JSON: the attempt's result
    unhedged: bool
    backoff_s: float  # before a retry (``to_status`` pending)


@dataclass(frozen=True, slots=True)
class BookedLeg:
    """What the exchange answered for one order of the attempt, and its realized PnL."""

    id: int
    status: str
    filled: Decimal
    avg_price: Decimal | None
    fee: Decimal
    exchange_order_id: str | None
    error: str | None
    pnl: Decimal


def finish(
    conn: Connection,
    *,
    worker_id: str,
    ends: Sequence[AttemptEnd],
    legs: Sequence[BookedLeg],
    next_legs: Sequence[attempts.NewLeg],
    recovering: bool = False,
) -> list[int]:
    """End attempts in one statement, guarded by status ``running`` and this worker's id.

    Each job's ``to_status`` picks its path (:data:`FINISH_PATHS`, or
    :data:`RECOVERY_PATHS` for a recovery): its events, one per edge
    (``running -> failed -> pending`` for a retry); its reservations released,
    its orders' fills and PnL booked, and a retry's fresh legs.  A job recovered
    from under this worker is left alone; returns the ids that moved (only those
    may be counted).
    """
    if not ends:
        return []
    paths = RECOVERY_PATHS if recovering else FINISH_PATHS
    wrong = sorted({end.to_status for end in ends if JobStatus(end.to_status) not in paths})
    if wrong:
        raise ValueError(f"to_status: an attempt does not end in {wrong}")
    params = {
        "worker": worker_id,
        **typed.arrays(AttemptEnd, ends),
        **typed.arrays(BookedLeg, legs, prefix="leg_"),
        **typed.arrays(attempts.NewLeg, next_legs, prefix="next_"),
    }
    return list(conn.execute(_RECOVER if recovering else _FINISH, params).scalars())


# -- the system status -----------------------------------------------------------------------


def _system_sql(action: SystemAction) -> TextClause:
    edge = SYSTEM_EDGES[action]
    return text(
        f"""
        WITH old AS (
            SELECT status, halt_reason FROM system_state FOR UPDATE
        ), moved AS (
            UPDATE system_state s
            SET status = '{edge.target.value}', halt_reason = :halt_reason,
                consecutive_failures = CASE WHEN :reset_failures THEN 0
                                            ELSE s.consecutive_failures END,
                updated_at = now(), updated_by = :actor
            FROM old
            WHERE s.status IN ({sql_in([x.value for x in edge.sources])})
            RETURNING old.status AS previous, old.halt_reason AS previous_halt_reason
        )
        -- clock_timestamp(): written once the guarded UPDATE got its lock, so the event's
        -- time orders it after every claim that could not see it.
        INSERT INTO control_events (at, actor, action, reason, details)
        SELECT clock_timestamp(), :actor, '{action}', :reason,
               CAST(:details AS jsonb) || jsonb_strip_nulls(jsonb_build_object(
                   'previous', previous, 'to', '{edge.target.value}',
                   'previous_halt_reason', previous_halt_reason))
        FROM moved
        RETURNING details ->> 'previous'
        """
    )


_SYSTEM: Mapping[SystemAction, TextClause] = {a: _system_sql(a) for a in SYSTEM_EDGES}


def system_move(
    conn: Connection,
    action: SystemAction,
    *,
    actor: str,
    reason: str,
    halt_reason: str | None = None,
    reset_failures: bool = False,
    details: Mapping[str, Any] | None = None,
) -> str | None:
    """Move the control row along ``action``'s edge, guarded by the statuses it starts from,
    and write its ``control_events`` row (``previous`` and ``to`` in its details) in the same
    statement; returns the status it left, or None when it was in none of them.  A halt
    keeps ``halt_reason`` (required), every other status none."""
    if (SYSTEM_EDGES[action].target is SystemStatus.HALTED) != (halt_reason is not None):
        raise ValueError(f"halt_reason: a halt needs one, {action} takes none")
    row = conn.execute(
        _SYSTEM[action],
        {
            "halt_reason": halt_reason,
            "reset_failures": reset_failures,
            "actor": actor,
            "reason": reason,
            "details": json.dumps(dict(details or {}), default=str),
        },
    ).first()
    return None if row is None else str(row[0])
