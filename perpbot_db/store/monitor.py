"""The monitoring state's reads, on the read commands' bare driver connection.

Design note.  The console (HTTP API, dashboard, ``perpbot status``, ``/metrics``)
rebuilds one state about once a second, so every statement here must cost the same
with a million finished jobs as with ten.  None counts over history:

* today's volume, fees, PnL, loss and jobs completed / failed come from
  ``daily_counters`` (one row per scope and day, by primary key);
* job counts come from the hot table restricted to a live status, each through its
  partial index (``ix_hedge_jobs_pending_*``, ``ix_hedge_jobs_admitted``,
  ``ix_hedge_jobs_running_lease``); capital from the active reservations (partial
  index ``ix_capital_reservations_active_exchange``);
* what happened recently (denials, expiries, failures by code) comes from
  ``job_events`` bounded by ``at`` on both sides through the partial index of
  those events alone (``ix_job_events_refusals``), so a read costs the window's
  refusals, not its admissions and completions nor the history
  (tests/integration/test_monitor.py proves the plan with EXPLAIN), by whole
  minutes, so the console reads each past minute once and keeps it;
* an example row (a group's newest job or event) is read by primary key with
  ``id = ANY(ARRAY(...))``: a join there may walk the whole key in order;
* every list is bounded (``LIMIT``); the running jobs are keyset-paginated on
  ``(started_at, id)``.

Every statement runs inside :func:`snapshot`: one read-only transaction (repeatable
read when it opens the transaction, so the sections agree with each other) whose
``statement_timeout`` is set once with ``SET LOCAL`` and which is always rolled
back.  A read cut by the timeout raises :class:`MonitorTimeout`; any other driver
error :class:`MonitorReadError`, so the services never see the driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeAlias

import psycopg
from psycopg import Connection
from psycopg.pq import TransactionStatus
from psycopg.rows import class_row

from perpbot_db.domain.lifecycle import REFUSAL_ACTIONS, sql_in
from perpbot_db.store import rows

REFUSALS = sql_in(REFUSAL_ACTIONS)

#: The connection the read commands hold (the services name it without the driver).
ReadConnection: TypeAlias = Connection[Any]


class MonitorReadError(Exception):
    """A monitoring read failed (the database is unreachable, or a statement failed)."""


class MonitorTimeout(MonitorReadError):
    """A monitoring read ran past its ``statement_timeout`` and was cancelled."""


# -- the snapshot transaction -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotParams:
    """How long any one statement of the snapshot may run (milliseconds, > 0)."""

    statement_timeout_ms: int


@contextlib.contextmanager
def snapshot(conn: Connection[Any], params: SnapshotParams) -> Iterator[datetime]:
    """One read-only transaction for a whole state; yields the database clock.

    On an idle connection it opens the transaction itself, repeatable read and read
    only, so every section sees the same instant.  Inside a transaction already
    open (the read commands' connection) it takes a savepoint instead and reads
    at that transaction's isolation.  Either way ``statement_timeout`` (and the time
    zone, UTC: every time read comes back in UTC) is set with ``SET LOCAL`` semantics
    (``set_config(..., true)``) and undone by the rollback that always ends the
    snapshot: nothing of it outlives the block.
    """
    if params.statement_timeout_ms <= 0:
        raise ValueError("statement_timeout_ms: must be above 0")
    own = conn.info.transaction_status == TransactionStatus.IDLE
    try:
        with conn.transaction(force_rollback=True):
            if own:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(
                "SELECT set_config('statement_timeout', %(ms)s, true), "
                "set_config('TimeZone', 'UTC', true)",
                {"ms": f"{params.statement_timeout_ms}ms"},
            )
            row = conn.execute("SELECT statement_timestamp()").fetchone()
            assert row is not None
            yield row[0]
    except psycopg.errors.QueryCanceled as exc:
        raise MonitorTimeout(
            f"a monitoring read ran past statement_timeout "
            f"{params.statement_timeout_ms} ms and was cancelled ({exc.diag.message_primary})"
        ) from None
    except psycopg.Error as exc:
        raise MonitorReadError(f"monitoring read failed: {exc.diag.message_primary or exc}") from (
            None
        )


def statement_timeout(conn: Connection[Any]) -> str:
    """The ``statement_timeout`` in force on the connection now (``SHOW``)."""
    row = conn.execute("SHOW statement_timeout").fetchone()
    assert row is not None
    return str(row[0])


# -- the control row, the day, the limits in force ------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemRow:
    status: str
    risk_mode: str
    daily_loss_limit_usd: Decimal
    halt_reason: str | None
    consecutive_failures: int
    max_consecutive_failures: int
    updated_at: datetime
    updated_by: str | None


def system_state(conn: Connection[Any]) -> SystemRow:
    with conn.cursor(row_factory=class_row(SystemRow)) as cur:
        row = cur.execute(f"SELECT {rows.columns(SystemRow)} FROM system_state").fetchone()
    if row is None:
        raise MonitorReadError("system_state has no row: run `perpbot db upgrade`")
    return row


@dataclass(frozen=True, slots=True)
class ControlEventRow:
    at: datetime
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class ControlEventParams:
    action: str


def control_event_latest(
    conn: Connection[Any], params: ControlEventParams
) -> ControlEventRow | None:
    """The newest control event of one action (a backward scan of the primary key: call
    it only when such an event must be recent, e.g. the override of the current halt)."""
    with conn.cursor(row_factory=class_row(ControlEventRow)) as cur:
        return cur.execute(
            f"SELECT {rows.columns(ControlEventRow)} FROM control_events "
            "WHERE action = %(action)s ORDER BY id DESC LIMIT 1",
            {"action": params.action},
        ).fetchone()


@dataclass(frozen=True, slots=True)
class DayParams:
    day: date


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One ``daily_counters`` row: ``scope`` is ``global`` or an exchange."""

    scope: str
    volume_usd: Decimal
    fees_usd: Decimal
    realized_pnl_usd: Decimal
    loss_used_usd: Decimal
    jobs_completed: int
    jobs_failed: int


def counters_of_day(conn: Connection[Any], params: DayParams) -> list[CounterRow]:
    """Every scope's counters of one UTC day (by primary key: a handful of rows)."""
    with conn.cursor(row_factory=class_row(CounterRow)) as cur:
        return cur.execute(
            f"SELECT {rows.columns(CounterRow)} FROM daily_counters WHERE day = %(day)s "
            "ORDER BY scope",
            {"day": params.day},
        ).fetchall()


@dataclass(frozen=True, slots=True)
class ModeParams:
    mode: str


@dataclass(frozen=True, slots=True)
class LimitRow:
    name: str
    value: Decimal


def risk_limits_of_mode(conn: Connection[Any], params: ModeParams) -> list[LimitRow]:
    """The rows of one risk mode's limits in force (a limit without a row is its default)."""
    with conn.cursor(row_factory=class_row(LimitRow)) as cur:
        return cur.execute(
            "SELECT name, value FROM risk_limits WHERE mode = %(mode)s ORDER BY name",
            {"mode": params.mode},
        ).fetchall()


# -- exchanges and their capital --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListParams:
    limit: int


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    """An exchange account with its limits and what its active reservations hold now."""

    name: str
    enabled: bool
    equity_usd: Decimal
    volume_share: Decimal
    arbitrage_share: Decimal
    reserve_share: Decimal
    single_job_cap: Decimal
    inflight_cap: Decimal
    max_concurrent_jobs: int
    max_inflight_notional_usd: Decimal | None
    safe_mode: bool
    safe_mode_reason: str | None
    safe_mode_until: datetime | None
    consecutive_failures: int
    reserved_volume: Decimal
    reserved_arbitrage: Decimal
    reserved_reserve: Decimal
    active_jobs: int
    running_jobs: int


# Capital from the active reservations alone (through their partial index); the running
# jobs per exchange from the running jobs (their partial index) to their reservations.
# Never every active reservation joined to its job: that is a primary-key lookup into the
# whole job table per reservation.
_EXCHANGES = """
    SELECT e.name, e.enabled, e.equity_usd, e.volume_share, e.arbitrage_share, e.reserve_share,
           e.single_job_cap, e.inflight_cap, e.max_concurrent_jobs, e.max_inflight_notional_usd,
           e.safe_mode, e.safe_mode_reason, e.safe_mode_until, e.consecutive_failures,
           r.reserved_volume, r.reserved_arbitrage, r.reserved_reserve, r.active_jobs,
           coalesce(x.running_jobs, 0) AS running_jobs
    FROM exchanges e
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(c.amount_usd) FILTER (WHERE c.tier = 'volume'), 0) AS reserved_volume,
               coalesce(sum(c.amount_usd) FILTER (WHERE c.tier = 'arbitrage'), 0)
                   AS reserved_arbitrage,
               coalesce(sum(c.amount_usd) FILTER (WHERE c.tier = 'reserve'), 0)
                   AS reserved_reserve,
               count(*)::int AS active_jobs
        FROM capital_reservations c
        WHERE c.status = 'active' AND c.exchange = e.name
    ) r ON true
    LEFT JOIN (
        SELECT c.exchange, count(*)::int AS running_jobs
        FROM hedge_jobs j
        JOIN capital_reservations c ON c.job_id = j.id AND c.status = 'active'
        WHERE j.status = 'running'
        GROUP BY c.exchange
    ) x ON x.exchange = e.name
    ORDER BY e.name
    LIMIT %(limit)s
"""


def exchanges_with_capital(conn: Connection[Any], params: ListParams) -> list[ExchangeRow]:
    """Every exchange: limits, safe mode, and its active reservations by tier with the jobs
    holding them (admitted or running), through the active-reservation partial index."""
    with conn.cursor(row_factory=class_row(ExchangeRow)) as cur:
        return cur.execute(_EXCHANGES, {"limit": params.limit}).fetchall()


# -- jobs: live counts, running jobs, the tick's trace -------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveCounts:
    pending: int
    admitted: int
    running: int


# One count per live status, each a scan of that status's partial index; never one
# statement over every status (an OR across states is a full scan).
_LIVE_COUNTS = """
    SELECT (SELECT count(*) FROM hedge_jobs WHERE status = 'pending') AS pending,
           (SELECT count(*) FROM hedge_jobs WHERE status = 'admitted') AS admitted,
           (SELECT count(*) FROM hedge_jobs WHERE status = 'running') AS running
"""


def job_live_counts(conn: Connection[Any]) -> LiveCounts:
    with conn.cursor(row_factory=class_row(LiveCounts)) as cur:
        row = cur.execute(_LIVE_COUNTS).fetchone()
    assert row is not None
    return row


@dataclass(frozen=True, slots=True)
class RunningPage:
    """A page of running jobs, oldest start first: after ``(after_started_at, after_id)``
    (both None: the first page), at most ``limit``."""

    after_started_at: datetime | None
    after_id: int | None
    limit: int


@dataclass(frozen=True, slots=True)
class RunningJobRow:
    id: int
    strategy: str
    symbol: str
    notional_usd: Decimal
    worker_id: str | None
    attempt: int
    started_at: datetime
    lease_expires_at: datetime | None
    override_by: str | None


_RUNNING = """
    SELECT id, strategy, symbol, notional_usd, worker_id, attempts AS attempt, started_at,
           lease_expires_at, override_by
    FROM hedge_jobs
    WHERE status = 'running'
      AND (%(after_started_at)s::timestamptz IS NULL
           OR (started_at, id) > (%(after_started_at)s::timestamptz, %(after_id)s::bigint))
    ORDER BY started_at, id
    LIMIT %(limit)s
"""


def running_jobs(conn: Connection[Any], page: RunningPage) -> list[RunningJobRow]:
    """Running jobs (the running partial index: at most the concurrency limits' worth)."""
    if (page.after_started_at is None) != (page.after_id is None):
        raise ValueError("after: give both started_at and id, or neither")
    with conn.cursor(row_factory=class_row(RunningJobRow)) as cur:
        return cur.execute(
            _RUNNING,
            {
                "after_started_at": page.after_started_at,
                "after_id": page.after_id,
                "limit": page.limit,
            },
        ).fetchall()


@dataclass(frozen=True, slots=True)
class JobIds:
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LiveLegRow:
    """A leg of a job's current attempt (unwinds included)."""

    job_id: int
    leg_index: int
    exchange: str
    side: str
    quantity: Decimal
    reduce_only: bool
    status: str
    filled_quantity: Decimal
    avg_price: Decimal | None
    fee_usd: Decimal


def legs_of_current_attempt(conn: Connection[Any], jobs: JobIds) -> list[LiveLegRow]:
    """The legs of each job's current attempt, by job and leg (by the legs' job index)."""
    if not jobs.ids:
        return []
    with conn.cursor(row_factory=class_row(LiveLegRow)) as cur:
        return cur.execute(
            f"SELECT {rows.columns(LiveLegRow, 'l')} FROM hedge_jobs j "
            "JOIN legs l ON l.job_id = j.id AND l.attempt = j.attempts "
            "WHERE j.id = ANY(%(ids)s) ORDER BY l.job_id, l.leg_index, l.id",
            {"ids": list(jobs.ids)},
        ).fetchall()


@dataclass(frozen=True, slots=True)
class SchedulerTickRow:
    """The last tick of one scheduler process (``scheduler_ticks``, written by every tick
    that ran, in its own transaction)."""

    scheduler: str
    last_tick_at: datetime
    duration_ms: Decimal
    rescored: int
    admitted: int
    rejected: int
    expired: int
    skipped: str | None
    ticks: int


def scheduler_ticks_latest(conn: Connection[Any], params: ListParams) -> list[SchedulerTickRow]:
    """The schedulers that ticked, the most recent first (one small row per scheduler
    process that ever ticked)."""
    with conn.cursor(row_factory=class_row(SchedulerTickRow)) as cur:
        return cur.execute(
            f"SELECT {rows.columns(SchedulerTickRow)} FROM scheduler_ticks "
            "ORDER BY last_tick_at DESC LIMIT %(limit)s",
            {"limit": params.limit},
        ).fetchall()


# -- holds now, and what the last hour refused ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingCodeRow:
    """Pending jobs with one decision code now (``None``: not judged yet), with the newest
    one's context as an example."""

    code: str | None
    jobs: int
    example_job_id: int
    example_context: dict[str, Any] | None


# One pass over the pending jobs (their partial index) gives both the pending count and the
# holds by code; the examples are read by primary key, one lookup each.
_PENDING_BY_CODE = """
    WITH pending AS (
        SELECT decision_code AS code, count(*) AS jobs, max(id) AS example_job_id
        FROM hedge_jobs
        WHERE status = 'pending'
        GROUP BY decision_code
    ), examples AS (
        SELECT id, decision_context FROM hedge_jobs
        WHERE id = ANY(ARRAY(SELECT example_job_id FROM pending))
    )
    SELECT p.code, p.jobs, p.example_job_id, x.decision_context AS example_context
    FROM pending p JOIN examples x ON x.id = p.example_job_id
    ORDER BY p.jobs DESC, p.code
    LIMIT %(limit)s
"""


def pending_by_code(conn: Connection[Any], params: ListParams) -> list[PendingCodeRow]:
    """Pending jobs by the decision the tick stored on them (a hold is not an event: the
    tick writes the code on the job, not a ``job_events`` row).  The codes are the
    decisions' few words, so ``limit`` (a bound) is never reached in practice."""
    with conn.cursor(row_factory=class_row(PendingCodeRow)) as cur:
        return cur.execute(_PENDING_BY_CODE, {"limit": params.limit}).fetchall()


@dataclass(frozen=True, slots=True)
class ActiveCounts:
    admitted: int
    running: int


_ACTIVE_COUNTS = """
    SELECT (SELECT count(*) FROM hedge_jobs WHERE status = 'admitted') AS admitted,
           (SELECT count(*) FROM hedge_jobs WHERE status = 'running') AS running
"""


def job_active_counts(conn: Connection[Any]) -> ActiveCounts:
    """Admitted and running jobs, each through its status's partial index (the pending
    count comes with :func:`pending_by_code`)."""
    with conn.cursor(row_factory=class_row(ActiveCounts)) as cur:
        row = cur.execute(_ACTIVE_COUNTS).fetchone()
    assert row is not None
    return row


@dataclass(frozen=True, slots=True)
class EventWindow:
    """Events with ``since <= at < until`` of the given actions."""

    since: datetime
    until: datetime
    actions: tuple[str, ...]
    limit: int


@dataclass(frozen=True, slots=True)
class EventMinuteRow:
    """Events of one minute, action and code (an expiry also by the hold it had), with the
    newest of them as an example (``last_event_id``: its id)."""

    minute: datetime
    action: str
    code: str | None
    held_code: str | None
    events: int
    last_event_id: int
    latest_at: datetime
    example_job_id: int
    example_reason: str
    example_details: dict[str, Any]


# The refusal predicate is written out (not a parameter) so the planner can prove the
# partial index ``ix_job_events_refusals`` applies, whatever plan it caches.
EVENTS_BY_MINUTE_SQL = f"""
    WITH g AS (
        SELECT date_trunc('minute', at) AS minute, action, code,
               CASE WHEN action = 'expire' THEN details ->> 'held_code' END AS held_code,
               count(*) AS events, max(id) AS last_event_id
        FROM job_events
        WHERE at >= %(since)s AND at < %(until)s AND action = ANY(%(actions)s)
          AND action IN ({REFUSALS})
        GROUP BY 1, 2, 3, 4
    )
    , examples AS (  -- by primary key, one lookup each (a join may walk the whole key)
        SELECT id, at, job_id, reason, details FROM job_events
        WHERE id = ANY(ARRAY(SELECT last_event_id FROM g))
    )
    SELECT g.minute, g.action, g.code, g.held_code, g.events, g.last_event_id,
           e.at AS latest_at, e.job_id AS example_job_id, e.reason AS example_reason,
           e.details AS example_details
    FROM g JOIN examples e ON e.id = g.last_event_id
    ORDER BY g.minute, g.action, g.code, g.held_code
    LIMIT %(limit)s
"""


def events_by_minute(conn: Connection[Any], window: EventWindow) -> list[EventMinuteRow]:
    """Events in the window by minute, action and code.  Bounded on both sides by ``at``
    and read through the refusals' partial index: only the window's refusals and
    failures are read, whatever else the hour and the history hold; still, each of them
    is read: the console keeps minutes it
    has read (:class:`perpbot_db.services.monitor.EventTally`) instead of reading the
    hour again every second.  Minutes are UTC's (:func:`snapshot` sets the zone).
    Cut by the timeout it raises :class:`MonitorTimeout` and the snapshot goes on."""
    if not window.since < window.until:
        raise ValueError("window: since must be before until")
    if not set(window.actions) <= set(REFUSAL_ACTIONS):
        raise ValueError(f"window: actions must be among {', '.join(REFUSAL_ACTIONS)}")
    try:
        # a savepoint inside the snapshot: cut by the timeout, it leaves the snapshot usable
        with (
            conn.transaction(),
            conn.cursor(row_factory=class_row(EventMinuteRow)) as cur,
        ):
            return cur.execute(
                EVENTS_BY_MINUTE_SQL,
                {
                    "since": window.since,
                    "until": window.until,
                    "actions": list(window.actions),
                    "limit": window.limit,
                },
            ).fetchall()
    except psycopg.errors.QueryCanceled:
        raise MonitorTimeout(
            f"reading the job events from {window.since.isoformat()} ran past the statement_timeout"
        ) from None


# -- protections, market, processes -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockRow:
    id: int
    scope: str
    target: str
    code: str
    reason: str
    context: dict[str, Any]
    created_by: str
    created_at: datetime
    until: datetime


def active_locks(conn: Connection[Any], params: ListParams) -> list[LockRow]:
    """Protection locks not yet released, newest first (the active-lock partial index)."""
    with conn.cursor(row_factory=class_row(LockRow)) as cur:
        return cur.execute(
            f"SELECT {rows.columns(LockRow)} FROM protection_locks WHERE released_at IS NULL "
            "ORDER BY id DESC LIMIT %(limit)s",
            {"limit": params.limit},
        ).fetchall()


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    funding_rate: Decimal | None
    volatility: Decimal | None
    latency_ms: Decimal | None
    observed_at: datetime


def market_snapshots(conn: Connection[Any], params: ListParams) -> list[SnapshotRow]:
    """The latest snapshot of each (exchange, symbol): one row per key, by key."""
    with conn.cursor(row_factory=class_row(SnapshotRow)) as cur:
        return cur.execute(
            f"SELECT {rows.columns(SnapshotRow)} FROM market_snapshots "
            "ORDER BY exchange, symbol LIMIT %(limit)s",
            {"limit": params.limit},
        ).fetchall()


@dataclass(frozen=True, slots=True)
class WorkerParams:
    """Workers not stopped whose heartbeat is at or after ``alive_since``."""

    alive_since: datetime
    limit: int


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    jobs_finished: int
    live_total: int


def live_workers(conn: Connection[Any], params: WorkerParams) -> list[WorkerRow]:
    """Workers with a recent heartbeat, newest beat first; ``live_total`` counts them all
    (the registry holds one small row per worker process)."""
    with conn.cursor(row_factory=class_row(WorkerRow)) as cur:
        return cur.execute(
            "SELECT id, host, pid, concurrency, started_at, heartbeat_at, jobs_finished, "
            "count(*) OVER ()::int AS live_total FROM workers "
            "WHERE stopped_at IS NULL AND heartbeat_at >= %(since)s "
            "ORDER BY heartbeat_at DESC, id LIMIT %(limit)s",
            {"since": params.alive_since, "limit": params.limit},
        ).fetchall()


def leader_current(conn: Connection[Any]) -> str | None:
    """The ``application_name`` of the session holding the leader lock in this database.

    The lock of :mod:`perpbot_db.runtime.leader` (``perpbot_db.store.locks``: key
    ``hashtext('perpbot.leader'), 0``, a session advisory lock); advisory locks are per
    database, so the lock is looked for in this one only."""
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = hashtext('perpbot.leader')::oid AND l.objid = 0 AND l.objsubid = 2 "
        "LIMIT 1"
    ).fetchone()
    # a session of another role may hide its name: the lock is held all the same
    return None if row is None else str(row[0] or "unknown")
