"""The admission tick: one transaction, serialised across every scheduler process.

Design note.  ``run_tick`` takes a transaction-scoped advisory lock
(``pg_try_advisory_xact_lock``); a second scheduler on any host finds it held
and skips, so ticks never interleave and a standby takes over on its next
interval when the leader dies (its lock dies with its transaction).  Only the
tick adds reservations or admits jobs; workers and cancels only release, so
what the tick reads under its lock can only get *less* loaded before it
commits — admission never overshoots, by construction.

In the transaction: the risk limits in force (``risk_limits``, one small query,
so every scheduler judges with the same limits); the protections
(:mod:`perpbot_db.services.protect`: daily loss limit and consecutive failures
halt the system; intraday drawdown, an exchange's failure streak or API latency
beyond the hard limit put it in safe mode; a fast market blacklists its symbol;
each writes a time-bounded lock), then skip unless ``running`` or
``manual_override``; expire overdue pending jobs; re-score a bounded batch of
the pending jobs scored longest ago (new jobs first), so scores follow market
data, the risk mode and its limits without scanning every row each tick; then
take the best-scored due pending jobs ``FOR UPDATE SKIP LOCKED`` and admit
greedily (:mod:`perpbot_db.domain.admission`), page after page until the free
slots are filled: a page only holds jobs whose every leg is on an open market
(:func:`perpbot_db.domain.admission.candidate_window`), so jobs that could only
be held never crowd out those that could run. Market conditions hold a job
pending with its code; only a job that can never pass is rejected; a pending
job past its deadline expires with the last reason it was held. Reservations,
transitions and events are written in a few batched statements.
NOTIFY tells workers; it is a hint only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine

from perpbot_db.domain import admission, capital, risk
from perpbot_db.domain.decisions import HELD_UNTIL_RESCORED
from perpbot_db.domain.lifecycle import (
    STARTING,
    CapitalTier,
    JobAction,
    RiskMode,
    Side,
    Strategy,
    SystemStatus,
)
from perpbot_db.domain.protections import Readings, SystemReading
from perpbot_db.services import protect, risk_limits
from perpbot_db.settings import Settings
from perpbot_db.store import (
    blacklist,
    counters,
    exchanges,
    jobs,
    pending,
    reservations,
    system,
    ticks,
    transitions,
)
from perpbot_db.store import market as store_market

log = logging.getLogger("perpbot.scheduler")

ACTOR = "scheduler"
ADMITTING = {s.value for s in STARTING}


@dataclass(frozen=True)
class TickConfig:
    max_concurrent_jobs: int = 50
    candidates: int = 2000
    rescore_batch: int = 1000
    rescore_after: timedelta = timedelta(seconds=5)  # a score younger than this is kept
    blacklist_cooldown: timedelta = timedelta(minutes=5)
    safe_mode_cooldown: timedelta = timedelta(minutes=15)
    safe_mode_drawdown: Decimal = Decimal("0.05")  # of equity, realized today
    safe_mode_failures: int = 3  # consecutive failed jobs on the exchange
    worst_loss_rate: Decimal = Decimal("0.005")  # a job's worst-case loss / its notional
    tier_for_strategy: Mapping[Strategy, CapitalTier] = field(
        default_factory=lambda: dict(capital.DEFAULT_TIER_FOR_STRATEGY)
    )
    # The base under the limits in force: a limit without a ``risk_limits`` row keeps it.
    limits: Mapping[RiskMode, risk.ModeLimits] = field(default_factory=lambda: risk.LIMITS)
    # Hours between funding payments per exchange (a snapshot's rate is per this);
    # an exchange not listed pays every 8 h.
    funding_interval_h: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> TickConfig:
        return cls(
            max_concurrent_jobs=settings.max_concurrent_jobs,
            candidates=settings.tick_candidates,
            rescore_batch=settings.rescore_batch,
            rescore_after=timedelta(seconds=settings.rescore_after_s),
            blacklist_cooldown=timedelta(seconds=settings.blacklist_cooldown_s),
            safe_mode_cooldown=timedelta(seconds=settings.safe_mode_cooldown_s),
            safe_mode_drawdown=settings.safe_mode_drawdown,
            safe_mode_failures=settings.safe_mode_failures,
            worst_loss_rate=settings.job_worst_loss_bps / 10_000,
            tier_for_strategy=dict(settings.tier_for_strategy),
            funding_interval_h={
                name: ex.funding_interval_h for name, ex in settings.exchanges.items()
            },
        )

    def protections(self) -> protect.ProtectConfig:
        return protect.ProtectConfig(
            safe_mode_cooldown=self.safe_mode_cooldown,
            blacklist_cooldown=self.blacklist_cooldown,
            drawdown=self.safe_mode_drawdown,
            exchange_failures=self.safe_mode_failures,
            limits=self.limits,
        )


@dataclass
class TickReport:
    ran: bool = False
    skipped: str | None = None
    now: datetime | None = None
    expired: list[int] = field(default_factory=list)
    rescored: int = 0
    admitted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    held: Counter[str] = field(default_factory=Counter)
    halted: str | None = None
    safe_mode_entered: list[str] = field(default_factory=list)
    blacklisted: list[str] = field(default_factory=list)
    duration_s: float | None = None  # from the tick lock to its record (a tick that ran)
    # What the protections were judged on (a tick that got that far): see QuietBasis
    quiet: QuietBasis | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "skipped": self.skipped,
            "now": self.now.isoformat() if self.now else None,
            "expired": len(self.expired),
            "rescored": self.rescored,
            "admitted": len(self.admitted),
            "admitted_ids": self.admitted[:100],
            "rejected": dict(Counter(self.rejected.values())),
            "held_pending": dict(self.held),
            "halted": self.halted,
            "safe_mode_entered": self.safe_mode_entered,
            "blacklisted": self.blacklisted,
            "duration_ms": None if self.duration_s is None else round(self.duration_s * 1000, 3),
        }


@dataclass(frozen=True)
class QuietBasis:
    """What a tick judged on besides the market and the pending jobs, and the locks it
    wrote (new or renewed: ``placed``, with their ``until``).

    For a caller that owns every writer, the simulation: while nothing but the market
    and the clock has changed since this tick (no job submitted, admitted, run or
    recovered, no chore, the same day), :meth:`dry_run` says what a tick at a later
    time would do, from the same pure decisions: nothing but expiries and holds (the
    jobs to expire, and the scores and decisions it would store, to be written later)
    or more (run the tick).  Its only other write is its own record."""

    config: protect.ProtectConfig
    readings: Readings  # without the markets
    mode: RiskMode
    status: str
    day: date
    funding_interval_h: Mapping[str, int]
    placed: Mapping[tuple[str, str, str], datetime]
    admitting: bool = False  # the status lets the tick expire, re-score and admit
    # The admission context judged on (None: the tick stopped before it, or the limits
    # in force break a rule), with the blacklist entries it was built from.
    context: admission.AdmissionContext | None = None
    blacklist_entries: tuple[blacklist.BlacklistEntry, ...] = ()
    tick: TickConfig = field(default_factory=TickConfig)

    def would_act(
        self,
        snapshots: Sequence[store_market.MarketSnapshot],
        now: datetime,
        in_place: Mapping[tuple[str, str, str], datetime],
    ) -> bool:
        """Would a tick at ``now`` over ``snapshots`` write a lock?  ``in_place``: the
        locks the caller saw written, with their ``until``; a lock called for again
        while its own is in force is a no-op, one past its ``until`` is renewed."""
        if now.astimezone(UTC).date() != self.day:  # a new day: new counters
            return True
        return self._protects(snapshots, now, in_place)

    def _protects(
        self,
        snapshots: Sequence[store_market.MarketSnapshot],
        now: datetime,
        in_place: Mapping[tuple[str, str, str], datetime],
    ) -> bool:
        """The tick's protections (:func:`perpbot_db.services.protect.decide`) over these
        readings and ``snapshots``: does one call for a lock not in place?  The markets'
        readings are made, as the tick makes them, only of the markets on which a lock
        may be decided (:func:`perpbot_db.services.protect.markets_that_may_lock`, the
        units' own comparisons): the others decide nothing."""
        readings = self.readings
        if protect.markets_that_may_lock(self.config, self.mode, snapshots):
            # each key's latest snapshot (as the tick's views keep them), screened again
            latest = list({(m.exchange, m.symbol): m for m in snapshots}.values())
            may_lock = protect.markets_that_may_lock(self.config, self.mode, latest)
            markets = market_views(may_lock, self.funding_interval_h)
            readings = replace(readings, markets=protect.market_readings(markets))
        decided = protect.decide(
            self.config, now, readings=readings, mode=self.mode, status=self.status
        )
        return any((until := in_place.get(lock.key)) is None or until <= now for lock in decided)

    def dry_run(
        self,
        snapshots: Sequence[store_market.MarketSnapshot],
        now: datetime,
        in_place: Mapping[tuple[str, str, str], datetime],
        pending_jobs: Sequence[pending.PendingFacts],
    ) -> HeldTick | None:
        """What a tick at ``now`` over ``snapshots`` would do to ``pending_jobs`` (every
        pending job, as stored), if all it would do is expire some and hold the others:
        the jobs it would expire (:func:`expire`, which the caller runs), the decisions
        it would store and the holds it would count.  None when it would do more (a
        lock, a rejection, an admission, a new day): run the tick.

        The tick's steps in its order, each by the function the tick calls: the
        protections, the expiry, the re-score (:func:`rescore_outcomes`), the
        candidates (:func:`perpbot_db.store.pending.is_candidate`, the candidate
        query's filter) judged by :func:`perpbot_db.domain.admission.admit_greedily`.
        Only what they read is worked out: the markets' readings only where a lock may
        be decided (:meth:`_protects`), their views as they are first read
        (:class:`MarketViews`), the candidate window over the pending jobs' markets."""
        if now.astimezone(UTC).date() != self.day:
            return None
        if self._protects(snapshots, now, in_place):
            return None
        if not self.admitting:
            return HeldTick()
        # the tick expires before it judges: the others are judged without them
        expired = [p.job.id for p in pending_jobs if p.deadline <= now]
        if expired:
            pending_jobs = [p for p in pending_jobs if p.deadline > now]
        if self.context is None:  # limits that break a rule: the tick admits nothing
            return HeldTick(expired=expired)
        listed = [b for b in self.blacklist_entries if b.expires_at > now]
        markets = MarketViews(snapshots, self.funding_interval_h)
        ctx = replace(
            self.context,
            now=now,
            markets=markets,
            blacklisted_symbols=frozenset(b.target for b in listed if b.kind == "symbol"),
            blacklisted_exchanges=frozenset(b.target for b in listed if b.kind == "exchange"),
            assessed={},
        )
        config = self.tick
        out = HeldTick(expired=expired)
        jobs = {p.job.id: p for p in pending_jobs}
        if config.rescore_batch:
            before = now - config.rescore_after
            due = sorted(
                (p for p in pending_jobs if p.scored_at is None or p.scored_at < before),
                key=lambda p: (p.scored_at is not None, p.scored_at or now, p.job.id),
            )[: config.rescore_batch]
            keep, reject = rescore_outcomes([p.job for p in due], ctx)
            if reject:
                return None
            out.store(keep, now)
            out.held.update(o.decision.code.value for o in keep if not o.decision.admitted)
            for d in out.decisions:  # as stored: the candidate query reads the new decisions
                jobs[d.id] = jobs[d.id].stored(d, now)
        if config.candidates == 0 or ctx.inflight_total >= ctx.max_total:
            return out
        held_codes = frozenset(c.value for c in HELD_UNTIL_RESCORED) if config.rescore_batch else ()
        maybe = [
            p for p in jobs.values() if pending.may_be_candidate(p, now=now, held_codes=held_codes)
        ]
        if not maybe:  # no window could make one a candidate: not worked out
            return out
        # The window is only asked about these jobs' markets (by the candidate query's
        # names): worked out over those alone, since whether a market is in it depends
        # on that market and the context, never on another market.
        names = {admission.market_key(ex, p.job.symbol) for p in maybe for ex in p.job.exchanges}
        window = admission.candidate_window(replace(ctx, markets=markets.named(names)))
        sets = pending.CandidateWindow(
            markets=frozenset(window.markets),
            reducing_markets=frozenset(window.reducing_markets),
            reducing_strategies=frozenset(window.reducing_strategies),
            held_codes=held_codes,
        )
        found = sorted(
            (p.job for p in maybe if pending.is_candidate(p, now=now, window=sets)),
            key=lambda j: (-(j.final_score or 0), j.id),
        )[: config.candidates]
        candidates = (admission.Candidate(job_view(j), j.override_by) for j in found)
        verdicts, _ = admission.admit_greedily(candidates, ctx)
        if any(v.outcome is not admission.Outcome.STAY for v in verdicts):
            return None
        out.store([transitions.Outcome(v.job_id, v.decision, v.score) for v in verdicts], now)
        out.held.update(v.decision.code.value for v in verdicts)
        return out


@dataclass
class HeldTick:
    """A tick that would only expire and hold (:meth:`QuietBasis.dry_run`): the jobs it
    would expire first, the decisions it would store, in the order it would store them,
    each at its time, and the job-ticks it would count as held, by code."""

    decisions: list[pending.StoredDecision] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)
    expired: list[int] = field(default_factory=list)

    def store(self, outcomes: Sequence[transitions.Outcome], now: datetime) -> None:
        self.decisions.extend(_stored(o, now) for o in outcomes)


# -- reading rows into plain values ------------------------------------------------


# Text to enum member by a dict lookup (an Enum call costs ten times more, per row);
# an unknown text still raises the Enum's ValueError.
_STRATEGIES: Mapping[str, Strategy] = {s.value: s for s in Strategy}
_SIDES: Mapping[str, Side] = {s.value: s for s in Side}


def job_view(row: pending.PendingJob) -> risk.JobView:
    legs = tuple(
        risk.LegView(exchange, _SIDES.get(side) or Side(side), qty)
        for exchange, side, qty in zip(row.exchanges, row.sides, row.quantities, strict=True)
    )
    return risk.JobView(
        id=row.id,
        strategy=_STRATEGIES.get(row.strategy) or Strategy(row.strategy),
        symbol=row.symbol,
        notional_usd=row.notional_usd,
        expected_edge_bps=row.expected_edge_bps,
        expected_pnl_usd=row.expected_pnl_usd,
        expected_volume_usd=row.expected_volume_usd,
        legs=legs,
        risk_score=row.risk_score,
        latency_score=row.latency_score,
        vol_score=row.vol_score,
        funding_score=row.funding_score,
        liquidity_score=row.liquidity_score,
        closes_position=row.closes_position,
    )


def market_view(
    m: store_market.MarketSnapshot, funding_interval_h: Mapping[str, int]
) -> risk.MarketView:
    """The risk manager's view of one snapshot, funding as per 8 h whatever the venue's
    interval (``funding_interval_h``: hours per exchange, 8 when not listed)."""
    return risk.MarketView(
        exchange=m.exchange,
        symbol=m.symbol,
        bid=m.bid,
        ask=m.ask,
        last=m.last,
        funding_rate=risk.funding_per_8h(
            m.funding_rate, funding_interval_h.get(m.exchange, risk.FUNDING_BASIS_H)
        ),
        volatility=m.volatility,
        latency_ms=m.latency_ms,
        observed_at=m.observed_at,
    )


def market_views(
    snapshots: Sequence[store_market.MarketSnapshot],
    funding_interval_h: Mapping[str, int] | None = None,
) -> dict[tuple[str, str], risk.MarketView]:
    """The risk manager's view of each snapshot (:func:`market_view`), by (exchange,
    symbol); a later snapshot of a key replaces an earlier one."""
    intervals = funding_interval_h or {}
    return {(m.exchange, m.symbol): market_view(m, intervals) for m in snapshots}


class MarketViews(Mapping[tuple[str, str], risk.MarketView]):
    """:func:`market_views` as a mapping that makes each view when it is first read:
    the same keys in the same order, each with an equal view (made once, then the
    same object).  For :meth:`QuietBasis.dry_run`, whose re-score reads the few
    markets the pending jobs trade on and whose candidate window, when it is worked
    out at all, reads every one."""

    def __init__(
        self,
        snapshots: Sequence[store_market.MarketSnapshot],
        funding_interval_h: Mapping[str, int] | None = None,
    ) -> None:
        self._rows = {(m.exchange, m.symbol): m for m in snapshots}
        self._views: dict[tuple[str, str], risk.MarketView] = {}
        self._intervals = funding_interval_h or {}

    def named(self, names: Collection[str]) -> MarketViews:
        """These views of the markets named ``names`` only (as the candidate query names
        them, :func:`perpbot_db.domain.admission.market_key`); a view made by one of
        the two mappings is the other's too."""
        out = MarketViews((), self._intervals)
        out._rows = {key: m for key, m in self._rows.items() if admission.market_key(*key) in names}
        out._views = self._views
        return out

    def __getitem__(self, key: tuple[str, str]) -> risk.MarketView:
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = market_view(self._rows[key], self._intervals)
        return view

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def exchange_book(row: exchanges.ExchangeBookRow) -> capital.ExchangeBook:
    return capital.ExchangeBook(
        exchange=row.name,
        equity_usd=row.equity_usd,
        volume_share=row.limits.volume_share,
        arbitrage_share=row.limits.arbitrage_share,
        reserve_share=row.limits.reserve_share,
        single_job_cap=row.limits.single_job_cap,
        inflight_cap=row.limits.inflight_cap,
        safe_mode=row.safe_mode,
        reserved={
            CapitalTier.VOLUME: row.reserved_volume,
            CapitalTier.ARBITRAGE: row.reserved_arbitrage,
            CapitalTier.RESERVE: row.reserved_reserve,
        },
    )


def load_context(
    conn: Connection,
    rows: Sequence[exchanges.ExchangeBookRow],
    *,
    now: datetime,
    mode: RiskMode,
    config: TickConfig,
    limits: Mapping[RiskMode, risk.ModeLimits],
    loss_limit_usd: Decimal,
    loss_used_usd: Decimal,
    markets: Mapping[tuple[str, str], risk.MarketView] | None = None,
    blacklisted: Sequence[blacklist.BlacklistEntry] | None = None,
) -> admission.AdmissionContext:
    """The admission context at ``now``; ``markets`` and ``blacklisted`` (the entries in
    force) are read unless given."""
    if blacklisted is None:
        blacklisted = blacklist.active(conn, now=now)
    inflight_jobs, inflight_notional = jobs.inflight_totals(conn)
    return admission.AdmissionContext(
        mode=mode,
        now=now,
        books={r.name: exchange_book(r) for r in rows},
        enabled=frozenset(r.name for r in rows if r.enabled),
        max_jobs={r.name: r.limits.max_concurrent_jobs for r in rows},
        inflight_jobs={r.name: r.inflight_jobs for r in rows},
        inflight_total=inflight_jobs,
        max_total=config.max_concurrent_jobs,
        max_inflight_notional={r.name: r.limits.max_inflight_notional_usd for r in rows},
        markets=market_views(store_market.snapshots_all(conn), config.funding_interval_h)
        if markets is None
        else markets,
        blacklisted_symbols=frozenset(b.target for b in blacklisted if b.kind == "symbol"),
        blacklisted_exchanges=frozenset(b.target for b in blacklisted if b.kind == "exchange"),
        tier_for_strategy=config.tier_for_strategy,
        limits=limits,
        loss_budget_usd=admission.loss_budget(
            limit_usd=loss_limit_usd,
            loss_used_usd=loss_used_usd,
            inflight_notional_usd=inflight_notional,
            rate=config.worst_loss_rate,
        ),
        worst_loss_rate=config.worst_loss_rate,
    )


# -- the tick ----------------------------------------------------------------------------


def run_tick(
    engine: Engine,
    config: TickConfig,
    *,
    now: datetime | None = None,
    scheduler: str = ACTOR,
    markets: Sequence[store_market.MarketSnapshot] | None = None,
    first: Callable[[Connection], None] | None = None,
) -> TickReport:
    """One admission tick in one transaction; ``now`` defaults to the database clock.

    A tick that ran is recorded in ``scheduler_ticks`` under ``scheduler`` (the
    process's identity) in the same transaction: when, how long, what it did.

    For the simulation, which holds the market in memory and owns the clock:
    ``markets`` are the rows ``market_snapshots`` holds (not read again), and
    ``first(conn)`` runs in the tick's transaction once it holds the tick lock
    (moving the virtual clock there saves a transaction a step)."""
    report = TickReport()
    started = time.perf_counter()
    with engine.begin() as conn:
        if not system.tick_try_lock(conn):
            report.skipped = "another scheduler is ticking"
            return report
        report.ran = True
        if first is not None:
            first(conn)
        _tick_in(conn, config, report, now, markets)
        report.duration_s = time.perf_counter() - started
        ticks.record(
            conn,
            ticks.TickRecord(
                scheduler=scheduler,
                duration_ms=round(Decimal(report.duration_s * 1000), 3),
                rescored=report.rescored,
                admitted=len(report.admitted),
                rejected=len(report.rejected),
                expired=len(report.expired),
                skipped=report.skipped,
            ),
        )
    return report


def _tick_in(
    conn: Connection,
    config: TickConfig,
    report: TickReport,
    now: datetime | None,
    snapshots: Sequence[store_market.MarketSnapshot] | None = None,
) -> None:
    """The tick's work once it holds the tick lock; ``report`` says what it did."""
    now = now or system.db_now(conn)
    report.now = now
    state = system.lock(conn, shared=True)
    day = now.astimezone(UTC).date()
    today = counters.global_day(conn, day=day)
    loss_used = Decimal(0) if today is None else today.loss_used_usd
    mode = RiskMode(state.risk_mode)
    broken: str | None = None
    try:
        limits = risk_limits.in_force(conn, config.limits)  # one small query per tick
    except risk.LimitError as exc:  # protect with the base limits, then admit nothing
        limits, broken = config.limits, f"risk limits in force break a rule: risk.{exc}"
    rows = exchanges.books(conn, day=day)
    if snapshots is None:
        snapshots = store_market.snapshots_all(conn)
    markets = market_views(snapshots, config.funding_interval_h)
    system_reading = SystemReading(
        loss_used_usd=loss_used,
        loss_limit_usd=state.daily_loss_limit_usd,
        failures=state.consecutive_failures,
        max_failures=state.max_consecutive_failures,
    )
    exchange_readings = protect.exchange_readings(rows)
    guard = protect.run_once(
        conn,
        replace(config.protections(), limits=limits),
        now,
        readings=Readings(
            system=system_reading,
            exchanges=exchange_readings,
            markets=protect.market_readings(markets),
        ),
        mode=mode,
        status=state.status,
        actor=ACTOR,
    )
    report.quiet = QuietBasis(
        config=replace(config.protections(), limits=limits),
        readings=Readings(system=system_reading, exchanges=exchange_readings),
        mode=mode,
        status=state.status,
        day=day,
        funding_interval_h=config.funding_interval_h,
        placed=guard.placed,
        tick=config,
    )
    report.halted = guard.halted
    report.safe_mode_entered = guard.safe_mode_entered
    report.blacklisted = guard.blacklisted
    status = SystemStatus.HALTED.value if report.halted else state.status
    report.quiet = replace(report.quiet, admitting=status in ADMITTING)
    if status not in ADMITTING:
        report.skipped = f"system is {status}"
        return
    report.expired = expire(conn, now)
    if broken is not None:  # rows written past the rules: admit nothing
        report.skipped = broken
        log.error("tick skipped: %s", broken)
        return
    listed = blacklist.active(conn, now=now)
    ctx = load_context(
        conn,
        rows,
        now=now,
        mode=mode,
        config=config,
        limits=limits,
        loss_limit_usd=state.daily_loss_limit_usd,
        loss_used_usd=loss_used,
        markets=markets,
        blacklisted=listed,
    )
    # the rows were read before the protections ran: their new safe modes
    for name in guard.safe_mode_entered:
        ctx.books[name] = replace(ctx.books[name], safe_mode=True)
    report.quiet = replace(
        report.quiet, context=replace(ctx, books=dict(ctx.books)), blacklist_entries=tuple(listed)
    )
    _rescore(conn, ctx, config, report)
    _admit(conn, ctx, config, report)
    if report.admitted:
        system.notify(conn, system.CHANNEL_ADMITTED, str(len(report.admitted)))


def expire(conn: Connection, now: datetime) -> list[int]:
    """The tick's expiry: every pending job whose deadline is at or before ``now``."""
    return transitions.expire(conn, now=now, actor=ACTOR)


def _rescore(
    conn: Connection, ctx: admission.AdmissionContext, config: TickConfig, report: TickReport
) -> None:
    """Score the pending jobs scored longest ago and store why each waits; a job too large
    for the account is rejected at once, every other hold keeps it pending."""
    if config.rescore_batch == 0:
        return
    rows = pending.select_for_rescore(
        conn, limit=config.rescore_batch, scored_before=ctx.now - config.rescore_after
    )
    keep, reject = rescore_outcomes(rows, ctx)
    _store_pending(conn, keep, ctx.now)
    _reject(conn, reject, ctx.now, report)
    report.rescored = len(rows)
    report.held.update(o.decision.code.value for o in keep if not o.decision.admitted)


def rescore_outcomes(
    rows: Sequence[pending.PendingJob], ctx: admission.AdmissionContext
) -> tuple[list[transitions.Outcome], list[transitions.Outcome]]:
    """The re-score's decisions (pure): the jobs kept pending with their new score and
    decision, and the jobs rejected (too large for the account ever to pass)."""
    keep: list[transitions.Outcome] = []
    reject: list[transitions.Outcome] = []
    for row in rows:
        candidate = admission.Candidate(job_view(row))
        held = admission.gate(candidate, ctx)
        assessment = admission.assess(candidate, ctx)  # scored even when held: ready to go
        if held is not None:  # a blacklisted symbol is held, not judged on its fast market
            keep.append(transitions.Outcome(held.job_id, held.decision, assessment.final_score))
            continue
        decision = assessment.decision
        if decision.admitted:  # as far as risk goes: say so if its exchanges are full
            decision = admission.throttle(candidate.job, ctx) or decision
        outcome = transitions.Outcome(row.id, decision, assessment.final_score)
        (reject if decision.rejects else keep).append(outcome)
    return keep, reject


def _store_pending(conn: Connection, outcomes: list[transitions.Outcome], now: datetime) -> None:
    pending.store_decisions(conn, now=now, decisions=[_stored(o) for o in outcomes])


def _stored(o: transitions.Outcome, at: datetime | None = None) -> pending.StoredDecision:
    return pending.StoredDecision(
        o.job_id, o.score, o.decision.code.value, transitions.context_json(o.decision), at
    )


def _reject(
    conn: Connection, outcomes: list[transitions.Outcome], now: datetime, report: TickReport
) -> None:
    moved = transitions.move(
        conn,
        JobAction.REJECT,
        outcomes,
        actor=ACTOR,
        reason="can never pass: the job and the configuration",
        now=now,
    )
    codes = {o.job_id: o.decision.code.value for o in outcomes}
    report.rejected.update({job_id: codes[job_id] for job_id in moved})


def _admit(
    conn: Connection, ctx: admission.AdmissionContext, config: TickConfig, report: TickReport
) -> None:
    """Judge candidates page by page until the free slots are filled, the window is
    exhausted or ``config.candidates`` jobs were judged; then write every verdict."""
    verdicts: list[admission.Verdict] = []
    after: tuple[Decimal, int] | None = None
    while len(verdicts) < config.candidates and ctx.inflight_total < ctx.max_total:
        free = ctx.max_total - ctx.inflight_total
        # Twice the free slots: room for candidates held by an exchange's limits or capital.
        limit = min(config.candidates - len(verdicts), max(2 * free, 20))
        window = admission.candidate_window(ctx)  # exchanges fill up as jobs are admitted
        rows = pending.select_candidates(
            conn,
            now=ctx.now,
            limit=limit,
            window=pending.CandidateWindow(
                markets=window.markets,
                reducing_markets=window.reducing_markets,
                reducing_strategies=window.reducing_strategies,
                # without a rolling re-score nothing would lift a stored hold
                held_codes=window.held_codes if config.rescore_batch else (),
                after=after,
            ),
        )
        # A view is only made of the rows judged: the run stops when the slots are full.
        candidates = (admission.Candidate(job_view(r), r.override_by) for r in rows)
        page, ctx = admission.admit_greedily(candidates, ctx)
        verdicts.extend(page)
        if len(rows) < limit:
            break
        last = rows[-1]
        assert last.final_score is not None, "candidates are scored"
        after = (last.final_score, last.id)
    _write_verdicts(conn, ctx, verdicts, report)


def _write_verdicts(
    conn: Connection,
    ctx: admission.AdmissionContext,
    verdicts: list[admission.Verdict],
    report: TickReport,
) -> None:
    admit = [v for v in verdicts if v.outcome is admission.Outcome.ADMIT]
    reject = [v for v in verdicts if v.outcome is admission.Outcome.REJECT]
    stay = [v for v in verdicts if v.outcome is admission.Outcome.STAY]

    def outcomes(vs: list[admission.Verdict]) -> list[transitions.Outcome]:
        return [transitions.Outcome(v.job_id, v.decision, v.score) for v in vs]

    reservations.insert_batch(
        conn,
        now=ctx.now,
        reservations=[
            reservations.NewReservation(v.job_id, r.exchange, r.tier.value, r.amount_usd)
            for v in admit
            for r in v.reservations
        ],
    )
    moved = transitions.move(
        conn,
        JobAction.ADMIT,
        outcomes(admit),
        actor=ACTOR,
        reason="admitted",
        now=ctx.now,
    )
    if len(moved) != len(admit):  # we hold their row locks: this cannot happen
        raise RuntimeError(f"admitted {len(moved)} of {len(admit)} locked jobs")
    report.admitted = moved
    _reject(conn, outcomes(reject), ctx.now, report)
    _store_pending(conn, outcomes(stay), ctx.now)
    report.held.update(v.decision.code.value for v in stay)


# -- the service: APScheduler interval + NOTIFY wake-up --------------------------------
