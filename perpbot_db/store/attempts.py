"""A running job's attempt as the worker path reads and writes it, its status aside.

* :class:`AttemptLeg` — a leg of the current attempt as a claim or a recovery reads it;
  :func:`jobs_of` turns such rows into the domain's
  :class:`~perpbot_db.domain.execution.JobRun` (the one place rows become jobs);
* the lease: :func:`recover_expired` takes over jobs whose lease ran out, :func:`fence`
  decides right before orders leave which jobs may send, :func:`hand_back` and
  :func:`hand_back_all` give jobs up to recovery;
* :func:`insert_unwinds` records reduce-only orders (:class:`NewLeg`) behind the
  same fence.

The status changes of an attempt (claim, finish) are in
:mod:`perpbot_db.store.transitions`, built from the lifecycle's edges; they read and
write the types defined here.  Batches travel as parallel arrays (``unnest``): one round
trip writes a whole batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, text

from perpbot_db.domain.execution import Fill, JobRun, LegRun
from perpbot_db.domain.lifecycle import LegStatus, Side, Strategy
from perpbot_db.store import rows as typed

# -- the legs of an attempt ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptLeg:
    """One leg of a claimed or recovered job's current attempt, with its job's attempt."""

    job_attempt: int
    max_attempts: int
    job_strategy: str
    id: int
    job_id: int
    leg_index: int
    attempt: int
    exchange: str
    symbol: str
    side: str
    quantity: Decimal
    reduce_only: bool
    unwinds_leg_id: int | None
    client_order_id: str
    status: str
    filled_quantity: Decimal
    avg_price: Decimal | None
    fee_usd: Decimal
    exchange_order_id: str | None
    error: str | None


_JOB_FIELDS = ("job_attempt", "max_attempts", "job_strategy")

#: The leg columns of :class:`AttemptLeg` (``l.id, l.job_id, ...``), after its job's three.
LEG_COLUMNS = ", ".join(f"l.{name}" for name in typed.names(AttemptLeg) if name not in _JOB_FIELDS)


def attempt_leg(row: Row[Any]) -> AttemptLeg:
    """A result row (``job_attempt, max_attempts, job_strategy, <LEG_COLUMNS>``, extra
    columns ignored)."""
    found = row._mapping
    return AttemptLeg(*(found[name] for name in typed.names(AttemptLeg)))


def _fill(leg: AttemptLeg) -> Fill | None:
    if leg.status in (LegStatus.PENDING.value, LegStatus.SENT.value):
        return None  # not known yet: the exchange is asked
    return Fill(
        status=LegStatus(leg.status),
        filled=leg.filled_quantity,
        avg_price=leg.avg_price,
        fee_usd=leg.fee_usd,
        exchange_order_id=leg.exchange_order_id,
        error=leg.error,
    )


def jobs_of(legs: Iterable[AttemptLeg]) -> list[JobRun]:
    """Legs, ordered by job, as jobs with their legs."""
    by_job: dict[int, list[LegRun]] = defaultdict(list)
    heads: dict[int, AttemptLeg] = {}
    for leg in legs:
        heads.setdefault(leg.job_id, leg)
        by_job[leg.job_id].append(
            LegRun(
                id=leg.id,
                job_id=leg.job_id,
                leg_index=leg.leg_index,
                attempt=leg.attempt,
                exchange=leg.exchange,
                symbol=leg.symbol,
                side=Side(leg.side),
                quantity=leg.quantity,
                client_order_id=leg.client_order_id,
                reduce_only=leg.reduce_only,
                unwinds_leg_id=leg.unwinds_leg_id,
                fill=_fill(leg),
            )
        )
    return [
        JobRun(
            id=job_id,
            attempt=head.job_attempt,
            max_attempts=head.max_attempts,
            symbol=by_job[job_id][0].symbol,
            legs=tuple(by_job[job_id]),
            reduces_exposure=head.job_strategy == Strategy.HEDGE_REBALANCE,
        )
        for job_id, head in heads.items()
    ]


# -- lease recovery ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovered:
    """Jobs taken over by a recovery, and the worker each was taken from."""

    jobs: list[JobRun]
    lost_workers: dict[int, str | None]


RECOVER_EXPIRED = text(
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
        RETURNING j.id, j.attempts, j.max_attempts, j.strategy, p.lost_worker, p.lost_lease
    )
    SELECT c.attempts AS job_attempt, c.max_attempts, c.strategy AS job_strategy, {LEG_COLUMNS},
           c.lost_worker
    FROM stolen c JOIN legs l ON l.job_id = c.id AND l.attempt = c.attempts
    ORDER BY l.job_id, l.leg_index
    """
)


def recover_expired(conn: Connection, *, worker_id: str, limit: int, lease_s: float) -> Recovered:
    """Take over running jobs whose lease expired: the status and lease are re-checked in the
    statement that writes the new owner, so a worker renewing in time keeps its job."""
    found = conn.execute(
        RECOVER_EXPIRED, {"worker": worker_id, "limit": limit, "lease_s": lease_s}
    ).all()
    return Recovered(
        jobs=jobs_of(attempt_leg(row) for row in found),
        lost_workers={row.job_id: row.lost_worker for row in found},
    )


# -- handing jobs back -------------------------------------------------------------------------


def handed_back_owner(worker_id: str) -> str:
    """The owner a job is handed back to: neither the worker's heartbeat nor its finish
    matches it again, and recovery takes it once its lease is past."""
    return f"{worker_id}:handed-back"


HAND_BACK = text(
    "UPDATE hedge_jobs SET lease_expires_at = greatest(now() - interval '1 microsecond', "
    "CAST(:not_before AS timestamptz)), worker_id = :owner, updated_at = now() "
    "WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'running' AND worker_id = :worker"
)


def hand_back(
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
        HAND_BACK,
        {
            "ids": list(job_ids),
            "worker": worker_id,
            "owner": handed_back_owner(worker_id),
            "not_before": not_before,
        },
    )
    return int(result.rowcount)


HAND_BACK_ALL = text(
    "UPDATE hedge_jobs SET worker_id = :owner, updated_at = now() "
    "WHERE status = 'running' AND worker_id = :worker"
)


def hand_back_all(conn: Connection, *, worker_id: str) -> int:
    """Give up every job still running under this worker's id while it holds none in hand.

    A claim whose commit went through but whose answer was lost with the connection
    leaves such jobs behind (their legs marked ``sent``, nothing sent), and so does a
    batch cut off after its orders left: recovery asks the exchange and settles them.
    Their lease is left to run out, not cut short: it outlasts every order the fence
    let out, so recovery asks only once those orders can no longer arrive."""
    result = conn.execute(
        HAND_BACK_ALL, {"worker": worker_id, "owner": handed_back_owner(worker_id)}
    )
    return int(result.rowcount)


# -- the lease fence ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
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


FENCE = text(
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


def fence(
    conn: Connection, *, worker_id: str, attempts: Mapping[int, int], min_left_s: float
) -> LeaseFence:
    """The fence right before a batch's orders leave, in one statement.

    A job (a key of ``attempts``) is held when it is still ``running``, owned by
    ``worker_id``, at the attempt whose orders are about to go (its value), with
    more than ``min_left_s`` of lease left.  Still owned but with less left:
    handed back to recovery in the same statement, so a worker that stalled
    between its claim and its send never sends.  Recovery takes a job over by
    changing its owner in one guarded statement once its lease is past, so a held
    job cannot be recovered before ``db_now + min_left_s``, and the orders' expiry
    is no later than that.  Held jobs are only read: the common path writes nothing.
    """
    row = conn.execute(
        FENCE,
        {
            "job_id": list(attempts),
            "attempt": list(attempts.values()),
            "worker": worker_id,
            "handed_back": handed_back_owner(worker_id),
            "min_left_s": min_left_s,
        },
    ).one()
    return LeaseFence(list(row.held), list(row.handed_back), row.db_now)


# -- unwinds -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewLeg:
    """An order of a running job to record before it goes out: an unwind (``unwinds_leg_id``
    set; :func:`insert_unwinds` records it ``sent``) or a leg of a retry's next attempt
    (the finish records it ``pending``)."""

    job_id: int
    leg_index: int
    attempt: int
    exchange: str
    symbol: str
    side: str
    quantity: Decimal
    unwinds_leg_id: int | None
    client_order_id: str

    @classmethod
    def of(cls, leg: LegRun) -> NewLeg:
        return cls(
            job_id=leg.job_id,
            leg_index=leg.leg_index,
            attempt=leg.attempt,
            exchange=leg.exchange,
            symbol=leg.symbol,
            side=leg.side.value,
            quantity=leg.quantity,
            unwinds_leg_id=leg.unwinds_leg_id,
            client_order_id=leg.client_order_id,
        )


INSERT_UNWINDS = text(
    f"""
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:job_id AS bigint[]), CAST(:leg_index AS smallint[]), CAST(:attempt AS smallint[]),
            CAST(:exchange AS text[]), CAST(:symbol AS text[]), CAST(:side AS text[]),
            CAST(:quantity AS numeric[]), CAST(:unwinds_leg_id AS bigint[]),
            CAST(:client_order_id AS text[])
        ) AS u(job_id, leg_index, attempt, exchange, symbol, side, quantity, unwinds_leg_id,
               client_order_id)
    ), asked AS (
        SELECT DISTINCT job_id AS id, attempt FROM u
    ), {_fence_ctes("asked")}, inserted AS (
        INSERT INTO legs (job_id, leg_index, attempt, exchange, symbol, side, quantity,
                          reduce_only, unwinds_leg_id, client_order_id, status, sent_at)
        SELECT u.job_id, u.leg_index, u.attempt, u.exchange, u.symbol, u.side, u.quantity, true,
               u.unwinds_leg_id, u.client_order_id, 'sent', now()
        FROM u JOIN fence f ON f.id = u.job_id AND f.held
        RETURNING id, job_id, leg_index
    )
    SELECT true AS held, job_id, id, leg_index, now() AS db_now FROM inserted
    UNION ALL
    SELECT false, id, NULL, NULL, now() FROM handed
    """
)


def insert_unwinds(
    conn: Connection, *, worker_id: str, orders: Sequence[LegRun], min_left_s: float
) -> tuple[dict[tuple[int, int], int], LeaseFence]:
    """Record unwind orders (reduce-only legs, :meth:`perpbot_db.domain.execution.Unwind.order`)
    as ``sent`` before they go out, behind the same fence as
    :func:`fence` (one statement): only for jobs this worker still holds at the
    unwinds' attempt with more than ``min_left_s`` of lease left; a job still owned with
    less left is handed back.  Returns the new legs' ids by (job id, leg index), and
    the fence."""
    found = conn.execute(
        INSERT_UNWINDS,
        {
            "worker": worker_id,
            "handed_back": handed_back_owner(worker_id),
            "min_left_s": min_left_s,
            **typed.arrays(NewLeg, [NewLeg.of(leg) for leg in orders]),
        },
    ).all()
    written = {(row.job_id, row.leg_index): row.id for row in found if row.held}
    return written, LeaseFence(
        held=sorted({job_id for job_id, _ in written}),
        handed_back=sorted(row.job_id for row in found if not row.held),
        db_now=found[0].db_now if found else None,
    )
