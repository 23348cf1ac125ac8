"""The monitoring state: one read model that the console, ``perpbot status`` and ``/metrics`` serve.

For the engineers who build on it.  :func:`build_state` reads the database in one
read-only snapshot (every statement under a ``statement_timeout``, none counting
over history: :mod:`perpbot_db.store.monitor`) and returns a
:class:`MonitoringState`, a frozen pydantic model; :class:`StateCache` builds it at
most once per interval and hands the same object to every caller, so twenty
browser tabs and a Prometheus scrape cost one build a second, not twenty-one.

Use: ``cache = StateCache(state_builder(pool.connection, MonitorConfig.from_settings(s)),
interval_s=1.0)`` once per process, then ``cache.get()`` from any thread (it raises
:class:`StateUnavailable` with the reason while the database cannot answer;
``cache.last_good()`` is the previous state, whose ``built_at`` says how old it
is).  A one-off reader (``perpbot status``) calls ``build_state(conn, config)``.
Running jobs beyond the first page: :func:`running_page` with ``jobs.running_next``.

Serialise with ``state.to_json()`` / ``state.to_dict()`` (or FastAPI's
``response_model=MonitoringState``: it serialises by alias): money is a decimal
*string* (``"1234.50000000"``, never a float), times are ISO 8601 in UTC, ages are
float seconds.  The JSON, ``"version": 1``::

    version     1 (a breaking change to the shape bumps it)
    built_at    the database clock the snapshot was read at; build_ms: how long it took
    global      status (running | paused | halted | manual_override), risk_mode, day (UTC),
                volume_usd, fees_usd, realized_pnl_usd, jobs_completed, jobs_failed (today),
                daily_loss_limit_usd, loss_used_usd, loss_used_ratio, halt_reason,
                override {active, by, at, reason}
    capital[]   per exchange: equity_usd, tiers[] {tier, share, budget_usd, used_usd,
                available_usd} for volume / arbitrage / reserve, reserve_usd (the reserve
                tier's budget), inflight_usd (all active reservations), inflight_limit_usd,
                single_job_limit_usd, max_inflight_notional_usd, active_jobs, breaches[]
    exchanges[] name, enabled, safe_mode, safe_mode_reason, safe_mode_until, latency_ms (worst
                snapshot), latency_hard_ms, funding_rates {symbol: rate}, open_positions (null:
                no adapter reports positions yet), concurrent_jobs (admitted + running holding
                capital there), running_jobs, max_concurrent_jobs, consecutive_failures,
                market_age_s (newest snapshot), stale_symbols[], today {volume_usd, fees_usd,
                realized_pnl_usd, loss_used_usd, jobs_completed, jobs_failed}
    jobs        pending, admitted, running (live counts), completed_today, failed_today,
                running_jobs[] (oldest start first: id, strategy, symbol, notional_usd,
                worker_id, attempt, started_at, age_s, lease_expires_at, override_by, legs[]),
                running_next (a cursor {started_at, id} for :func:`running_page`; null: the
                list holds every running job)
    risk        mode, halted, halt_reason, override, consecutive_failures,
                max_consecutive_failures, exchange_failures {name: n}, fast_markets[],
                delayed_exchanges[], locks[] (active protection locks: scope, target, code,
                reason, context, until, expires_in_s), holds[] (pending jobs by the code that
                holds them now), denials[] (rejections and expiries over the window, by code;
                an expiry also by the hold it had), failures[] (failed attempts by code),
                unhedged_ends, window_s (how much of the window the counts cover: whole
                minutes, from the minute an hour ago; less while a cache back-fills),
                events_problem, max_market_age_s, limits_problem
    market[]    exchange, symbol, bid, ask, last, funding_rate, volatility, latency_ms,
                observed_at, age_s, stale
    processes   leader (the scheduler holding the leader lock), last_tick_at, tick_age_s
                (the newest tick of any scheduler), schedulers[] {scheduler, last_tick_at,
                age_s, duration_ms, rescored, admitted, rejected, expired, skipped, ticks},
                live_workers, workers[] {id, host, pid, heartbeat_at, heartbeat_age_s,
                jobs_finished, ...}
    health      verdict (ok | degraded | down), reasons[] {code, severity, text}
                (:mod:`perpbot_db.domain.health`)

The last hour's denials and failures: every event of the hour would be read
again each second, so a cache's builder keeps whole past minutes
(:class:`EventTally`) and reads only the last few; a one-off build reads the
hour (about 2 s per million events of the hour on a loaded 2-core machine: past
the timeout, the state still builds and ``risk.events_problem`` says why).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perpbot_db.domain import capital, health, risk
from perpbot_db.domain.decisions import short_reason
from perpbot_db.domain.lifecycle import CapitalTier, JobAction, RiskMode, SystemAction, SystemStatus
from perpbot_db.domain.protections import ProtectionCode
from perpbot_db.store import monitor as reads
from perpbot_db.store.monitor import MonitorReadError, MonitorTimeout, ReadConnection

if TYPE_CHECKING:  # the read commands import this module: no settings machinery at import
    from perpbot_db.settings import Settings

log = logging.getLogger("perpbot.monitor")

__all__ = [
    "EventTally",
    "MonitorConfig",
    "MonitorReadError",
    "MonitorTimeout",
    "MonitoringState",
    "RunningCursor",
    "StateCache",
    "StateUnavailable",
    "build_state",
    "running_page",
    "state_builder",
]

VERSION: Literal[1] = 1
DENIALS = (JobAction.REJECT.value, JobAction.EXPIRE.value)
FAILURES = (JobAction.FAIL.value, JobAction.RECOVER_FAIL.value)
EVENT_ACTIONS = DENIALS + FAILURES
_RESOLUTION = timedelta(microseconds=1)  # timestamptz's: ``at < now + 1 us`` is ``at <= now``
_EVENT_ROWS = 100_000  # (minute, action, code) groups of one read: a bound, never reached
UNHEDGED_CODE = "unhedged"


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorConfig:
    """What the state is built with; :meth:`from_settings` takes the daemon's values."""

    interval_s: float = 1.0  # StateCache: at most one build per interval
    statement_timeout_ms: int = 2000  # any one statement of a build
    tick_interval: timedelta = timedelta(seconds=1)
    stale_ticks: int = 5  # the tick is stale after this many intervals (+ tick_grace)
    tick_grace: timedelta = timedelta(seconds=5)  # a slow tick records its start
    worker_alive: timedelta = timedelta(seconds=30)  # a heartbeat older than this: gone
    events_window: timedelta = timedelta(hours=1)
    running_limit: int = 100
    list_limit: int = 1000

    def __post_init__(self) -> None:
        positive = {
            "interval_s": self.interval_s > 0,
            "statement_timeout_ms": self.statement_timeout_ms > 0,
            "tick_interval": self.tick_interval > timedelta(0),
            "stale_ticks": self.stale_ticks > 0,
            "tick_grace": self.tick_grace >= timedelta(0),
            "worker_alive": self.worker_alive > timedelta(0),
            "events_window": self.events_window > timedelta(0),
            "running_limit": 0 < self.running_limit <= 10_000,
            "list_limit": 0 < self.list_limit <= 100_000,
        }
        for name, ok in positive.items():
            if not ok:
                raise ValueError(f"monitor setting {name}: {getattr(self, name)!r} is out of range")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> MonitorConfig:
        """The tick's interval, the workers' lease (a heartbeat every third of it, so a
        whole lease without one means the worker is gone); ``overrides`` win."""
        values: dict[str, Any] = {
            "tick_interval": timedelta(seconds=settings.tick_interval_s),
            "worker_alive": timedelta(seconds=settings.lease_s),
        }
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"monitor setting {sorted(unknown)[0]}: unknown")
        return cls(**{**values, **overrides})


# -- the model ---------------------------------------------------------------------------------


class _Model(BaseModel):
    # A NaN a hand-written row may hold is shown as "NaN", not a failed build.
    model_config = ConfigDict(frozen=True, populate_by_name=True, allow_inf_nan=True)


class Override(_Model):
    """An operator's override of a halt (status ``manual_override``): who, when, why."""

    active: bool
    by: str | None = None
    at: datetime | None = None
    reason: str | None = None


class GlobalSection(_Model):
    status: SystemStatus
    risk_mode: RiskMode
    day: date
    volume_usd: Decimal
    fees_usd: Decimal
    realized_pnl_usd: Decimal
    jobs_completed: int
    jobs_failed: int
    daily_loss_limit_usd: Decimal
    loss_used_usd: Decimal
    loss_used_ratio: Decimal
    halt_reason: str | None
    override: Override
    updated_at: datetime
    updated_by: str | None


class TierCapital(_Model):
    tier: CapitalTier
    share: Decimal
    budget_usd: Decimal
    used_usd: Decimal
    available_usd: Decimal


class ExchangeCapital(_Model):
    exchange: str
    enabled: bool
    equity_usd: Decimal
    tiers: list[TierCapital]
    reserve_usd: Decimal
    inflight_usd: Decimal
    inflight_limit_usd: Decimal
    single_job_limit_usd: Decimal
    max_inflight_notional_usd: Decimal | None
    active_jobs: int
    breaches: list[str]


class DayCounters(_Model):
    volume_usd: Decimal = Decimal(0)
    fees_usd: Decimal = Decimal(0)
    realized_pnl_usd: Decimal = Decimal(0)
    loss_used_usd: Decimal = Decimal(0)
    jobs_completed: int = 0
    jobs_failed: int = 0


class ExchangeStatus(_Model):
    name: str
    enabled: bool
    safe_mode: bool
    safe_mode_reason: str | None
    safe_mode_until: datetime | None
    latency_ms: Decimal | None
    latency_hard_ms: Decimal
    funding_rates: dict[str, Decimal | None]
    open_positions: None = None  # no adapter reports positions yet
    concurrent_jobs: int
    running_jobs: int
    max_concurrent_jobs: int
    consecutive_failures: int
    market_age_s: float | None
    stale_symbols: list[str]
    today: DayCounters


class LegView(_Model):
    leg_index: int
    exchange: str
    side: str
    quantity: Decimal
    reduce_only: bool
    status: str
    filled_quantity: Decimal
    avg_price: Decimal | None
    fee_usd: Decimal


class RunningJob(_Model):
    id: int
    strategy: str
    symbol: str
    notional_usd: Decimal
    worker_id: str | None
    attempt: int
    started_at: datetime
    age_s: float
    lease_expires_at: datetime | None
    override_by: str | None
    legs: list[LegView]


class RunningCursor(_Model):
    """Where the next page of running jobs starts (after this job)."""

    started_at: datetime
    id: int


class RunningJobsPage(_Model):
    jobs: list[RunningJob]
    next: RunningCursor | None


class JobsSection(_Model):
    pending: int
    admitted: int
    running: int
    completed_today: int
    failed_today: int
    running_jobs: list[RunningJob]
    running_next: RunningCursor | None


class LockView(_Model):
    id: int
    scope: str
    target: str
    code: str
    reason: str
    context: dict[str, Any]
    created_by: str
    created_at: datetime
    until: datetime
    expires_in_s: float  # at or below 0: past its end, released at the leader's next round


class FastMarket(_Model):
    """A symbol whose volatility is beyond the mode's hard limit now, or that is locked
    for it (blacklisted until ``locked_until``)."""

    symbol: str
    exchange: str | None
    volatility: str | None
    limit: Decimal
    locked_until: datetime | None


class DelayedExchange(_Model):
    """An exchange whose API latency is beyond the mode's hard limit now, or that is locked
    for it (in safe mode until ``locked_until``)."""

    exchange: str
    latency_ms: str | None
    limit_ms: Decimal
    locked_until: datetime | None


class HoldCount(_Model):
    code: str
    jobs: int
    example_job_id: int
    example: str


class EventCount(_Model):
    action: str
    code: str | None
    held_code: str | None
    events: int
    latest_at: datetime
    example_job_id: int
    example: str


class RiskSection(_Model):
    mode: RiskMode
    halted: bool
    halt_reason: str | None
    override: Override
    consecutive_failures: int
    max_consecutive_failures: int
    exchange_failures: dict[str, int]
    fast_markets: list[FastMarket]
    delayed_exchanges: list[DelayedExchange]
    locks: list[LockView]
    holds: list[HoldCount]
    denials: list[EventCount]
    failures: list[EventCount]
    unhedged_ends: int
    window_s: float
    events_problem: str | None  # why denials and failures are missing (a read cut short)
    max_market_age_s: float
    limits_problem: str | None


class MarketRow(_Model):
    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    funding_rate: Decimal | None
    volatility: Decimal | None
    latency_ms: Decimal | None
    observed_at: datetime
    age_s: float
    stale: bool


class WorkerView(_Model):
    id: str
    host: str
    pid: int
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    jobs_finished: int


class SchedulerView(_Model):
    """One scheduler process's last tick: when, how long, what it did, why it skipped."""

    scheduler: str
    last_tick_at: datetime
    age_s: float
    duration_ms: Decimal
    rescored: int
    admitted: int
    rejected: int
    expired: int
    skipped: str | None
    ticks: int


class ProcessesSection(_Model):
    leader: str | None
    last_tick_at: datetime | None
    tick_age_s: float | None
    schedulers: list[SchedulerView]
    live_workers: int
    workers: list[WorkerView]


class ReasonView(_Model):
    code: health.ReasonCode
    severity: health.Verdict
    text: str


class HealthSection(_Model):
    verdict: health.Verdict
    reasons: list[ReasonView]


class MonitoringState(_Model):
    """The whole state, version 1 (see the module docstring for the shape)."""

    version: Literal[1] = VERSION
    built_at: datetime
    build_ms: float
    global_: GlobalSection = Field(alias="global")
    capital: list[ExchangeCapital]
    exchanges: list[ExchangeStatus]
    jobs: JobsSection
    risk: RiskSection
    market: list[MarketRow]
    processes: ProcessesSection
    health: HealthSection

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (decimals as strings), ``global`` by its name."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


# -- building it -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """Everything one snapshot read, before it is shaped."""

    now: datetime
    system: reads.SystemRow
    override: reads.ControlEventRow | None
    counters: Mapping[str, reads.CounterRow]
    limits: risk.ModeLimits
    limits_problem: str | None
    exchanges: Sequence[reads.ExchangeRow]
    live: reads.LiveCounts
    running: Sequence[reads.RunningJobRow]
    legs: Sequence[reads.LiveLegRow]
    ticks: Sequence[reads.SchedulerTickRow]
    holds: Sequence[reads.HoldRow]
    events: Sequence[reads.EventMinuteRow]
    events_from: datetime  # the events cover [events_from, now]
    events_problem: str | None
    locks: Sequence[reads.LockRow]
    snapshots: Sequence[reads.SnapshotRow]
    workers: Sequence[reads.WorkerRow]
    leader: str | None


def _limits_in_force(conn: ReadConnection, mode: RiskMode) -> tuple[risk.ModeLimits, str | None]:
    """The mode's limits as the tick judges with them (its ``risk_limits`` rows over the
    defaults); rows that break a rule give the defaults and the problem."""
    rows = reads.risk_limits_of_mode(conn, reads.ModeParams(mode.value))
    try:
        return risk.with_limits(risk.LIMITS[mode], {r.name: r.value for r in rows}), None
    except risk.LimitError as exc:
        return risk.LIMITS[mode], f"risk limits in force break a rule: {mode.value}.{exc}"


def _read(
    conn: ReadConnection, config: MonitorConfig, now: datetime | None, tally: EventTally | None
) -> _Read:
    with reads.snapshot(conn, reads.SnapshotParams(config.statement_timeout_ms)) as db_now:
        at = db_now if now is None else now
        system = reads.system_state(conn)
        mode = RiskMode(system.risk_mode)
        limits, problem = _limits_in_force(conn, mode)
        override = None
        if system.status == SystemStatus.MANUAL_OVERRIDE:
            override = reads.control_event_latest(
                conn, reads.ControlEventParams(SystemAction.CLEAR_HALT.value)
            )
        day = at.astimezone(UTC).date()
        counters = {c.scope: c for c in reads.counters_of_day(conn, reads.DayParams(day))}
        bounded = reads.ListParams(config.list_limit)
        running = reads.running_jobs(conn, reads.RunningPage(None, None, config.running_limit))
        events_problem = None
        try:
            if tally is None:
                events_from = _minute(at - config.events_window)
                events = reads.events_by_minute(
                    conn,
                    reads.EventWindow(events_from, at + _RESOLUTION, EVENT_ACTIONS, _EVENT_ROWS),
                )
            else:
                events, events_from = tally.read(conn, at)
        except MonitorTimeout as exc:  # the rest of the state stands without them
            events, events_from, events_problem = [], at, str(exc)
        return _Read(
            now=at,
            system=system,
            override=override,
            counters=counters,
            limits=limits,
            limits_problem=problem,
            exchanges=reads.exchanges_with_capital(conn, bounded),
            live=reads.job_live_counts(conn),
            running=running,
            legs=reads.legs_of_current_attempt(conn, reads.JobIds(tuple(r.id for r in running))),
            ticks=reads.scheduler_ticks_latest(conn, bounded),
            holds=reads.holds_by_code(conn, bounded),
            events=events,
            events_from=events_from,
            events_problem=events_problem,
            locks=reads.active_locks(conn, bounded),
            snapshots=reads.market_snapshots(conn, bounded),
            workers=reads.live_workers(
                conn, reads.WorkerParams(at - config.worker_alive, config.list_limit)
            ),
            leader=reads.leader_current(conn),
        )


def build_state(
    conn: ReadConnection,
    config: MonitorConfig,
    now: datetime | None = None,
    *,
    tally: EventTally | None = None,
) -> MonitoringState:
    """Read one snapshot and shape it; ``now`` defaults to the database clock (one clock
    for the ages of everything the tick and the workers wrote).

    Without ``tally`` the events of the whole window are read (a one-off state:
    ``perpbot status``); a builder called again and again passes the same
    :class:`EventTally`, which reads each past minute once.

    Raises :class:`MonitorTimeout` when a statement runs past the timeout and
    :class:`MonitorReadError` when the database cannot answer."""
    started = time.perf_counter()
    r = _read(conn, config, now, tally)
    return _shape(r, config, build_ms=(time.perf_counter() - started) * 1000)


def _age(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


def _day(row: reads.CounterRow | None) -> DayCounters:
    if row is None:
        return DayCounters()
    return DayCounters(
        volume_usd=row.volume_usd,
        fees_usd=row.fees_usd,
        realized_pnl_usd=row.realized_pnl_usd,
        loss_used_usd=row.loss_used_usd,
        jobs_completed=row.jobs_completed,
        jobs_failed=row.jobs_failed,
    )


def _book(row: reads.ExchangeRow) -> capital.ExchangeBook:
    return capital.ExchangeBook(
        exchange=row.name,
        equity_usd=row.equity_usd,
        volume_share=row.volume_share,
        arbitrage_share=row.arbitrage_share,
        reserve_share=row.reserve_share,
        single_job_cap=row.single_job_cap,
        inflight_cap=row.inflight_cap,
        safe_mode=row.safe_mode,
        reserved={
            CapitalTier.VOLUME: row.reserved_volume,
            CapitalTier.ARBITRAGE: row.reserved_arbitrage,
            CapitalTier.RESERVE: row.reserved_reserve,
        },
    )


def _capital(row: reads.ExchangeRow) -> ExchangeCapital:
    """The capital functions admission uses, on what the reservations hold now."""
    book = _book(row)
    return ExchangeCapital(
        exchange=row.name,
        enabled=row.enabled,
        equity_usd=row.equity_usd,
        tiers=[
            TierCapital(
                tier=tier,
                share=book.share(tier),
                budget_usd=book.budget(tier),
                used_usd=book.reserved[tier],
                available_usd=book.available(tier),
            )
            for tier in CapitalTier
        ],
        reserve_usd=book.budget(CapitalTier.RESERVE),
        inflight_usd=book.reserved_total,
        inflight_limit_usd=book.inflight_limit_usd,
        single_job_limit_usd=book.single_job_limit_usd,
        max_inflight_notional_usd=row.max_inflight_notional_usd,
        active_jobs=row.active_jobs,
        breaches=capital.breaches(book),
    )


def _stale(r: _Read, snap: reads.SnapshotRow) -> bool:
    """As admission judges it: older, or further ahead, than the mode's age limit."""
    return abs(r.now - snap.observed_at) > r.limits.max_market_age


def _locks_by(r: _Read, code: ProtectionCode) -> dict[str, reads.LockRow]:
    return {lock.target: lock for lock in r.locks if lock.code == code.value}


def _exchanges(r: _Read) -> list[ExchangeStatus]:
    snaps: dict[str, list[reads.SnapshotRow]] = {}
    for s in r.snapshots:
        snaps.setdefault(s.exchange, []).append(s)
    out = []
    for row in r.exchanges:
        mine = snaps.get(row.name, [])
        latencies = [s.latency_ms for s in mine if s.latency_ms is not None]
        out.append(
            ExchangeStatus(
                name=row.name,
                enabled=row.enabled,
                safe_mode=row.safe_mode,
                safe_mode_reason=row.safe_mode_reason,
                safe_mode_until=row.safe_mode_until,
                latency_ms=max(latencies) if latencies else None,
                latency_hard_ms=r.limits.latency_hard_ms,
                funding_rates={s.symbol: s.funding_rate for s in mine},
                concurrent_jobs=row.active_jobs,
                running_jobs=row.running_jobs,
                max_concurrent_jobs=row.max_concurrent_jobs,
                consecutive_failures=row.consecutive_failures,
                market_age_s=min((_age(r.now, s.observed_at) for s in mine), default=None),
                stale_symbols=[s.symbol for s in mine if _stale(r, s)],
                today=_day(r.counters.get(row.name)),
            )
        )
    return out


def _running(
    now: datetime, rows: Sequence[reads.RunningJobRow], legs: Sequence[reads.LiveLegRow]
) -> list[RunningJob]:
    by_job: dict[int, list[LegView]] = {}
    for leg in legs:
        by_job.setdefault(leg.job_id, []).append(
            LegView(
                leg_index=leg.leg_index,
                exchange=leg.exchange,
                side=leg.side,
                quantity=leg.quantity,
                reduce_only=leg.reduce_only,
                status=leg.status,
                filled_quantity=leg.filled_quantity,
                avg_price=leg.avg_price,
                fee_usd=leg.fee_usd,
            )
        )
    return [
        RunningJob(
            id=j.id,
            strategy=j.strategy,
            symbol=j.symbol,
            notional_usd=j.notional_usd,
            worker_id=j.worker_id,
            attempt=j.attempt,
            started_at=j.started_at,
            age_s=_age(now, j.started_at),
            lease_expires_at=j.lease_expires_at,
            override_by=j.override_by,
            legs=by_job.get(j.id, []),
        )
        for j in rows
    ]


def _next(rows: Sequence[reads.RunningJobRow], limit: int) -> RunningCursor | None:
    if len(rows) < limit:
        return None
    return RunningCursor(started_at=rows[-1].started_at, id=rows[-1].id)


def _override(r: _Read) -> Override:
    if r.system.status != SystemStatus.MANUAL_OVERRIDE:
        return Override(active=False)
    event = r.override
    if event is None:
        return Override(active=True, by=r.system.updated_by, at=r.system.updated_at)
    return Override(active=True, by=event.actor, at=event.at, reason=event.reason)


def _fast_markets(r: _Read) -> list[FastMarket]:
    limit = r.limits.volatility_hard
    found: dict[str, FastMarket] = {}
    for lock in _locks_by(r, ProtectionCode.FAST_MARKET).values():
        found[lock.target] = FastMarket(
            symbol=lock.target,
            exchange=lock.context.get("exchange"),
            volatility=lock.context.get("volatility"),
            limit=limit,
            locked_until=lock.until,
        )
    for s in r.snapshots:
        v = s.volatility
        if v is None or (v.is_finite() and 0 <= v <= limit) or s.symbol in found:
            continue
        found[s.symbol] = FastMarket(
            symbol=s.symbol, exchange=s.exchange, volatility=str(v), limit=limit, locked_until=None
        )
    return sorted(found.values(), key=lambda f: f.symbol)


def _delayed(r: _Read) -> list[DelayedExchange]:
    limit = r.limits.latency_hard_ms
    found: dict[str, DelayedExchange] = {}
    for lock in _locks_by(r, ProtectionCode.API_LATENCY).values():
        found[lock.target] = DelayedExchange(
            exchange=lock.target,
            latency_ms=lock.context.get("latency_ms"),
            limit_ms=limit,
            locked_until=lock.until,
        )
    for s in r.snapshots:
        if s.latency_ms is None or s.latency_ms <= limit or s.exchange in found:
            continue
        found[s.exchange] = DelayedExchange(
            exchange=s.exchange, latency_ms=str(s.latency_ms), limit_ms=limit, locked_until=None
        )
    return sorted(found.values(), key=lambda d: d.exchange)


def _event_counts(rows: Sequence[reads.EventMinuteRow]) -> list[EventCount]:
    """Minutes merged: per action, code (and held code), the count and the newest event
    as the example; most events first."""
    merged: dict[tuple[str, str | None, str | None], list[reads.EventMinuteRow]] = {}
    for row in rows:
        merged.setdefault((row.action, row.code, row.held_code), []).append(row)
    out = []
    for (action, code, held_code), group in merged.items():
        newest = max(group, key=lambda g: g.last_event_id)
        example = newest.example_reason
        if newest.example_details:
            example += f": {short_reason(newest.example_details, limit=200)}"
        out.append(
            EventCount(
                action=action,
                code=code,
                held_code=held_code,
                events=sum(g.events for g in group),
                latest_at=newest.latest_at,
                example_job_id=newest.example_job_id,
                example=example,
            )
        )
    return sorted(out, key=lambda e: (-e.events, e.action, e.code or "", e.held_code or ""))


def _exposures(r: _Read) -> list[health.Exposure]:
    """Open exposure as the protections recorded it: an active ``unhedged_exposure``
    lock per exchange, until it ends or an operator lets the exchange out."""
    out = []
    for lock in _locks_by(r, ProtectionCode.UNHEDGED_EXPOSURE).values():
        size = lock.context.get("exposure_usd")
        usd = None if size in (None, "unknown") else Decimal(str(size))
        out.append(health.Exposure(lock.target, usd, str(lock.context.get("jobs", ""))))
    return out


def _last_tick(r: _Read) -> datetime | None:
    return max((t.last_tick_at for t in r.ticks), default=None)


def _health(r: _Read, config: MonitorConfig, live_workers: int) -> HealthSection:
    readings = health.Readings(
        status=SystemStatus(r.system.status),
        halt_reason=r.system.halt_reason,
        live_workers=live_workers,
        leader=r.leader,
        tick=health.TickReading(
            last_tick_at=_last_tick(r),
            interval=config.tick_interval,
            stale_ticks=config.stale_ticks,
            grace=config.tick_grace,
        ),
        max_market_age=r.limits.max_market_age,
        markets=[health.MarketAge(s.exchange, s.symbol, s.observed_at) for s in r.snapshots],
        exchanges=[e.name for e in r.exchanges if e.enabled],
        exposures=_exposures(r),
        safe_mode=[(e.name, e.safe_mode_reason) for e in r.exchanges if e.safe_mode],
    )
    verdict = health.assess(readings, r.now)
    return HealthSection(
        verdict=verdict.verdict,
        reasons=[
            ReasonView(code=x.code, severity=x.severity, text=x.text) for x in verdict.reasons
        ],
    )


def _shape(r: _Read, config: MonitorConfig, *, build_ms: float = 0.0) -> MonitoringState:
    """What one snapshot read, as the model (pure: no database, no clock)."""
    now, system = r.now, r.system
    today = _day(r.counters.get("global"))
    limit = system.daily_loss_limit_usd
    override = _override(r)
    live_workers = r.workers[0].live_total if r.workers else 0
    last_tick = _last_tick(r)
    events = [e for e in r.events if e.action in DENIALS]
    failures = [e for e in r.events if e.action in FAILURES]
    return MonitoringState(
        built_at=now,
        build_ms=round(build_ms, 3),
        global_=GlobalSection(
            status=SystemStatus(system.status),
            risk_mode=RiskMode(system.risk_mode),
            day=now.astimezone(UTC).date(),
            volume_usd=today.volume_usd,
            fees_usd=today.fees_usd,
            realized_pnl_usd=today.realized_pnl_usd,
            jobs_completed=today.jobs_completed,
            jobs_failed=today.jobs_failed,
            daily_loss_limit_usd=limit,
            loss_used_usd=today.loss_used_usd,
            loss_used_ratio=(today.loss_used_usd / limit) if limit > 0 else Decimal(0),
            halt_reason=system.halt_reason,
            override=override,
            updated_at=system.updated_at,
            updated_by=system.updated_by,
        ),
        capital=[_capital(row) for row in r.exchanges],
        exchanges=_exchanges(r),
        jobs=JobsSection(
            pending=r.live.pending,
            admitted=r.live.admitted,
            running=r.live.running,
            completed_today=today.jobs_completed,
            failed_today=today.jobs_failed,
            running_jobs=_running(now, r.running, r.legs),
            running_next=_next(r.running, config.running_limit),
        ),
        risk=RiskSection(
            mode=RiskMode(system.risk_mode),
            halted=system.status == SystemStatus.HALTED,
            halt_reason=system.halt_reason,
            override=override,
            consecutive_failures=system.consecutive_failures,
            max_consecutive_failures=system.max_consecutive_failures,
            exchange_failures={e.name: e.consecutive_failures for e in r.exchanges},
            fast_markets=_fast_markets(r),
            delayed_exchanges=_delayed(r),
            locks=[
                LockView(
                    id=lock.id,
                    scope=lock.scope,
                    target=lock.target,
                    code=lock.code,
                    reason=lock.reason,
                    context=lock.context,
                    created_by=lock.created_by,
                    created_at=lock.created_at,
                    until=lock.until,
                    expires_in_s=_age(lock.until, now),
                )
                for lock in r.locks
            ],
            holds=[
                HoldCount(
                    code=h.code,
                    jobs=h.jobs,
                    example_job_id=h.example_job_id,
                    example=short_reason(h.example_context, limit=200),
                )
                for h in r.holds
            ],
            denials=_event_counts(events),
            failures=_event_counts(failures),
            unhedged_ends=sum(e.events for e in failures if e.code == UNHEDGED_CODE),
            window_s=_age(now, r.events_from),
            events_problem=r.events_problem,
            max_market_age_s=r.limits.max_market_age.total_seconds(),
            limits_problem=r.limits_problem,
        ),
        market=[
            MarketRow(
                exchange=s.exchange,
                symbol=s.symbol,
                bid=s.bid,
                ask=s.ask,
                last=s.last,
                funding_rate=s.funding_rate,
                volatility=s.volatility,
                latency_ms=s.latency_ms,
                observed_at=s.observed_at,
                age_s=_age(now, s.observed_at),
                stale=_stale(r, s),
            )
            for s in r.snapshots
        ],
        processes=ProcessesSection(
            leader=r.leader,
            last_tick_at=last_tick,
            tick_age_s=None if last_tick is None else _age(now, last_tick),
            schedulers=[
                SchedulerView(
                    scheduler=t.scheduler,
                    last_tick_at=t.last_tick_at,
                    age_s=_age(now, t.last_tick_at),
                    duration_ms=t.duration_ms,
                    rescored=t.rescored,
                    admitted=t.admitted,
                    rejected=t.rejected,
                    expired=t.expired,
                    skipped=t.skipped,
                    ticks=t.ticks,
                )
                for t in r.ticks
            ],
            live_workers=live_workers,
            workers=[
                WorkerView(
                    id=w.id,
                    host=w.host,
                    pid=w.pid,
                    concurrency=w.concurrency,
                    started_at=w.started_at,
                    heartbeat_at=w.heartbeat_at,
                    heartbeat_age_s=_age(now, w.heartbeat_at),
                    jobs_finished=w.jobs_finished,
                )
                for w in r.workers
            ],
        ),
        health=_health(r, config, live_workers),
    )


def running_page(
    conn: ReadConnection,
    config: MonitorConfig,
    *,
    after: RunningCursor | None,
    limit: int | None = None,
    now: datetime | None = None,
) -> RunningJobsPage:
    """One page of running jobs after ``after`` (the state's ``jobs.running_next``), oldest
    start first, in its own snapshot."""
    size = config.running_limit if limit is None else limit
    if not 0 < size <= 10_000:
        raise ValueError(f"limit: {size} is out of range (1 to 10000)")
    page = reads.RunningPage(
        after_started_at=None if after is None else after.started_at,
        after_id=None if after is None else after.id,
        limit=size,
    )
    with reads.snapshot(conn, reads.SnapshotParams(config.statement_timeout_ms)) as db_now:
        rows = reads.running_jobs(conn, page)
        legs = reads.legs_of_current_attempt(conn, reads.JobIds(tuple(j.id for j in rows)))
    return RunningJobsPage(
        jobs=_running(db_now if now is None else now, rows, legs), next=_next(rows, size)
    )


# -- the events of the window, a minute at a time ------------------------------------------------


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class EventTally:
    """The window's denials and failures by code, kept in whole minutes between builds.

    Design note.  Counting the last hour from ``job_events`` reads every event of
    the hour (the BRIN index bounds the scan to the window, not to the denials):
    with a million events an hour that is about 0.2 s of database time, every
    second.  So minutes that are over are read once and kept: a minute older than
    ``seal_after`` is *sealed* (read, stored, never read again), and each build
    reads only the unsealed tail (about ``seal_after``) plus, while the window is
    not yet covered, up to ``backfill`` of older minutes.  A first build therefore
    covers ``backfill + seal_after`` and the whole window is covered after a few
    builds; the state says how much it covers (``risk.window_s``).  Minutes that
    leave the window are dropped.  A gap longer than ``backfill`` since the last
    read (nobody asked for a while) or a clock that went back starts over.

    What it gives up: an event committed more than ``seal_after`` after its ``at``
    (a transaction open that long) is not counted once its minute is sealed.  The
    window is whole minutes: it starts at the minute ``events_window`` before now.
    Thread-safe (a lock); :class:`StateCache` builds one at a time anyway.
    """

    def __init__(
        self,
        window: timedelta,
        *,
        seal_after: timedelta = timedelta(minutes=2),
        backfill: timedelta = timedelta(minutes=10),
    ) -> None:
        if window <= timedelta(0) or seal_after < timedelta(minutes=1):
            raise ValueError("window must be above 0 and seal_after at least a minute")
        if backfill < timedelta(minutes=1):
            raise ValueError("backfill: at least a minute")
        self.window, self.seal_after, self.backfill = window, seal_after, backfill
        self._mutex = threading.Lock()
        self._sealed: dict[datetime, list[reads.EventMinuteRow]] = {}
        self._from: datetime | None = None  # sealed minutes cover [_from, _until)
        self._until: datetime | None = None
        self.last_reads: list[tuple[datetime, datetime]] = []  # the ranges the last call read

    def read(
        self, conn: ReadConnection, now: datetime
    ) -> tuple[list[reads.EventMinuteRow], datetime]:
        """The events of the window at ``now`` by minute, and where the coverage starts."""
        with self._mutex:
            self.last_reads = []
            start = _minute(now - self.window)
            seal_until = _minute(now - self.seal_after)
            if (
                self._from is None
                or self._until is None
                or seal_until < self._until
                or seal_until - self._until > self.backfill
            ):
                self._sealed, self._from, self._until = {}, seal_until, seal_until
            if self._until < seal_until:  # minutes that are over now
                self._seal(conn, self._until, seal_until)
                self._until = seal_until
            if self._from > start:  # back-fill, a bounded stretch per build
                lo = max(start, self._from - self.backfill)
                self._seal(conn, lo, self._from)
                self._from = lo
            self._sealed = {m: rows for m, rows in self._sealed.items() if m >= start}
            self._from = max(self._from, start)
            fresh = self._range(conn, self._until, now + _RESOLUTION)
            kept = [row for rows in self._sealed.values() for row in rows]
            return kept + fresh, self._from

    def _range(
        self, conn: ReadConnection, since: datetime, until: datetime
    ) -> list[reads.EventMinuteRow]:
        self.last_reads.append((since, until))
        window = reads.EventWindow(since, until, EVENT_ACTIONS, _EVENT_ROWS)
        return reads.events_by_minute(conn, window)

    def _seal(self, conn: ReadConnection, since: datetime, until: datetime) -> None:
        for row in self._range(conn, since, until):
            self._sealed.setdefault(_minute(row.minute), []).append(row)


# -- one build per interval, shared ------------------------------------------------------------


class StateUnavailable(Exception):
    """The state could not be built (the message says why: a timeout, the database)."""


@dataclass(frozen=True)
class _Built:
    at: float  # the cache's clock when the build started
    state: MonitoringState | None
    error: str | None


def state_builder(
    connect: Callable[[], AbstractContextManager[ReadConnection]], config: MonitorConfig
) -> Callable[[], MonitoringState]:
    """A build for :class:`StateCache`: a connection from ``connect`` (a pool's
    ``connection``, or :func:`perpbot_db.runtime.reader.reading`), one snapshot, and
    one :class:`EventTally` kept from build to build."""

    tally = EventTally(config.events_window)

    def build() -> MonitoringState:
        with connect() as conn:
            return build_state(conn, config, tally=tally)

    return build


class StateCache:
    """The state, built at most once per ``interval_s`` and shared by every caller.

    :meth:`get` returns the last state while it is younger than the interval (no
    lock, no query).  Otherwise one caller builds; callers arriving meanwhile wait
    on the lock and then find the fresh state (or the fresh failure), so N
    concurrent callers cost one build.  A failed build is remembered for the
    interval too (an unreachable database is asked once per interval, not once per
    caller): :meth:`get` raises :class:`StateUnavailable` with its reason, and
    :meth:`last_good` still offers the previous state, whose ``built_at`` says how
    old it is.  Thread-safe; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        build: Callable[[], MonitoringState],
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: {interval_s!r} must be above 0")
        self._build = build
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._built: _Built | None = None
        self._good: MonitoringState | None = None
        self.builds = 0  # how many builds ran (tests and the console's own metrics)

    def _fresh(self) -> _Built | None:
        built = self._built  # one read of an immutable record: no lock needed
        if built is not None and self._clock() - built.at < self._interval:
            return built
        return None

    def get(self) -> MonitoringState:
        built = self._fresh()
        if built is None:
            with self._lock:
                built = self._fresh()  # another caller may have built it while we waited
                if built is None:
                    built = self._rebuild()
        if built.state is None:
            raise StateUnavailable(built.error or "the monitoring state is unavailable")
        return built.state

    def _rebuild(self) -> _Built:
        started = self._clock()
        self.builds += 1
        try:
            state = self._build()
        except MonitorReadError as exc:
            log.warning("monitoring state: %s", exc)
            built = _Built(started, None, str(exc))
        except Exception as exc:
            log.exception("building the monitoring state failed")
            built = _Built(started, None, f"building the monitoring state failed: {exc}")
        else:
            built = _Built(started, state, None)
            self._good = state
        self._built = built
        return built

    def last_good(self) -> MonitoringState | None:
        """The newest state built successfully (None: none yet), without building."""
        return self._good
