"""``perpbot audit``: the invariants of DESIGN.md, each checked by one SQL query.

Each check returns the rows that break it (empty = holds), so an operator can
run the same SQL by hand.  Checks that need execution data (counters, fills)
hold trivially until workers write it and then start to bite.

Invariant 7 is checked as stated (a day's loss stays within the limit plus the
worst case of one job, ``job_worst_loss_bps`` of the largest job's notional)
and by the means that keep it: admission budgets every in-flight job's worst
case against what is left of the limit, once the limit is reached the system
halts, and nothing is admitted or claimed while halted or paused.  Invariant 5 takes the
paper exchange's book (``paper_orders``) as the exchange's record.  Checks
over history read the ``<table>_all`` views, so archived jobs (perpbot_db/services/archive.py)
are audited like live ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

from perpbot_db.domain.lifecycle import (
    FINISHED,
    STARTING,
    SYSTEM_EDGES,
    TRANSITIONS,
    sql_in,
)


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

#: Control actions that change the system status, and those of them that stop starts.
_STATUS_ACTIONS = tuple(a.value for a in SYSTEM_EDGES)
_STOPPING_ACTIONS = tuple(a.value for a, e in SYSTEM_EDGES.items() if e.target not in STARTING)


def _pairs(*columns: str) -> str:
    """``d.c AS counter_c, x.c AS expected_c`` for each counter column."""
    return ", ".join(f"d.{c} AS counter_{c}, x.{c} AS expected_{c}" for c in columns)


def _differ(*columns: str) -> str:
    """A counter column differs from its expected sum (a missing side counts as zero)."""
    return " OR ".join(f"coalesce(d.{c}, 0) <> coalesce(x.{c}, 0)" for c in columns)


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
    (1, "leg or reservation on an unknown exchange"): """
        SELECT 'leg' AS row_kind, l.id, l.job_id, l.exchange
        FROM legs_all l WHERE NOT EXISTS (SELECT FROM exchanges e WHERE e.name = l.exchange)
        UNION ALL
        SELECT 'reservation', r.id, r.job_id, r.exchange
        FROM capital_reservations_all r
        WHERE NOT EXISTS (SELECT FROM exchanges e WHERE e.name = r.exchange)
    """,
    (2, "capital held iff admitted or running"): """
        SELECT j.id AS job_id, j.status, count(r.id) AS active_reservations
        FROM hedge_jobs_all j
        LEFT JOIN capital_reservations_all r ON r.job_id = j.id AND r.status = 'active'
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
        FROM hedge_jobs_all j LEFT JOIN last l ON l.job_id = j.id
        WHERE l.to_status IS DISTINCT FROM j.status
           OR j.id IN (SELECT job_id FROM bad_steps)
    """,
    (3, "event without a job"): """
        SELECT e.id AS event_id, e.job_id, e.to_status
        FROM job_events e
        WHERE NOT EXISTS (SELECT FROM hedge_jobs_all j WHERE j.id = e.job_id)
    """,
    (3, "archive holds finished jobs only, once"): f"""
        SELECT a.id AS job_id, a.status, j.status AS live_status
        FROM hedge_jobs_archive a LEFT JOIN hedge_jobs j ON j.id = a.id
        WHERE a.status NOT IN ({sql_in(sorted(s.value for s in FINISHED))}) OR j.id IS NOT NULL
    """,
    (4, "counter money equals booked legs"): f"""
        WITH booked AS (
            SELECT (booked_at AT TIME ZONE 'UTC')::date AS day, job_id, attempt, exchange,
                   CASE WHEN filled_quantity > 0 AND avg_price IS NOT NULL
                        THEN round(filled_quantity * avg_price, 8) ELSE 0 END AS volume,
                   fee_usd, realized_pnl_usd
            FROM legs_all WHERE booked_at IS NOT NULL
        ),
        per_exchange AS (
            SELECT day, job_id, attempt, exchange, sum(volume) AS volume,
                   sum(fee_usd) AS fees, sum(realized_pnl_usd) AS pnl
            FROM booked GROUP BY day, job_id, attempt, exchange
        ),
        per_attempt AS (
            SELECT day, job_id, attempt, sum(volume) AS volume, sum(fees) AS fees,
                   sum(pnl) AS pnl
            FROM per_exchange GROUP BY day, job_id, attempt
        ),
        expected AS (
            SELECT day, 'global' AS scope, sum(volume) AS volume_usd, sum(fees) AS fees_usd,
                   sum(pnl) AS realized_pnl_usd, sum(greatest(0, -pnl)) AS loss_used_usd
            FROM per_attempt GROUP BY day
            UNION ALL
            SELECT day, exchange, sum(volume), sum(fees), sum(pnl), sum(greatest(0, -pnl))
            FROM per_exchange GROUP BY day, exchange
        )
        SELECT coalesce(d.day, x.day) AS day, coalesce(d.scope, x.scope) AS scope,
               {_pairs("volume_usd", "fees_usd", "realized_pnl_usd", "loss_used_usd")}
        FROM daily_counters d FULL OUTER JOIN expected x ON x.day = d.day AND x.scope = d.scope
        WHERE {_differ("volume_usd", "fees_usd", "realized_pnl_usd", "loss_used_usd")}
        ORDER BY 1, 2
    """,
    (4, "counter job counts equal finish events"): f"""
        WITH ends AS (
            SELECT (at AT TIME ZONE 'UTC')::date AS day, job_id, to_status
            FROM job_events
            WHERE from_status = 'running' AND to_status IN ('completed', 'failed')
        ),
        scoped AS (
            SELECT day, 'global' AS scope, to_status FROM ends
            UNION ALL
            SELECT n.day, x.exchange, n.to_status
            FROM ends n JOIN (SELECT DISTINCT job_id, exchange FROM legs_all) x
                 ON x.job_id = n.job_id
        ),
        expected AS (
            SELECT day, scope,
                   count(*) FILTER (WHERE to_status = 'completed') AS jobs_completed,
                   count(*) FILTER (WHERE to_status = 'failed') AS jobs_failed
            FROM scoped GROUP BY day, scope
        )
        SELECT coalesce(d.day, x.day) AS day, coalesce(d.scope, x.scope) AS scope,
               {_pairs("jobs_completed", "jobs_failed")}
        FROM daily_counters d FULL OUTER JOIN expected x ON x.day = d.day AND x.scope = d.scope
        WHERE {_differ("jobs_completed", "jobs_failed")}
        ORDER BY 1, 2
    """,
    (5, "client order id seen twice"): """
        SELECT exchange, client_order_id, count(*) AS orders
        FROM paper_orders GROUP BY exchange, client_order_id HAVING count(*) > 1
    """,
    (5, "order not recorded before sending"): """
        SELECT p.exchange, p.client_order_id, p.status AS order_status,
               p.created_at AS order_created_at, l.id AS leg_id, l.job_id,
               l.status AS leg_status, l.sent_at AS leg_sent_at
        FROM paper_orders p
        LEFT JOIN legs_all l ON l.client_order_id = p.client_order_id AND l.exchange = p.exchange
        WHERE NOT (p.status = 'cancelled' AND p.quantity IS NULL)
          AND (l.id IS NULL OR l.status = 'pending' OR l.sent_at IS NULL
               OR l.sent_at > p.created_at)
    """,
    (5, "leg disagrees with the exchange"): """
        SELECT l.id AS leg_id, l.job_id, l.exchange, l.client_order_id,
               l.filled_quantity AS leg_filled, p.filled_quantity AS exchange_filled,
               l.avg_price AS leg_avg_price, p.avg_price AS exchange_avg_price,
               l.fee_usd AS leg_fee_usd, p.fee_usd AS exchange_fee_usd
        FROM legs_all l
        JOIN paper_orders p ON p.exchange = l.exchange AND p.client_order_id = l.client_order_id
        WHERE l.booked_at IS NOT NULL
          AND (l.filled_quantity <> p.filled_quantity OR l.fee_usd <> p.fee_usd
               OR (l.filled_quantity > 0 AND l.avg_price IS DISTINCT FROM p.avg_price))
    """,
    (6, "running jobs per exchange"): """
        SELECT e.name AS exchange, count(DISTINCT j.id) AS running, e.max_concurrent_jobs
        FROM hedge_jobs j JOIN legs l ON l.job_id = j.id AND l.attempt = 1
        JOIN exchanges e ON e.name = l.exchange
        WHERE j.status = 'running'
        GROUP BY e.name, e.max_concurrent_jobs
        HAVING count(DISTINCT j.id) > e.max_concurrent_jobs
    """,
    (7, "started while halted or paused"): f"""
        SELECT e.id AS event_id, e.job_id, e.from_status, e.to_status, e.at,
               c.id AS control_event_id, c.action, c.at AS control_at, c.actor AS control_actor
        FROM job_events e
        CROSS JOIN LATERAL (
            SELECT id, action, at, actor FROM control_events
            WHERE action IN ({sql_in(list(_STATUS_ACTIONS))}) AND at < e.at
            ORDER BY at DESC, id DESC LIMIT 1
        ) c
        WHERE ((e.from_status = 'admitted' AND e.to_status = 'running')
               OR (e.from_status = 'pending' AND e.to_status = 'admitted'))
          AND c.action IN ({sql_in(list(_STOPPING_ACTIONS))})
        ORDER BY e.id
    """,
    (7, "loss limit reached without a halt"): f"""
        WITH days AS (
            SELECT d.day, d.loss_used_usd, s.daily_loss_limit_usd,
                   d.day::timestamp AT TIME ZONE 'UTC' AS day_start,
                   (d.day + 1)::timestamp AT TIME ZONE 'UTC' AS day_end
            FROM daily_counters d CROSS JOIN system_state s
            WHERE d.scope = 'global' AND d.loss_used_usd >= s.daily_loss_limit_usd
        )
        SELECT day, loss_used_usd, daily_loss_limit_usd
        FROM days
        WHERE NOT EXISTS (
                SELECT FROM control_events c
                WHERE c.action = 'halt' AND c.at >= day_start AND c.at < day_end)
          AND (SELECT c.action FROM control_events c
               WHERE c.action IN ({sql_in(list(_STATUS_ACTIONS))}) AND c.at < day_start
               ORDER BY c.at DESC, c.id DESC LIMIT 1) IS DISTINCT FROM 'halt'
        ORDER BY day
    """,
    (8, "finished job flat or flagged unhedged"): f"""
        SELECT j.id AS job_id, j.status,
               sum(CASE l.side WHEN 'buy' THEN l.filled_quantity
                   ELSE -l.filled_quantity END) AS net_quantity
        FROM hedge_jobs_all j JOIN legs_all l ON l.job_id = j.id
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


_LOSS_BEYOND_ONE_JOB = text(
    """
    WITH worst AS (
        SELECT (finished_at AT TIME ZONE 'UTC')::date AS day,
               max(notional_usd) * CAST(:rate AS numeric) AS one_job_usd
        FROM hedge_jobs_all WHERE finished_at IS NOT NULL
        GROUP BY 1
    )
    SELECT d.day, d.loss_used_usd, s.daily_loss_limit_usd,
           coalesce(w.one_job_usd, 0) AS one_job_worst_usd
    FROM daily_counters d CROSS JOIN system_state s LEFT JOIN worst w ON w.day = d.day
    WHERE d.scope = 'global'
      AND d.loss_used_usd > s.daily_loss_limit_usd + coalesce(w.one_job_usd, 0)
    ORDER BY d.day
    """
)


def _loss_beyond_one_job(conn: Connection, worst_loss_bps: Decimal) -> list[Breach]:
    """Invariant 7 itself: a day's loss above the limit by more than the worst case of
    the largest job that finished that day (``job_worst_loss_bps`` of its notional)."""
    rows = conn.execute(_LOSS_BEYOND_ONE_JOB, {"rate": str(worst_loss_bps / 10_000)}).mappings()
    return [
        Breach(7, "daily loss beyond the limit plus one job's worst case", _plain(row))
        for row in rows
    ]


def _plain(row: Any) -> dict[str, Any]:
    return {k: str(v) for k, v in row.items()}


def run_audit(
    conn: Connection, *, max_concurrent_jobs: int, worst_loss_bps: Decimal = Decimal(50)
) -> list[Breach]:
    """Every breach found (an empty list means every checked invariant holds)."""
    breaches: list[Breach] = []
    for (number, name), sql in CHECKS.items():
        for row in conn.execute(text(sql)).mappings():
            breaches.append(Breach(number, name, _plain(row)))
    breaches.extend(_loss_beyond_one_job(conn, worst_loss_bps))
    breaches.extend(_global_running(conn, max_concurrent_jobs))
    return breaches
