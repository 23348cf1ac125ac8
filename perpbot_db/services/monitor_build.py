"""How the monitoring state is built: the reads of one snapshot shaped into
:class:`~perpbot_db.services.monitor_model.MonitoringState` (see
:mod:`perpbot_db.services.monitor` for the shape and the cache)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from perpbot_db.domain import capital, health, risk
from perpbot_db.domain.decisions import DecisionCode, short_reason
from perpbot_db.domain.lifecycle import (
    DENIAL_ACTIONS,
    FAILURE_ACTIONS,
    REFUSAL_ACTIONS,
    CapitalTier,
    RiskMode,
    SystemAction,
    SystemStatus,
)
from perpbot_db.domain.protections import ProtectionCode
from perpbot_db.services.monitor_model import (
    DayCounters,
    DelayedExchange,
    EventCount,
    ExchangeCapital,
    ExchangeStatus,
    FastMarket,
    GlobalSection,
    HealthSection,
    HoldCount,
    JobsSection,
    LegView,
    LockView,
    MarketRow,
    MonitoringState,
    Override,
    ProcessesSection,
    ReasonView,
    RiskSection,
    RunningCursor,
    RunningJob,
    RunningJobsPage,
    SchedulerView,
    TierCapital,
    WorkerView,
)
from perpbot_db.store import monitor as reads
from perpbot_db.store.monitor import MonitorTimeout, ReadConnection

if TYPE_CHECKING:  # the read commands import this module: no settings machinery at import
    from perpbot_db.settings import Settings

log = logging.getLogger("perpbot.monitor")


DENIALS = DENIAL_ACTIONS
FAILURES = FAILURE_ACTIONS
EVENT_ACTIONS = REFUSAL_ACTIONS
_RESOLUTION = timedelta(microseconds=1)  # timestamptz's: ``at < now + 1 us`` is ``at <= now``
_EVENT_ROWS = 100_000  # (minute, action, code) groups of one read: a bound, never reached
UNHEDGED_CODE = "unhedged"
#: Decision codes read at once (a bound: there are a few dozen codes).
_PENDING_CODES = 1000


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
    pending: Sequence[reads.PendingCodeRow]
    running: Sequence[reads.RunningJobRow]
    legs: Sequence[reads.LiveLegRow]
    ticks: Sequence[reads.SchedulerTickRow]
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
        pending = reads.pending_by_code(conn, reads.ListParams(_PENDING_CODES))
        active = reads.job_active_counts(conn)
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
            live=reads.LiveCounts(sum(p.jobs for p in pending), active.admitted, active.running),
            pending=pending,
            running=running,
            legs=reads.legs_of_current_attempt(conn, reads.JobIds(tuple(r.id for r in running))),
            ticks=reads.scheduler_ticks_latest(conn, bounded),
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
                for h in r.pending
                if h.code is not None and h.code != DecisionCode.ADMITTED
            ][: config.list_limit],
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

    Design note.  Counting the last hour from ``job_events`` reads every refusal
    and failure of the hour (their partial index bounds the read to them): in a
    storm of refusals that is still a lot to read every second.  So minutes that
    are over are read once and kept: a minute older than
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
