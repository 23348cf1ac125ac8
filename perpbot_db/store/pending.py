"""Pending jobs as the tick reads them: the rolling re-score's batch, the candidates in
score order, and the scores and decisions it stores (no status changes here)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A pending job and its first attempt's legs (``exchanges``, ``sides``, ``quantities``
    aligned by leg index), as risk and admission judge it."""

    id: int
    strategy: str
    symbol: str
    notional_usd: Decimal
    expected_edge_bps: Decimal
    expected_pnl_usd: Decimal
    expected_volume_usd: Decimal | None
    risk_score: Decimal | None
    latency_score: Decimal | None
    vol_score: Decimal | None
    funding_score: Decimal | None
    liquidity_score: Decimal | None
    final_score: Decimal | None
    decision_code: str | None
    override_by: str | None
    exchanges: list[str]
    sides: list[str]
    quantities: list[Decimal]
    #: a producer's close of a position it opened (``metadata.phase = 'close'``)
    closes_position: bool


#: The job's columns from ``j``, its legs' arrays from the lateral join ``l``.
_EXPRESSIONS = {"closes_position": "coalesce(j.metadata->>'phase' = 'close', false)"}
_COLUMNS = ", ".join(
    _EXPRESSIONS.get(name)
    or ("l." if name in ("exchanges", "sides", "quantities") else "j.") + name
    for name in rows.names(PendingJob)
)

_LEGS_LATERAL = """
    CROSS JOIN LATERAL (
        SELECT array_agg(exchange ORDER BY leg_index) AS exchanges,
               array_agg(side ORDER BY leg_index) AS sides,
               array_agg(quantity ORDER BY leg_index) AS quantities
        FROM legs WHERE job_id = j.id AND attempt = 1
    ) l
"""

SELECT_FOR_RESCORE = text(
    f"""
    SELECT {_COLUMNS}
    FROM (
        SELECT * FROM hedge_jobs WHERE status = 'pending' AND scored_at < :scored_before
        ORDER BY scored_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
    ) j
    {_LEGS_LATERAL}
    """
)


def select_for_rescore(
    conn: Connection, *, limit: int, scored_before: datetime
) -> list[PendingJob]:
    """Pending jobs scored longest ago and before ``scored_before`` (never-scored first),
    locked, with their legs."""
    result = conn.execute(SELECT_FOR_RESCORE, {"limit": limit, "scored_before": scored_before})
    return [PendingJob(*row) for row in result]


SELECT_CANDIDATES = text(
    f"""
    SELECT {_COLUMNS}
    FROM (
        SELECT * FROM hedge_jobs j
        WHERE status = 'pending' AND final_score IS NOT NULL AND run_after <= :now
          AND (CAST(:after_score AS numeric) IS NULL OR final_score < :after_score
               OR (final_score = :after_score AND id > :after_id))
          AND (override_by IS NOT NULL OR decision_code IS NULL
               OR decision_code <> ALL(CAST(:held_codes AS text[])))
          -- every leg on an open market: a scalar subquery, checked row by row as the
          -- index hands rows over in score order (a NOT EXISTS would be turned into an
          -- anti-join over every pending job's legs, then sorted: 10x slower at 1M)
          AND (SELECT bool_and(
                   l.exchange || ' ' || j.symbol = ANY(CAST(:markets AS text[]))
                   OR (j.strategy = ANY(CAST(:reducing_strategies AS text[]))
                       AND l.exchange || ' ' || j.symbol
                           = ANY(CAST(:reducing_markets AS text[]))))
               FROM legs l WHERE l.job_id = j.id AND l.attempt = 1)
        ORDER BY final_score DESC NULLS LAST, id
        LIMIT :limit FOR UPDATE SKIP LOCKED
    ) j
    {_LEGS_LATERAL}
    ORDER BY j.final_score DESC, j.id
    """
)


@dataclass(frozen=True, slots=True)
class CandidateWindow:
    """Which pending jobs may be candidates: every leg on an open market (``"<exchange>
    <symbol>"``), or on a safe-mode exchange's market for a risk-reducing strategy; not
    held for a job-level reason since its last re-score (``held_codes``, unless an
    operator forced it); after ``after`` (score, id) when paging."""

    markets: Collection[str]  # a set where it is tested often (:func:`is_candidate`)
    reducing_markets: Collection[str]
    reducing_strategies: Collection[str]
    held_codes: Collection[str]
    after: tuple[Decimal, int] | None = None


def select_candidates(
    conn: Connection, *, now: datetime, limit: int, window: CandidateWindow
) -> list[PendingJob]:
    """Due, scored pending jobs in the window, best score first, locked (SKIP LOCKED), with
    their legs.  Keyset paging: pass the last row's (final_score, id) as ``window.after``."""
    after_score, after_id = window.after if window.after is not None else (None, None)
    params: dict[str, object] = {
        "now": now,
        "limit": limit,
        "after_score": None if after_score is None else str(after_score),
        "after_id": after_id,
        "held_codes": list(window.held_codes),
        "markets": list(window.markets),
        "reducing_markets": list(window.reducing_markets),
        "reducing_strategies": list(window.reducing_strategies),
    }
    return [PendingJob(*row) for row in conn.execute(SELECT_CANDIDATES, params)]


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A pending job's new score (None keeps the stored one) and why it waits (``context``:
    the decision's JSON text), decided at ``at`` (None: the statement's ``now``; the
    simulation stores decisions it held back with the time each was made)."""

    id: int
    score: Decimal | None
    code: str
    context: str
    at: datetime | None = None


_STORE_DECISIONS = text(
    """
    UPDATE hedge_jobs j
    SET final_score = coalesce(u.score, j.final_score), scored_at = coalesce(u.at, :now),
        decision_code = u.code, decision_context = u.context
    FROM unnest(
        CAST(:id AS bigint[]), CAST(:score AS numeric[]), CAST(:code AS text[]),
        CAST(:context AS jsonb[]), CAST(:at AS timestamptz[])
    ) AS u(id, score, code, context, at)
    WHERE j.id = u.id AND j.status = 'pending'
    """
)


def store_decisions(conn: Connection, *, now: datetime, decisions: Sequence[StoredDecision]) -> int:
    """Store the new scores and latest decisions of jobs still pending, scored at ``now``
    (or each at its own ``at``), in one statement; returns how many were written."""
    if not decisions:
        return 0
    params: dict[str, object] = {**rows.arrays(StoredDecision, decisions), "now": now}
    return int(conn.execute(_STORE_DECISIONS, params).rowcount)


# -- the pending jobs as a whole, for the simulation --------------------------------------


@dataclass(frozen=True, slots=True)
class PendingFacts:
    """A pending job as the tick finds it (``job``), and what decides whether a tick
    touches it: its deadline (expiry), when it was last scored (None: never; the
    rolling re-score) and when it is due (the candidates)."""

    job: PendingJob
    deadline: datetime
    scored_at: datetime | None
    run_after: datetime

    def stored(self, decision: StoredDecision, now: datetime) -> PendingFacts:
        """This job as :func:`store_decisions` leaves it once ``decision`` is stored at
        ``now`` (or the decision's own ``at``)."""
        score = self.job.final_score if decision.score is None else decision.score
        job = replace(self.job, final_score=score, decision_code=decision.code)
        return replace(self, job=job, scored_at=decision.at or now)


_PENDING_FACTS = text(
    f"""
    SELECT {_COLUMNS}, j.deadline, nullif(j.scored_at, '-infinity'), j.run_after
    FROM hedge_jobs j
    {_LEGS_LATERAL}
    WHERE j.status = 'pending'
    ORDER BY j.id
    """
)
_JOB_FIELDS = len(rows.names(PendingJob))


def pending_facts(conn: Connection) -> list[PendingFacts]:
    """Every pending job with its legs, deadline, last scoring and due time, by id."""
    out = []
    for row in conn.execute(_PENDING_FACTS):
        deadline, scored_at, run_after = row[_JOB_FIELDS:]
        out.append(PendingFacts(PendingJob(*row[:_JOB_FIELDS]), deadline, scored_at, run_after))
    return out


def is_candidate(facts: PendingFacts, *, now: datetime, window: CandidateWindow) -> bool:
    """:data:`SELECT_CANDIDATES`' filter in Python, without its paging: would the tick's
    candidate query at ``now`` return this job?  For the simulation, which holds the
    pending jobs in memory; ``test_pending_facts`` holds the two to the same answers."""
    if not may_be_candidate(facts, now=now, held_codes=window.held_codes):
        return False
    job = facts.job
    reducing = job.strategy in window.reducing_strategies
    return bool(job.exchanges) and all(
        f"{exchange} {job.symbol}" in window.markets
        or (reducing and f"{exchange} {job.symbol}" in window.reducing_markets)
        for exchange in job.exchanges
    )


def may_be_candidate(facts: PendingFacts, *, now: datetime, held_codes: Collection[str]) -> bool:
    """The job's own part of :func:`is_candidate` (scored, due, not held by a job-level
    code unless forced): False, and no window can make it a candidate."""
    job = facts.job
    if job.final_score is None or facts.run_after > now:
        return False
    return (
        job.override_by is not None
        or job.decision_code is None
        or (job.decision_code not in held_codes)
    )
