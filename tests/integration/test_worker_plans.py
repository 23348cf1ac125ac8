"""The workers' hottest statements read their partial indexes at scale: claim and lease recovery.

50,000 jobs, most of them finished, a few thousand admitted and running (some with an
expired lease), two legs each.  Each statement is EXPLAINed with the parameters a worker
and a recovery pass send: it must take its batch off its partial index in order, and
reach the legs by job id, never scanning ``hedge_jobs`` or ``legs`` whole.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Connection, Engine, TextClause, text

from perpbot_db.store import attempts, transitions
from perpbot_db.store import rows as typed

JOBS = 50_000


def _explain(conn: Connection, statement: TextClause, params: dict[str, object]) -> str:
    return "\n".join(conn.execute(text("EXPLAIN " + statement.text), params).scalars())


def _cte(plan: str, name: str) -> str:
    """The plan of one CTE: from its ``CTE name`` line to the next line as little indented."""
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"CTE {name}")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if len(lines[i]) - len(lines[i].lstrip()) <= indent
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


@pytest.fixture
def busy_queue(engine: Engine) -> Engine:
    """50,000 jobs: 1 in 20 admitted, 1 in 20 running (half of those with an expired lease),
    1 in 10 pending, the rest completed; two legs each."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                WITH j AS (
                    INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd,
                                            final_score, deadline, status, admitted_at,
                                            started_at, finished_at, worker_id,
                                            lease_expires_at, attempts)
                    SELECT 'arb', 'BTC/USDT:USDT', 970, 1940, g % 100, now() + interval '1 h',
                           s.status,
                           CASE WHEN s.status <> 'pending' THEN now() - interval '1 min' END,
                           CASE WHEN s.status IN ('running', 'completed')
                                THEN now() - interval '30 s' END,
                           CASE WHEN s.status = 'completed' THEN now() END,
                           CASE WHEN s.status = 'running' THEN 'w' || g % 7 END,
                           CASE WHEN s.status = 'running'
                                THEN now() + (CASE WHEN g / 20 % 2 = 0 THEN -1 ELSE 1 END)
                                             * interval '20 s' END,
                           CASE WHEN s.status IN ('running', 'completed') THEN 1 ELSE 0 END
                    FROM generate_series(1, :jobs) g
                    CROSS JOIN LATERAL (SELECT CASE
                        WHEN g % 20 = 0 THEN 'admitted'
                        WHEN g % 20 = 1 THEN 'running'
                        WHEN g % 10 = 2 THEN 'pending'
                        ELSE 'completed' END AS status) s
                    RETURNING id, status
                )
                INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity,
                                  client_order_id, status)
                SELECT id, k, (ARRAY['binance', 'okx'])[k + 1], 'BTC/USDT:USDT',
                       (ARRAY['buy', 'sell'])[k + 1], 0.01, 'pb' || id || 'L' || k || 'A1',
                       CASE j.status WHEN 'completed' THEN 'filled'
                                     WHEN 'running' THEN 'sent' ELSE 'pending' END
                FROM j CROSS JOIN generate_series(0, 1) k
                """
            ),
            {"jobs": JOBS},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("hedge_jobs", "legs", "system_state"):
            conn.execute(text(f"ANALYZE {table}"))
    return engine


def test_claim_takes_admitted_jobs_off_their_index_and_legs_by_job(busy_queue: Engine) -> None:
    """A worker's claim: the oldest admitted jobs in (admitted_at, id) order straight off
    ``ix_hedge_jobs_admitted`` (no sort of every admitted job), legs by job id."""
    with busy_queue.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM hedge_jobs")).scalar_one() == JOBS
        plan = _explain(
            conn,
            transitions._CLAIM,
            {
                "worker": "w-plan",
                "limit": 50,  # the default worker_concurrency
                "lease_s": 30.0,
            },
        )
        conn.rollback()
    picked = _cte(plan, "picked")
    assert "Index Scan using ix_hedge_jobs_admitted on hedge_jobs" in picked, plan
    assert "Sort" not in picked, plan  # the index's (admitted_at, id) order is the claim's
    assert "Index Scan using uq_legs_job_id_leg_index_attempt on legs" in _cte(plan, "sent"), plan
    assert "Seq Scan on hedge_jobs" not in plan and "Seq Scan on legs" not in plan, plan


def test_lease_recovery_takes_expired_leases_off_their_index(busy_queue: Engine) -> None:
    """Recovery: running jobs whose lease is past, oldest lease first, straight off
    ``ix_hedge_jobs_running_lease``; their legs by job id."""
    with busy_queue.connect() as conn:
        expired = conn.execute(
            text(
                "SELECT count(*) FROM hedge_jobs "
                "WHERE status = 'running' AND lease_expires_at < now()"
            )
        ).scalar_one()
        assert 0 < expired < JOBS // 20
        plan = _explain(
            conn,
            attempts.RECOVER_EXPIRED,
            {"worker": "recovery-plan", "limit": 200, "lease_s": 30.0},  # recovery's batch
        )
        conn.rollback()
    picked = _cte(plan, "picked")
    assert "Index Scan using ix_hedge_jobs_running_lease on hedge_jobs" in picked, plan
    assert "Sort" not in picked, plan  # the index's order is the oldest lease first
    assert "Seq Scan on hedge_jobs" not in plan and "Seq Scan on legs" not in plan, plan


def test_finish_reaches_its_jobs_legs_and_reservations_by_key(busy_queue: Engine) -> None:
    """A worker's finish of a 50-job batch: each job by primary key, its legs and its
    reservations by job id; never a scan of ``hedge_jobs``, ``legs`` or the reservations."""
    with busy_queue.connect() as conn:
        running = list(
            conn.execute(
                text(
                    "SELECT j.id, l.id FROM hedge_jobs j JOIN legs l ON l.job_id = j.id "
                    "WHERE j.status = 'running' AND j.worker_id = 'w1' ORDER BY j.id LIMIT 100"
                )
            )
        )
        job_ids = sorted({job_id for job_id, _ in running})
        assert len(job_ids) == 50
        ends = [
            transitions.AttemptEnd(job_id, "completed", "filled", "{}", "{}", False, 5.0)
            for job_id in job_ids
        ]
        legs = [
            transitions.BookedLeg(leg_id, "filled", Decimal("0.01"), Decimal(97000),
                                  Decimal("0.4"), f"x{leg_id}", None, Decimal(0))
            for _, leg_id in running
        ]  # fmt: skip
        plan = _explain(
            conn,
            transitions._FINISH,
            {
                "worker": "w1",
                **typed.arrays(transitions.AttemptEnd, ends),
                **typed.arrays(transitions.BookedLeg, legs, prefix="leg_"),
                **typed.arrays(attempts.NewLeg, [], prefix="next_"),
            },
        )
        conn.rollback()
    moved = _cte(plan, "moved")
    assert "Index Scan using pk_hedge_jobs on hedge_jobs" in moved, plan
    booked = _cte(plan, "booked")
    assert "Index Scan using uq_legs_job_id_leg_index_attempt on legs" in booked, plan
    released = _cte(plan, "released")
    assert "capital_reservations" in released and "Seq Scan" not in released, plan
    assert "Seq Scan on hedge_jobs" not in plan and "Seq Scan on legs" not in plan, plan
