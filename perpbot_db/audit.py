"""``perpbot audit``: the invariants of DESIGN.md, each checked by one SQL query.

Each check returns the rows that break it (empty = holds), so an operator can
run the same SQL by hand.  Checks that need execution data (counters, fills)
hold trivially until workers write it and then start to bite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from perpbot_db.lifecycle import TRANSITIONS, sql_in


@dataclass(frozen=True)
class Breach:
    invariant: int
    name: str
    detail: dict[str, Any]

    def __str__(self) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"invariant {self.invariant} ({self.name}): {ctx}"


_EDGES = ", ".join(
    f"({'NULL' if a is None else repr(a.value)}::text, {b.value!r}::text)" for a, b in TRANSITIONS
)

CHECKS: dict[tuple[int, str], str] = {
    (1, "exchange in-flight cap"): """
        SELECT e.name AS exchange, sum(r.amount_usd) AS reserved_usd,
               e.inflight_cap * e.equity_usd AS limit_usd
        FROM capital_reservations r JOIN exchanges e ON e.name = r.exchange
        WHERE r.status = 'active'
        GROUP BY e.name, e.inflight_cap, e.equity_usd
        HAVING sum(r.amount_usd) > e.inflight_cap * e.equity_usd
    """,
    (1, "single-job cap"): """
        SELECT r.job_id, r.exchange, r.amount_usd, e.single_job_cap * e.equity_usd AS limit_usd
        FROM capital_reservations r JOIN exchanges e ON e.name = r.exchange
        WHERE r.status = 'active' AND r.amount_usd > e.single_job_cap * e.equity_usd
    """,
    (1, "tier budget"): """
        SELECT e.name AS exchange, r.tier, sum(r.amount_usd) AS reserved_usd,
               e.equity_usd * CASE r.tier WHEN 'volume' THEN e.volume_share
                   WHEN 'arbitrage' THEN e.arbitrage_share ELSE e.reserve_share END AS budget_usd
        FROM capital_reservations r JOIN exchanges e ON e.name = r.exchange
        WHERE r.status = 'active'
        GROUP BY e.name, r.tier, e.equity_usd, e.volume_share, e.arbitrage_share, e.reserve_share
        HAVING sum(r.amount_usd) > e.equity_usd * CASE r.tier WHEN 'volume' THEN e.volume_share
                   WHEN 'arbitrage' THEN e.arbitrage_share ELSE e.reserve_share END
    """,
    (2, "capital held iff admitted or running"): """
        SELECT j.id AS job_id, j.status, count(r.id) AS active_reservations
        FROM hedge_jobs j
        LEFT JOIN capital_reservations r ON r.job_id = j.id AND r.status = 'active'
        WHERE j.status IN ('admitted', 'running') OR r.id IS NOT NULL
        GROUP BY j.id, j.status
        HAVING (j.status IN ('admitted', 'running')) <> (count(r.id) > 0)
    """,
    (3, "events form a lifecycle path"): f"""
        WITH e AS (
            SELECT job_id, from_status, to_status,
                   lag(to_status) OVER w AS previous,
                   row_number() OVER w AS n,
                   count(*) OVER (PARTITION BY job_id) AS total
            FROM job_events WINDOW w AS (PARTITION BY job_id ORDER BY id)
        ),
        bad_steps AS (
            SELECT DISTINCT job_id FROM e
            WHERE from_status IS DISTINCT FROM previous
               OR (from_status, to_status) NOT IN ({_EDGES})
        ),
        last AS (SELECT job_id, to_status FROM e WHERE n = total)
        SELECT j.id AS job_id, j.status, l.to_status AS last_event
        FROM hedge_jobs j LEFT JOIN last l ON l.job_id = j.id
        WHERE l.to_status IS DISTINCT FROM j.status
           OR j.id IN (SELECT job_id FROM bad_steps)
    """,
    (6, "running jobs per exchange"): """
        SELECT e.name AS exchange, count(DISTINCT j.id) AS running, e.max_concurrent_jobs
        FROM hedge_jobs j JOIN legs l ON l.job_id = j.id AND l.attempt = 1
        JOIN exchanges e ON e.name = l.exchange
        WHERE j.status = 'running'
        GROUP BY e.name, e.max_concurrent_jobs
        HAVING count(DISTINCT j.id) > e.max_concurrent_jobs
    """,
    (8, "finished job flat or flagged unhedged"): f"""
        SELECT j.id AS job_id, j.status,
               sum(CASE l.side WHEN 'buy' THEN l.filled_quantity
                   ELSE -l.filled_quantity END) AS net_quantity
        FROM hedge_jobs j JOIN legs l ON l.job_id = j.id
        WHERE j.status IN ({sql_in(["completed", "failed"])}) AND NOT j.unhedged
          AND j.strategy <> 'hedge_rebalance'
        GROUP BY j.id, j.status
        HAVING sum(CASE l.side WHEN 'buy' THEN l.filled_quantity
                   ELSE -l.filled_quantity END) <> 0
    """,
}


def _global_running(conn: Connection, limit: int) -> list[Breach]:
    running = int(
        conn.execute(text("SELECT count(*) FROM hedge_jobs WHERE status = 'running'")).scalar_one()
    )
    if running <= limit:
        return []
    return [Breach(6, "running jobs in total", {"running": running, "limit": limit})]


def run_audit(conn: Connection, *, max_concurrent_jobs: int) -> list[Breach]:
    """Every breach found (an empty list means every checked invariant holds)."""
    breaches: list[Breach] = []
    for (number, name), sql in CHECKS.items():
        for row in conn.execute(text(sql)).mappings():
            breaches.append(Breach(number, name, {k: str(v) for k, v in row.items()}))
    breaches.extend(_global_running(conn, max_concurrent_jobs))
    return breaches
