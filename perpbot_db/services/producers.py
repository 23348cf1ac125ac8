"""The job producers as a service: read the market and state, run each strategy, submit.

Design note.  One pass (:meth:`ProducerService.run_once`) is three steps:

1. **Read** in one read-only transaction, through :mod:`perpbot_db.store.producers`
   and :mod:`perpbot_db.store.market`: the snapshots, the enabled accounts,
   today's per-exchange counters, the completed openings (volume, funding_arb, arb)
   whose pairs are not closed,
   the residual exposure of unhedged jobs and the rebalance rounds.
2. **Decide** with the pure strategies of :mod:`perpbot_db.domain.strategies`,
   given the clock's ``now`` and (for the volume program) the service's seeded
   ``random.Random``: the same seed, inputs and sequence of ``now`` give the same
   jobs, which the simulation relies on.
3. **Submit** every body in ONE call of
   :func:`perpbot_db.services.submit.submit_lines`, the validated, idempotent path
   of ``perpbot submit``.  Keys already taken (read in step 1) are not sent again;
   a body that races another producer to a key comes back as ``existing``.

The loop (:meth:`start`) runs a pass every ``strategies.interval_s`` on a thread,
through a :class:`~perpbot_db.store.reconnect.Guard`: a lost database skips
passes with backoff and logs once per outage, like the scheduler's tick.  No
wall-clock read happens inside a pass other than the injected clock's.

**One producer per cluster.**  The loop's passes are gated by an election of their
own (``leads``: :meth:`perpbot_db.runtime.leader.Leader.is_leader` on the
producers' lock, ``perpbot.producers``), whether the loop runs inside ``perpbot
run`` or alone as ``perpbot produce``: before each pass the service asks it, in
the database; a standby's loop reads, decides and submits nothing, and since
every pass competes for the lock, a standby takes over at its first pass after
the producer's session ended (a dead, killed or disconnected one; a stopped one
resigns, ``resign``).  Not the scheduler's election: a standalone ``perpbot
produce`` has no scheduler, and it and the daemons must still be one producer.
What the lock does not promise (the producer's session may die between its check
and its submission while the standby starts a pass) the idempotency keys absorb:
the same body is inserted once.  Without ``leads`` (``perpbot produce --once``,
the simulation) every pass runs.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine

from perpbot_db.domain.clock import Clock
from perpbot_db.domain.lifecycle import Strategy
from perpbot_db.domain.strategies.arb import arb
from perpbot_db.domain.strategies.base import Entry, Market, OpenPair, Output, Quote, Venue
from perpbot_db.domain.strategies.funding_arb import funding_arb
from perpbot_db.domain.strategies.hedge_rebalance import (
    RebalanceState,
    Residual,
    hedge_rebalance,
)
from perpbot_db.domain.strategies.volume import VenueDay, VolumeState, volume
from perpbot_db.services.submit import SubmitError, submit_lines
from perpbot_db.settings import Settings
from perpbot_db.store import jobs
from perpbot_db.store import market as store_market
from perpbot_db.store import producers as store
from perpbot_db.store.reading import reading
from perpbot_db.store.reconnect import Guard, Outage

log = logging.getLogger("perpbot.producers")


@dataclass
class StrategyReport:
    """What one strategy did in one pass."""

    strategy: Strategy
    emitted: int = 0
    submitted: int = 0
    existing: int = 0
    invalid: int = 0
    keys: list[str] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "emitted": self.emitted,
            "submitted": self.submitted,
            "existing": self.existing,
            "invalid": self.invalid,
            "keys": self.keys,
            "skips": [{"symbol": s, "reason": r} for s, r in self.skips],
        }


@dataclass
class ProducerReport:
    """One pass: per strategy, and the submission's problems (a producer bug if any)."""

    at: datetime
    strategies: dict[Strategy, StrategyReport]
    problems: list[dict[str, Any]] = field(default_factory=list)
    #: bodies whose key another producer took between this pass's read and its insert
    #: (counted as submitted above: submit_lines returned the existing job for them)
    raced: int = 0

    @property
    def submitted(self) -> int:
        return sum(r.submitted for r in self.strategies.values()) - self.raced

    def summary(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "submitted": self.submitted,
            "strategies": {s.value: r.summary() for s, r in self.strategies.items()},
            "raced": self.raced,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class ProducerState:
    """The rows the strategies read besides the market (of the day ``day``)."""

    day: date
    accounts: list[store.Account]
    days: list[store.ExchangeDay]
    openings: list[store.OpeningLeg]
    in_flight: int
    residuals: list[store.ResidualRow]
    rounds: list[store.RebalanceRound]
    arbitrage: list[store.SymbolJobs]


def _read_state(conn: Connection, now: datetime) -> ProducerState:
    day = now.astimezone(UTC).date()
    return ProducerState(
        day=day,
        accounts=store.accounts_enabled(conn),
        days=store.exchange_days(conn, day=day),
        residuals=store.residual_exposure(conn),
        **_job_parts(conn),
    )


def _job_parts(conn: Connection) -> dict[str, Any]:
    """The parts of the state a job's status alone changes (submitted, expired, rejected:
    what is on its way, what is open); the others change only when jobs run or locks
    are placed (the fills, the day's counters, the safe modes)."""
    return {
        "openings": store.openings_to_close(conn),
        "in_flight": store.volume_openings_in_flight(conn),
        "rounds": store.rebalance_rounds(conn),
        "arbitrage": store.arbitrage_by_symbol(conn),
    }


@dataclass(frozen=True)
class _Inputs:
    market: Market
    venues: dict[str, Venue]
    volume: VolumeState
    rebalance: RebalanceState
    arb_busy: frozenset[str]
    funding_held: frozenset[str]
    funding_open: list[OpenPair]
    arb_open: list[OpenPair]


class ProducerService:
    """``run_once(now)`` for tests and the simulation; ``start()/stop()`` for the daemon."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Clock,
        *,
        outage: Outage | None = None,
        leads: Callable[[], bool] | None = None,
        resign: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.config = settings.strategies
        self.clock = clock
        self.rng = random.Random(self.config.seed)  # noqa: S311 - reproducible sizes, not secrets
        self.outage = outage or Outage()
        self.guard = Guard(self.outage, "producers", log=log)
        #: the cluster's leader check (``perpbot run``); None: every pass runs
        self.leads = leads
        #: gives the producers' lock up when the loop stops (a standby takes over at once)
        self.resign = resign
        self.passes = 0
        self.standby_passes = 0  # loop passes skipped: another daemon leads
        self.last: ProducerReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ---------------------------------------------------------------------

    def run_once(self, now: datetime) -> ProducerReport:
        """Read, decide, submit (one submission for every strategy's bodies)."""
        return self.submit(self.plan(now), now)

    def lead_once(self, now: datetime) -> ProducerReport | None:
        """:meth:`run_once` if this process leads the cluster (or no leader check was
        given); None, reading and writing nothing else, on a standby.  A database that
        cannot be reached raises (the loop's outage handling)."""
        if self.leads is not None and not self.leads():
            self.standby_passes += 1
            return None
        return self.run_once(now)

    def plan(
        self,
        now: datetime,
        *,
        snapshots: Sequence[store_market.MarketSnapshot] | None = None,
        state: ProducerState | None = None,
    ) -> list[Output]:
        """Read and decide, writing nothing.  The simulation hands over the snapshots it
        holds and the state it read (:meth:`read_state`) while no job has changed since;
        what is not handed over is read."""
        if snapshots is None or state is None:
            with reading(self.engine) as conn:
                if snapshots is None:
                    snapshots = store_market.snapshots_all(conn)
                if state is None:
                    state = _read_state(conn, now)
        return self._decide(self._inputs(now, snapshots, state), now)

    def read_state(self, now: datetime) -> ProducerState:
        """What the strategies decide on besides the market, in one read-only transaction."""
        with reading(self.engine) as conn:
            return _read_state(conn, now)

    def refresh_jobs(self, state: ProducerState) -> ProducerState:
        """``state`` once jobs were only submitted, expired or rejected (none ran, no lock
        was placed): the parts a job's status changes read again, the rest kept."""
        with reading(self.engine) as conn:
            return replace(state, **_job_parts(conn))

    def submit(self, outputs: list[Output], now: datetime) -> ProducerReport:
        """Submit what :meth:`plan` decided (keys already taken are not sent again)."""
        report = ProducerReport(now, {o.strategy: StrategyReport(o.strategy) for o in outputs})
        keys = [str(b["idempotency_key"]) for out in outputs for b in out.bodies]
        taken: set[str] = set()
        if keys:
            with reading(self.engine) as conn:
                taken = set(jobs.ids_by_idempotency_key(conn, keys))
        lines: list[str] = []
        owners: list[Strategy] = []
        for out in outputs:
            part = report.strategies[out.strategy]
            part.skips = [(s.symbol, s.reason) for s in out.skips]
            part.emitted = len(out.bodies)
            for body in out.bodies:
                key = str(body["idempotency_key"])
                part.keys.append(key)
                if key in taken:
                    part.existing += 1
                else:
                    lines.append(json.dumps(body))
                    owners.append(out.strategy)
        if lines:
            self._submit(lines, owners, report, now)
        self.passes += 1
        self.last = report
        return report

    def _inputs(
        self,
        now: datetime,
        snapshots: Sequence[store_market.MarketSnapshot],
        state: ProducerState,
    ) -> _Inputs:
        days, openings, in_flight = state.days, state.openings, state.in_flight
        residuals, rounds, arbitrage = state.residuals, state.rounds, state.arbitrage
        accounts = state.accounts
        pairs = _open_pairs(openings)
        funding_open = [p for p in pairs if p.strategy is Strategy.FUNDING_ARB]
        # a funding position is held from its opening until its close completed
        funding_held = {a.symbol for a in arbitrage if a.strategy == "funding_arb" and a.in_flight}
        funding_held.update(p.symbol for p in funding_open)
        return _Inputs(
            market=Market.of((_quote(s) for s in snapshots), now, self.config.max_quote_age_s),
            venues=self._venues(accounts),
            volume=VolumeState(
                days={
                    d.scope: VenueDay(d.scope, d.volume_usd, d.fees_usd, d.realized_pnl_usd)
                    for d in days
                },
                open_pairs=[p for p in pairs if p.strategy is Strategy.VOLUME],
                openings_in_flight=in_flight,
            ),
            rebalance=RebalanceState(
                residuals=[Residual(r.exchange, r.symbol, r.quantity) for r in residuals],
                rounds={r.symbol: r.jobs for r in rounds},
                in_flight=frozenset(r.symbol for r in rounds if r.in_flight),
            ),
            arb_busy=frozenset(a.symbol for a in arbitrage if a.strategy == "arb" and a.in_flight),
            funding_held=frozenset(funding_held),
            funding_open=funding_open,
            arb_open=[p for p in pairs if p.strategy is Strategy.ARB],
        )

    def _venues(self, accounts: list[store.Account]) -> dict[str, Venue]:
        fees = self.config.taker_fee_bps
        exchanges = self.settings.exchanges
        return {
            a.name: Venue(
                name=a.name,
                taker_fee_bps=fees.get(a.name, self.settings.paper.taker_fee_bps),
                funding_interval_h=Decimal(
                    str(exchanges[a.name].funding_interval_h if a.name in exchanges else 8.0)
                ),
                equity_usd=a.equity_usd,
                single_job_cap=a.single_job_cap,
                safe_mode=a.safe_mode,
            )
            for a in accounts
        }

    def _decide(self, inputs: _Inputs, now: datetime) -> list[Output]:
        c = self.config
        return [
            hedge_rebalance(inputs.market, inputs.venues, c.hedge_rebalance, inputs.rebalance, now),
            arb(inputs.market, inputs.venues, c.arb, now, inputs.arb_busy, inputs.arb_open),
            funding_arb(
                inputs.market,
                inputs.venues,
                c.funding_arb,
                now,
                inputs.funding_held,
                inputs.funding_open,
            ),
            volume(inputs.market, inputs.venues, c.volume, inputs.volume, now, self.rng),
        ]

    def _submit(
        self, lines: list[str], owners: list[Strategy], report: ProducerReport, now: datetime
    ) -> None:
        try:
            result = submit_lines(self.engine, lines, self.settings, now, skip_invalid=True)
        except SubmitError:
            log.warning("producers: the submission was refused; the next pass retries")
            raise
        bad = {p.line for p in result.report.shown}
        for p in result.report.shown:
            report.problems.append(
                {"strategy": owners[p.line - 1].value, "field": p.field, "message": p.message}
            )
        for line, owner in enumerate(owners, start=1):
            if line in bad:
                report.strategies[owner].invalid += 1
        for line, owner in enumerate(owners, start=1):
            if line not in bad:
                report.strategies[owner].submitted += 1
        # a key another producer took between the read and the insert: not inserted again
        report.raced = result.existing
        if report.problems:
            log.error("producers emitted invalid jobs: %s", report.problems[:3])

    # -- the loop ---------------------------------------------------------------------

    def start(self) -> None:
        """Run a pass now and then every ``strategies.interval_s`` until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="producers", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            report = self.guard.run(lambda: self.lead_once(self.clock.now()))
            if report is not None and report.submitted:
                counts = {s.value: r.submitted for s, r in report.strategies.items() if r.submitted}
                log.info("producers submitted %s", counts)
            self._stop.wait(self.config.interval_s)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.resign is not None:
            self.resign()


def _quote(s: store_market.MarketSnapshot) -> Quote:
    return Quote.of(
        s.exchange,
        s.symbol,
        s.bid,
        s.ask,
        s.last,
        s.funding_rate,
        s.volatility,
        s.latency_ms,
        s.observed_at,
    )


def _open_pairs(legs: list[store.OpeningLeg]) -> list[OpenPair]:
    """Completed openings as pairs: the exchange it is long on, the one it is short on."""
    by_key: dict[str, list[store.OpeningLeg]] = defaultdict(list)
    for leg in legs:
        by_key[leg.idempotency_key].append(leg)
    pairs = []
    for key, rows in by_key.items():
        longs = [r for r in rows if r.net_quantity > 0]
        shorts = [r for r in rows if r.net_quantity < 0]
        if len(longs) != 1 or len(shorts) != 1:
            continue  # not a plain pair (nothing filled, or a shape the program never opens)
        quantity = min(longs[0].net_quantity, -shorts[0].net_quantity)
        close_after = _when(rows[0].close_after)
        if close_after is None:
            log.warning("opening %s has no readable close_after; not closed", key)
            continue
        pairs.append(
            OpenPair(
                key=key,
                symbol=rows[0].symbol,
                long_exchange=longs[0].exchange,
                short_exchange=shorts[0].exchange,
                quantity=quantity,
                close_after=close_after,
                failed_closes=rows[0].failed_closes,
                strategy=Strategy(rows[0].strategy),
                entry=_entry(longs[0], shorts[0], rows),
            )
        )
    return pairs


def _entry(
    long: store.OpeningLeg, short: store.OpeningLeg, rows: list[store.OpeningLeg]
) -> Entry | None:
    """The opening's fill prices and fees; None when its legs booked no price."""
    if long.buy_price is None or short.sell_price is None or long.opened_at is None:
        return None
    try:
        spread = Decimal(long.daily_spread_bps) if long.daily_spread_bps else None
    except ArithmeticError:
        spread = None
    if spread is not None and not spread.is_finite():
        spread = None
    return Entry(
        long_price=long.buy_price,
        short_price=short.sell_price,
        fees_usd=sum((r.fee_usd for r in rows), Decimal(0)),
        opened_at=long.opened_at,
        daily_spread_bps=spread,
    )


def _when(text: str | None) -> datetime | None:
    """An opening's ``close_after`` (ISO 8601 with an offset), or None if unreadable."""
    try:
        when = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return when if when is not None and when.utcoffset() is not None else None
