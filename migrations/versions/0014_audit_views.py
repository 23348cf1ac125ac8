"""audit views: the auditors' questions as SQL views and functions named ``audit_*``

docs/audit.md shows each with the query an auditor types and its output on a
real run (``python bench/audit_examples.py`` regenerates the examples):

* ``audit_job_timeline``: a job's whole history in one list: the job, its
  events, its legs (created, sent, booked with the fill), its reservations
  (held, released), live and archived alike;
* ``audit_capital_now`` and ``audit_capital_at(timestamptz)``: capital held per
  exchange and tier now (with the tier's budget), and at any past moment (from
  the reservations' ``created_at`` and ``released_at``);
* ``audit_daily_pnl``: daily volume, fees, PnL and loss per exchange and in
  total (``daily_counters``, scope ``global`` or an exchange);
* ``audit_decisions(from, to)`` and ``audit_holds_now``: refusals by code:
  rejections and the holds that ran a job out of time (``job_events`` in a time
  range, read through the BRIN index on ``at``), and why pending jobs wait now;
* ``audit_counter_reconciliation(from_day, to_day)`` and
  ``audit_counter_mismatches``: ``daily_counters`` against the sums over the
  legs booked that day and the attempts that ended that day;
* ``audit_orphan_reservations``: active reservations whose job is not admitted
  or running, finished, or missing altogether.

Nothing here writes or is read by the queue: no index, no trigger, no change to
a table, so the models (perpbot_db/store/schema.py) are unchanged and the
migrated schema still matches them (views and functions are not compared).
The views read the live and archive tables directly (``x UNION ALL
x_archive``, named columns only), not the ``x_all`` views, so a later migration
that adds a column and recreates an ``x_all`` view is not blocked by them.
Tiers and finished statuses are spelled out as at this revision (a new one
needs a revision, as a status does).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The capital tiers (``CapitalTier``) in display order, and the finished statuses.
TIERS = "(VALUES ('volume', 1), ('arbitrage', 2), ('reserve', 3)) AS t(tier, tier_order)"
FINISHED = "('completed', 'failed', 'rejected', 'cancelled', 'expired')"

JOBS = """(
        SELECT id, strategy, symbol, notional_usd, expected_pnl_usd, final_score, status,
               attempts, max_attempts, deadline, idempotency_key, decision_code,
               decision_context, unhedged, result, created_at, finished_at, false AS archived
        FROM hedge_jobs
        UNION ALL
        SELECT id, strategy, symbol, notional_usd, expected_pnl_usd, final_score, status,
               attempts, max_attempts, deadline, idempotency_key, decision_code,
               decision_context, unhedged, result, created_at, finished_at, true
        FROM hedge_jobs_archive
    )"""

_LEG_COLUMNS = """id, job_id, leg_index, attempt, exchange, symbol, side, quantity, reduce_only,
               client_order_id, exchange_order_id, status, filled_quantity, avg_price, fee_usd,
               error, unwinds_leg_id, realized_pnl_usd, booked_at, created_at, sent_at"""
LEGS = f"""(
        SELECT {_LEG_COLUMNS} FROM legs
        UNION ALL
        SELECT {_LEG_COLUMNS} FROM legs_archive
    )"""

_RESERVATION_COLUMNS = (
    "id, job_id, exchange, tier, amount_usd, status, release_reason, created_at, released_at"
)
RESERVATIONS = f"""(
        SELECT {_RESERVATION_COLUMNS}, false AS archived FROM capital_reservations
        UNION ALL
        SELECT {_RESERVATION_COLUMNS}, true FROM capital_reservations_archive
    )"""

#: A leg's filled notional, as the workers book it into ``volume_usd``.
LEG_VOLUME = (
    "CASE WHEN l.filled_quantity > 0 AND l.avg_price IS NOT NULL "
    "THEN round(l.filled_quantity * l.avg_price, 8) ELSE 0 END"
)

JOB_TIMELINE = f"""
CREATE VIEW audit_job_timeline AS
-- One row per thing that happened to a job, oldest first with
--   ORDER BY at, kind_order, ref_id
-- (one transaction writes several rows at the same instant: the job, then its
-- events, then its legs, then its reservations).  Filter on job_id: the filter
-- reaches every table's job_id index.
SELECT job_id, at, kind_order, kind, ref_id, exchange, from_status, to_status, actor, code,
       amount_usd, what, details
FROM (
    -- the job itself, as it stands now (live or archived)
    SELECT j.id AS job_id, j.created_at AS at, 0 AS kind_order, 'job'::text AS kind,
           j.id AS ref_id, NULL::text AS exchange, NULL::text AS from_status,
           NULL::text AS to_status, NULL::text AS actor, j.decision_code AS code,
           j.notional_usd AS amount_usd,
           format('%s %s, %s USD notional, now %s%s', j.strategy, j.symbol,
                  trim_scale(j.notional_usd), j.status,
                  CASE WHEN j.archived THEN ' (archived)' ELSE '' END) AS what,
           jsonb_strip_nulls(jsonb_build_object(
               'strategy', j.strategy, 'symbol', j.symbol, 'notional_usd', j.notional_usd,
               'expected_pnl_usd', j.expected_pnl_usd, 'final_score', j.final_score,
               'attempts', j.attempts, 'max_attempts', j.max_attempts,
               'deadline', j.deadline, 'idempotency_key', j.idempotency_key,
               'unhedged', j.unhedged, 'archived', j.archived,
               'finished_at', j.finished_at, 'decision_context', j.decision_context,
               'result', j.result)) AS details
    FROM {JOBS} j
    UNION ALL
    -- every status change, with its action, actor, reason and code
    SELECT e.job_id, e.at, 1, coalesce(e.action, 'event'), e.id, NULL, e.from_status,
           e.to_status, e.actor, e.code, NULL, e.reason, e.details
    FROM job_events e
    UNION ALL
    -- each order: created (what was asked), sent, booked (what the exchange filled)
    SELECT l.job_id, v.at, 2, v.kind, l.id, l.exchange, NULL, v.status, NULL, NULL, v.amount,
           v.what,
           jsonb_strip_nulls(jsonb_build_object(
               'leg_index', l.leg_index, 'attempt', l.attempt, 'side', l.side,
               'quantity', l.quantity, 'reduce_only', l.reduce_only,
               'unwinds_leg_id', l.unwinds_leg_id, 'client_order_id', l.client_order_id,
               'exchange_order_id', l.exchange_order_id, 'status', l.status,
               'filled_quantity', l.filled_quantity, 'avg_price', l.avg_price,
               'fee_usd', l.fee_usd, 'realized_pnl_usd', l.realized_pnl_usd,
               'error', l.error)) AS details
    FROM {LEGS} l
    CROSS JOIN LATERAL (VALUES
        ('leg_created', l.created_at, 'pending', NULL::numeric,
         format('%s %s %s, order %s%s%s', l.side, trim_scale(l.quantity), l.symbol,
                l.client_order_id,
                CASE WHEN l.attempt > 1 THEN format(', attempt %s', l.attempt) ELSE '' END,
                CASE WHEN l.unwinds_leg_id IS NOT NULL
                     THEN format(', unwinds leg %s', l.unwinds_leg_id)
                     WHEN l.reduce_only THEN ', reduce-only' ELSE '' END)),
        ('leg_sent', l.sent_at, 'sent', NULL, format('order %s sent', l.client_order_id)),
        ('leg_booked', l.booked_at, l.status, {LEG_VOLUME},
         format('%s %s at %s, fee %s, PnL %s%s', l.status, trim_scale(l.filled_quantity),
                coalesce(trim_scale(round(l.avg_price, 8))::text, '-'),
                trim_scale(l.fee_usd), trim_scale(l.realized_pnl_usd),
                coalesce(': ' || l.error, '')))
    ) AS v(kind, at, status, amount, what)
    WHERE v.at IS NOT NULL
    UNION ALL
    -- capital: held at admission, released when the job ends
    SELECT r.job_id, v.at, 3, v.kind, r.id, r.exchange, NULL, v.status, NULL, NULL,
           r.amount_usd, v.what,
           jsonb_build_object('tier', r.tier, 'status', r.status, 'archived', r.archived)
    FROM {RESERVATIONS} r
    CROSS JOIN LATERAL (VALUES
        ('reservation_held', r.created_at, 'active',
         format('%s USD held, tier %s', trim_scale(r.amount_usd), r.tier)),
        ('reservation_released', r.released_at, 'released',
         format('%s USD released: %s', trim_scale(r.amount_usd), r.release_reason))
    ) AS v(kind, at, status, what)
    WHERE v.at IS NOT NULL
) timeline
"""

CAPITAL_NOW = f"""
CREATE VIEW audit_capital_now AS
-- Capital held now (active reservations, as admission counts it) per exchange and
-- tier, next to the tier's budget (equity x its share).  Every exchange shows every
-- tier; a reservation on an exchange missing from ``exchanges`` still shows (no budget).
WITH held AS (
    SELECT exchange, tier, sum(amount_usd) AS held_usd, count(*) AS reservations,
           count(DISTINCT job_id) AS jobs
    FROM capital_reservations
    WHERE status = 'active'
    GROUP BY exchange, tier
), keys AS (
    SELECT e.name AS exchange, t.tier FROM exchanges e CROSS JOIN {TIERS}
    UNION
    SELECT exchange, tier FROM held
), budgets AS (
    SELECT k.exchange, k.tier, e.equity_usd,
           round(e.equity_usd * CASE k.tier WHEN 'volume' THEN e.volume_share
                                            WHEN 'arbitrage' THEN e.arbitrage_share
                                            WHEN 'reserve' THEN e.reserve_share END, 8)
               AS budget_usd
    FROM keys k LEFT JOIN exchanges e ON e.name = k.exchange
)
SELECT b.exchange, b.tier, b.equity_usd, b.budget_usd,
       coalesce(h.held_usd, 0) AS held_usd,
       coalesce(h.reservations, 0) AS reservations,
       coalesce(h.jobs, 0) AS jobs,
       round(100 * coalesce(h.held_usd, 0) / nullif(b.budget_usd, 0), 2) AS used_pct
FROM budgets b LEFT JOIN held h ON h.exchange = b.exchange AND h.tier = b.tier
"""

CAPITAL_AT = f"""
CREATE FUNCTION audit_capital_at(at_time timestamptz)
RETURNS TABLE (exchange text, tier text, held_usd numeric, reservations bigint, jobs bigint)
LANGUAGE sql STABLE AS $$
    -- Capital held at ``at_time``: every reservation, live or archived, created at or
    -- before it and not released by then.  Exchanges and tiers with nothing held have
    -- no row.  Reads the whole reservation history (no index on the times).
    SELECT r.exchange, r.tier, sum(r.amount_usd), count(*), count(DISTINCT r.job_id)
    FROM {RESERVATIONS} r
    WHERE r.created_at <= at_time AND (r.released_at IS NULL OR r.released_at > at_time)
    GROUP BY r.exchange, r.tier
$$
"""

DAILY_PNL = """
CREATE VIEW audit_daily_pnl AS
-- The daily counters, one row per UTC day and scope (``global``, or an exchange: the
-- orders that went there), with the PnL before fees and the fees in basis points of
-- the volume.
SELECT day, scope, volume_usd, fees_usd, realized_pnl_usd,
       realized_pnl_usd + fees_usd AS pnl_before_fees_usd,
       round(10000 * fees_usd / nullif(volume_usd, 0), 4) AS fees_bps,
       loss_used_usd, jobs_completed, jobs_failed
FROM daily_counters
"""

DECISIONS = """
CREATE FUNCTION audit_decisions(from_at timestamptz, to_at timestamptz)
RETURNS TABLE (outcome text, code text, jobs bigint, first_at timestamptz,
               last_at timestamptz, last_job_id bigint, last_context jsonb)
LANGUAGE sql STABLE AS $$
    -- Refusals in [from_at, to_at) by code: ``rejected`` (the job can never pass; the
    -- code says why) and ``expired`` (held until its deadline; the code is the last
    -- hold it had, ``deadline_passed`` when it was never judged), each with the latest
    -- example and its context.
    SELECT d.outcome, d.code, count(*), min(d.at), max(d.at),
           (array_agg(d.job_id ORDER BY d.at DESC, d.id DESC))[1],
           (array_agg(d.context ORDER BY d.at DESC, d.id DESC))[1]
    FROM (
        SELECT e.id, e.job_id, e.at, e.to_status AS outcome,
               CASE e.to_status WHEN 'expired'
                    THEN coalesce(e.details ->> 'held_code', e.code) ELSE e.code END AS code,
               CASE e.to_status WHEN 'expired'
                    THEN coalesce(e.details -> 'held_context', e.details) ELSE e.details END
                   AS context
        FROM job_events e
        WHERE e.at >= from_at AND e.at < to_at AND e.to_status IN ('rejected', 'expired')
    ) d
    GROUP BY d.outcome, d.code
$$
"""

HOLDS_NOW = """
CREATE VIEW audit_holds_now AS
-- Why pending jobs wait right now, by the code the last tick stored on each (a job the
-- tick judged admissible but had no room for yet shows as ``admitted``; one not judged
-- yet as ``not_judged``).
SELECT coalesce(decision_code, 'not_judged') AS code, count(*) AS jobs,
       min(created_at) AS oldest_submitted_at, min(deadline) AS next_deadline,
       max(id) AS last_job_id
FROM hedge_jobs
WHERE status = 'pending'
GROUP BY coalesce(decision_code, 'not_judged')
"""

COUNTER_RECONCILIATION = f"""
CREATE FUNCTION audit_counter_reconciliation(from_day date, to_day date)
RETURNS TABLE (day date, scope text,
               counter_volume_usd numeric, legs_volume_usd numeric,
               counter_fees_usd numeric, legs_fees_usd numeric,
               counter_realized_pnl_usd numeric, legs_realized_pnl_usd numeric,
               counter_loss_used_usd numeric, legs_loss_used_usd numeric,
               counter_jobs_completed bigint, legs_jobs_completed bigint,
               counter_jobs_failed bigint, legs_jobs_failed bigint,
               matches boolean)
LANGUAGE sql STABLE AS $$
    -- ``daily_counters`` of the UTC days from_day..to_day (inclusive) against what the
    -- legs booked those days add up to, as the workers book them: an attempt's legs
    -- are booked in the transaction that ends it (``booked_at`` = its finish event's
    -- ``at``); volume = filled x price per leg; the loss of an attempt is its negative
    -- PnL, in total and per exchange; an exchange counts an ended attempt when one of
    -- its orders went there.  A side with no row counts as zero.
    WITH bounds AS (
        SELECT from_day::timestamp AT TIME ZONE 'UTC' AS lo,
               (to_day::timestamp AT TIME ZONE 'UTC') + interval '1 day' AS hi
    ), booked AS (
        SELECT l.job_id, l.booked_at, l.exchange,
               (l.booked_at AT TIME ZONE 'UTC')::date AS day,
               {LEG_VOLUME} AS volume, l.fee_usd, l.realized_pnl_usd
        FROM {LEGS} l, bounds b
        WHERE l.booked_at >= b.lo AND l.booked_at < b.hi
    ), per_exchange AS (
        SELECT day, job_id, booked_at, exchange, sum(volume) AS volume,
               sum(fee_usd) AS fees, sum(realized_pnl_usd) AS pnl
        FROM booked GROUP BY day, job_id, booked_at, exchange
    ), per_attempt AS (
        SELECT day, job_id, booked_at, sum(volume) AS volume, sum(fees) AS fees,
               sum(pnl) AS pnl
        FROM per_exchange GROUP BY day, job_id, booked_at
    ), money AS (
        SELECT day, 'global'::text AS scope, sum(volume) AS volume_usd, sum(fees) AS fees_usd,
               sum(pnl) AS pnl_usd, sum(greatest(0, -pnl)) AS loss_usd
        FROM per_attempt GROUP BY day
        UNION ALL
        SELECT day, exchange, sum(volume), sum(fees), sum(pnl), sum(greatest(0, -pnl))
        FROM per_exchange GROUP BY day, exchange
    ), ends AS (
        SELECT e.job_id, e.at, e.to_status, (e.at AT TIME ZONE 'UTC')::date AS day
        FROM job_events e, bounds b
        WHERE e.at >= b.lo AND e.at < b.hi
          AND e.from_status = 'running' AND e.to_status IN ('completed', 'failed')
    ), counts AS (
        SELECT day, 'global'::text AS scope,
               count(*) FILTER (WHERE to_status = 'completed') AS completed,
               count(*) FILTER (WHERE to_status = 'failed') AS failed
        FROM ends GROUP BY day
        UNION ALL
        SELECT n.day, p.exchange,
               count(*) FILTER (WHERE n.to_status = 'completed'),
               count(*) FILTER (WHERE n.to_status = 'failed')
        FROM ends n JOIN per_exchange p ON p.job_id = n.job_id AND p.booked_at = n.at
        GROUP BY n.day, p.exchange
    ), expected AS (
        SELECT coalesce(m.day, c.day) AS day, coalesce(m.scope, c.scope) AS scope,
               coalesce(m.volume_usd, 0) AS volume_usd, coalesce(m.fees_usd, 0) AS fees_usd,
               coalesce(m.pnl_usd, 0) AS pnl_usd, coalesce(m.loss_usd, 0) AS loss_usd,
               coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed
        FROM money m FULL JOIN counts c ON c.day = m.day AND c.scope = m.scope
    ), counters AS (
        SELECT d.day, d.scope, d.volume_usd, d.fees_usd, d.realized_pnl_usd, d.loss_used_usd,
               d.jobs_completed::bigint AS completed, d.jobs_failed::bigint AS failed
        FROM daily_counters d
        WHERE d.day >= from_day AND d.day <= to_day
    )
    SELECT coalesce(d.day, x.day), coalesce(d.scope, x.scope),
           coalesce(d.volume_usd, 0), coalesce(x.volume_usd, 0),
           coalesce(d.fees_usd, 0), coalesce(x.fees_usd, 0),
           coalesce(d.realized_pnl_usd, 0), coalesce(x.pnl_usd, 0),
           coalesce(d.loss_used_usd, 0), coalesce(x.loss_usd, 0),
           coalesce(d.completed, 0), coalesce(x.completed, 0),
           coalesce(d.failed, 0), coalesce(x.failed, 0),
           coalesce(d.volume_usd, 0) = coalesce(x.volume_usd, 0)
           AND coalesce(d.fees_usd, 0) = coalesce(x.fees_usd, 0)
           AND coalesce(d.realized_pnl_usd, 0) = coalesce(x.pnl_usd, 0)
           AND coalesce(d.loss_used_usd, 0) = coalesce(x.loss_usd, 0)
           AND coalesce(d.completed, 0) = coalesce(x.completed, 0)
           AND coalesce(d.failed, 0) = coalesce(x.failed, 0)
    FROM counters d FULL JOIN expected x ON x.day = d.day AND x.scope = d.scope
$$
"""

COUNTER_MISMATCHES = """
CREATE VIEW audit_counter_mismatches AS
-- Every day and scope, over the whole history, where the counters and the legs differ.
SELECT * FROM audit_counter_reconciliation('-infinity', 'infinity') WHERE NOT matches
"""

ORPHAN_RESERVATIONS = f"""
CREATE VIEW audit_orphan_reservations AS
-- Active reservations (live or archived) whose job does not hold capital by right:
-- the job is missing, finished, or neither admitted nor running.  Empty when
-- invariant 2 holds.  Reads the archive's reservations in full (no index on status).
SELECT r.id AS reservation_id, r.job_id, r.exchange, r.tier, r.amount_usd, r.created_at,
       r.archived AS reservation_archived, j.status AS job_status,
       j.finished_at AS job_finished_at, j.archived AS job_archived,
       CASE WHEN j.id IS NULL THEN 'job missing'
            WHEN j.status IN {FINISHED} THEN 'job finished'
            ELSE 'job ' || j.status END AS problem
FROM {RESERVATIONS} r
LEFT JOIN {JOBS} j ON j.id = r.job_id
WHERE r.status = 'active' AND (j.id IS NULL OR j.status NOT IN ('admitted', 'running'))
"""

#: (create, drop) in creation order; dropped in reverse.
OBJECTS: tuple[tuple[str, str], ...] = (
    (JOB_TIMELINE, "DROP VIEW audit_job_timeline"),
    (CAPITAL_NOW, "DROP VIEW audit_capital_now"),
    (CAPITAL_AT, "DROP FUNCTION audit_capital_at(timestamptz)"),
    (DAILY_PNL, "DROP VIEW audit_daily_pnl"),
    (DECISIONS, "DROP FUNCTION audit_decisions(timestamptz, timestamptz)"),
    (HOLDS_NOW, "DROP VIEW audit_holds_now"),
    (COUNTER_RECONCILIATION, "DROP FUNCTION audit_counter_reconciliation(date, date)"),
    (COUNTER_MISMATCHES, "DROP VIEW audit_counter_mismatches"),
    (ORPHAN_RESERVATIONS, "DROP VIEW audit_orphan_reservations"),
)


def upgrade() -> None:
    for create, _ in OBJECTS:
        op.execute(create)


def downgrade() -> None:
    for _, drop in reversed(OBJECTS):
        op.execute(drop)
