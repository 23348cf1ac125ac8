"""What a Prometheus scrape reads, on the read commands' bare driver connection.

Design note.  A scrape comes every few seconds for as long as the system runs, so
no statement here counts over history: live jobs are counted on the hot table
through the partial indexes of their statuses (``pending``, ``admitted``,
``running``); what finished today comes from ``daily_counters`` (one primary-key
row per scope); today's decisions are counted from ``job_events`` bounded by
``at`` to the UTC day (its BRIN index skips every older block range); the
claim-to-finish times only look at jobs finished in the last few minutes (the
``finished_at`` indexes of the live table and of the archive).  The rest are
small tables (exchanges, market snapshots, workers, active locks and
reservations).

Each read runs in its own savepoint under the scrape's ``statement_timeout``
(:func:`statement_timeout_set`, :func:`bounded`): a read that is cut leaves the
others standing, so a slow ``job_events`` never hides that the system halted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from psycopg import errors
from psycopg.rows import class_row

from perpbot_db.store.overview import ReadConnection

T = TypeVar("T")


def statement_timeout_set(conn: ReadConnection, *, timeout_ms: int) -> None:
    """``SET LOCAL statement_timeout``: for every later statement of this transaction."""
    if timeout_ms <= 0:
        raise ValueError("timeout_ms: must be a positive number of milliseconds")
    conn.execute("SELECT set_config('statement_timeout', %(ms)s, true)", {"ms": str(timeout_ms)})


def bounded(conn: ReadConnection, read: Callable[[ReadConnection], T]) -> T | None:
    """Run one read in a savepoint; a read cut by the statement timeout gives None and
    leaves the transaction usable for the next read."""
    try:
        with conn.transaction():
            return read(conn)
    except errors.QueryCanceled:
        return None


# -- live jobs (their counts: store.monitor.job_live_counts) ------------------------------


@dataclass(frozen=True, slots=True)
class PendingByCode:
    """Pending jobs by the decision the last tick stored (None: not judged yet)."""

    code: str | None
    jobs: int


def pending_by_code_count(conn: ReadConnection) -> list[PendingByCode]:
    with conn.cursor(row_factory=class_row(PendingByCode)) as cur:
        return cur.execute(
            "SELECT decision_code AS code, count(*) AS jobs FROM hedge_jobs "
            "WHERE status = 'pending' GROUP BY decision_code ORDER BY decision_code NULLS FIRST"
        ).fetchall()


# -- today: counters and events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventCount:
    """``job_events`` rows of one action and code in a window.

    ``held_code``: for an expiry, the hold that kept the job pending until its deadline
    (None: never held, or another action)."""

    action: str | None
    code: str | None
    held_code: str | None
    events: int


#: Bounded by ``at`` on both sides: the BRIN index ``ix_job_events_at`` reads only the
#: block ranges of the window (an EXPLAIN test keeps it so).
JOB_EVENTS_BY_CODE = """
    SELECT action, code,
           CASE WHEN action = 'expire' THEN details ->> 'held_code' END AS held_code,
           count(*) AS events
    FROM job_events
    WHERE at >= %(since)s::timestamptz AND at < %(until)s::timestamptz
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
"""


def job_events_count(conn: ReadConnection, *, since: datetime, until: datetime) -> list[EventCount]:
    """Events with ``since <= at < until``, by action, code and (expiries) held code."""
    with conn.cursor(row_factory=class_row(EventCount)) as cur:
        return cur.execute(JOB_EVENTS_BY_CODE, {"since": since, "until": until}).fetchall()


# -- claim to finish ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimToFinish:
    """Jobs whose last attempt finished in a window: how many, and the quantiles (in the
    order asked) of their claim-to-finish seconds (None when there are none)."""

    jobs: int
    quantiles: list[float] | None


#: Live and archived jobs (finished jobs leave the hot table after ``archive_after_s``),
#: each side bounded by its ``finished_at`` index.
CLAIM_TO_FINISH = """
    SELECT count(*) AS jobs,
           percentile_cont(%(quantiles)s::float8[]) WITHIN GROUP (
               ORDER BY extract(epoch FROM finished_at - started_at)) AS quantiles
    FROM hedge_jobs_all
    WHERE finished_at >= %(since)s::timestamptz AND finished_at <= %(until)s::timestamptz
      AND started_at IS NOT NULL
"""


def claim_to_finish_summarize(
    conn: ReadConnection, *, since: datetime, until: datetime, quantiles: Sequence[float]
) -> ClaimToFinish:
    with conn.cursor(row_factory=class_row(ClaimToFinish)) as cur:
        row = cur.execute(
            CLAIM_TO_FINISH, {"since": since, "until": until, "quantiles": list(quantiles)}
        ).fetchone()
    assert row is not None, "an aggregate returns a row"
    return row


# -- capital and exchanges ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    """An exchange account and the terms its capital budgets are worked out from."""

    name: str
    enabled: bool
    equity_usd: Decimal
    safe_mode: bool
    volume_share: Decimal
    arbitrage_share: Decimal
    reserve_share: Decimal
    single_job_cap: Decimal
    inflight_cap: Decimal
    max_concurrent_jobs: int
    consecutive_failures: int


def exchanges_read(conn: ReadConnection) -> list[ExchangeRow]:
    with conn.cursor(row_factory=class_row(ExchangeRow)) as cur:
        return cur.execute(
            """
            SELECT name, enabled, equity_usd, safe_mode, volume_share, arbitrage_share,
                   reserve_share, single_job_cap, inflight_cap, max_concurrent_jobs,
                   consecutive_failures
            FROM exchanges ORDER BY name
            """
        ).fetchall()


@dataclass(frozen=True, slots=True)
class TierReserved:
    """Capital the active reservations hold on one exchange and tier."""

    exchange: str
    tier: str
    reserved_usd: Decimal
    reservations: int


def reservations_active_sum(conn: ReadConnection) -> list[TierReserved]:
    """Active reservations by exchange and tier (their partial index)."""
    with conn.cursor(row_factory=class_row(TierReserved)) as cur:
        return cur.execute(
            """
            SELECT exchange, tier, sum(amount_usd) AS reserved_usd, count(*) AS reservations
            FROM capital_reservations WHERE status = 'active'
            GROUP BY exchange, tier ORDER BY exchange, tier
            """
        ).fetchall()


@dataclass(frozen=True, slots=True)
class MarketLatency:
    """The latest snapshot of one market: its API latency, funding rate and time."""

    exchange: str
    symbol: str
    latency_ms: Decimal | None
    funding_rate: Decimal | None
    observed_at: datetime


def market_latency_read(conn: ReadConnection) -> list[MarketLatency]:
    """Every market's latest snapshot (one row per exchange and symbol)."""
    with conn.cursor(row_factory=class_row(MarketLatency)) as cur:
        return cur.execute(
            "SELECT exchange, symbol, latency_ms, funding_rate, observed_at "
            "FROM market_snapshots ORDER BY exchange, symbol"
        ).fetchall()


# -- processes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerLiveness:
    """Workers not stopped: live (a heartbeat at or after ``live_since``) or lost (none
    since: killed, or hung), the live ones' slots, and the newest heartbeat."""

    live: int
    lost: int
    live_slots: int
    newest_heartbeat_at: datetime | None


def workers_liveness(conn: ReadConnection, *, live_since: datetime) -> WorkerLiveness:
    with conn.cursor(row_factory=class_row(WorkerLiveness)) as cur:
        row = cur.execute(
            """
            SELECT count(*) FILTER (WHERE heartbeat_at >= %(since)s::timestamptz) AS live,
                   count(*) FILTER (WHERE heartbeat_at < %(since)s::timestamptz) AS lost,
                   coalesce(sum(concurrency) FILTER (
                       WHERE heartbeat_at >= %(since)s::timestamptz), 0) AS live_slots,
                   max(heartbeat_at) AS newest_heartbeat_at
            FROM workers WHERE stopped_at IS NULL
            """,
            {"since": live_since},
        ).fetchone()
    assert row is not None, "an aggregate returns a row"
    return row


@dataclass(frozen=True, slots=True)
class LeaderPresence:
    """Whether a session holds the scheduler leader's advisory lock."""

    present: bool


def scheduler_leader_present(conn: ReadConnection) -> LeaderPresence:
    """The lock :mod:`perpbot_db.runtime.leader` holds (as :func:`store.locks.leader_current`)."""
    with conn.cursor(row_factory=class_row(LeaderPresence)) as cur:
        row = cur.execute(
            """
            SELECT EXISTS (
                SELECT FROM pg_locks
                WHERE locktype = 'advisory' AND granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND classid = hashtext('perpbot.leader')::oid AND objid = 0 AND objsubid = 2
            ) AS present
            """
        ).fetchone()
    assert row is not None, "EXISTS returns a row"
    return row


@dataclass(frozen=True, slots=True)
class TickSummary:
    """The newest recorded admission tick (None: none yet): when it ran (the database
    clock of its transaction) and how long it took; and every scheduler's ticks, summed."""

    last_tick_at: datetime | None
    duration_ms: Decimal | None
    ticks: int


def scheduler_ticks_summary(conn: ReadConnection) -> TickSummary:
    """``scheduler_ticks``: one row per scheduler process that ever ticked (a small table)."""
    with conn.cursor(row_factory=class_row(TickSummary)) as cur:
        row = cur.execute(
            """
            SELECT t.last_tick_at, t.duration_ms, s.ticks
            FROM (SELECT coalesce(sum(ticks), 0) AS ticks FROM scheduler_ticks) s
            LEFT JOIN LATERAL (
                SELECT last_tick_at, duration_ms FROM scheduler_ticks
                ORDER BY last_tick_at DESC LIMIT 1
            ) t ON true
            """
        ).fetchone()
    assert row is not None, "an aggregate returns a row"
    return row


@dataclass(frozen=True, slots=True)
class LockCount:
    """Active protection locks of one scope and code."""

    scope: str
    code: str
    locks: int


def protection_locks_active_count(conn: ReadConnection) -> list[LockCount]:
    """Active locks (their partial index) by scope and code."""
    with conn.cursor(row_factory=class_row(LockCount)) as cur:
        return cur.execute(
            "SELECT scope, code, count(*) AS locks FROM protection_locks "
            "WHERE released_at IS NULL GROUP BY scope, code ORDER BY scope, code"
        ).fetchall()
