"""The simulation loop: the production tick and execution, stepped on a virtual clock.

Design note.  A step is: move the clock (the scratch database's ``sim.clock``
and the Python :class:`~perpbot_db.domain.clock.VirtualClock` the paper
exchanges and the producers read), poll the market, run a producers' pass
(:class:`~perpbot_db.services.producers.ProducerService`, every
``strategies.interval_s``) and submit what it emits through the validated path
of ``perpbot submit``, run one admission tick
(:func:`perpbot_db.services.tick.run_tick`, reading the virtual database clock),
and when it admitted something run the worker synchronously until nothing is
claimable (``Stepper.work``: every job ends in the step it was admitted in);
every ``housekeeping_every`` steps the leader's chores (recovery, expired
protections).  Nothing sleeps: time only moves when the loop
moves it, so a day of market runs as fast as the database answers.

Speed is round trips; the decisions are the production ones.  The loop holds
the market in memory (:class:`HeldMarket`): the tick and the producers are
handed those rows rather than reading them back, and ``market_snapshots`` is
written only before the workers (or a recovery) trade on it.  The clock moves
inside the tick's transaction.  The producers' state is read again only after a
job or a protection changed, and only its jobs' part after jobs were only
submitted or expired
(:meth:`~perpbot_db.services.producers.ProducerService.refresh_jobs`).  A tick
that would only hold pending jobs, or do nothing, is left out (:class:`_Quiet`,
:meth:`perpbot_db.services.tick.QuietBasis.dry_run`: the tick's own pure
decisions over the pending jobs held in memory); the decisions it would have
stored are held back and written, each with its time, before anything reads
them.  Such a step costs no round trip; one that would also expire jobs past
their deadline runs the tick's expiry statement alone.  The chores run only
when one statement (:func:`perpbot_db.store.simulate.chores_due`) finds
something for them: an expired lease, lock or safe mode; and a chore that
changed nothing changes nothing here either.  ``SimOptions.reference`` runs the
plain loop (everything written and read back every step, every tick run, a
worker pass with every chore), which the tests hold the fast one to: the same
ledger and the same decisions stored on every job.

The inputs: :class:`MarketInput` (the shape of a feed's source: the live paper
market, :func:`paper_market`, or :class:`RecordedMarket` replaying a ``perpbot
market load`` file) and :class:`Producers` (the strategies of ``perpbot run``).

The report is read from the scratch database at the end (``store/simulate``),
with a sha256 over the ordered ledger: the same seed, input and mode give the
same digest.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Connection, Engine

from perpbot_db.domain.clock import VirtualClock
from perpbot_db.domain.jobspec import problems_from_validation
from perpbot_db.domain.paper_market import default_symbols
from perpbot_db.domain.strategies.base import Output
from perpbot_db.services import feeds, tick
from perpbot_db.services import market as market_service
from perpbot_db.services.producers import ProducerState
from perpbot_db.settings import Settings
from perpbot_db.store import market as store_market
from perpbot_db.store import pending, system
from perpbot_db.store import simulate as store_sim
from perpbot_db.store.reading import reading

Snapshot = store_market.MarketSnapshot
MarketKey = tuple[str, str]

#: ``--symbols N`` takes the paper market's first N default perpetuals (BTC, ETH, SOL, ...).
MAX_SYMBOLS = 20
#: A recorded snapshot's numbers rounded as its ``market_snapshots`` columns store them
#: (the loop hands the tick what it holds in memory: it must be what the table holds).
_SCALES = {"bid": 12, "ask": 12, "last": 12, "funding_rate": 8, "volatility": 8, "latency_ms": 3}


class MarketInput(Protocol):
    """Where a step's snapshots come from: the shape of a feed's source
    (:class:`perpbot_db.services.feeds.Source`), so the live paper feed plugs in as is."""

    def poll(self, now: datetime) -> Sequence[Snapshot]:
        """The snapshots observed at or before ``now``, possibly none."""
        ...


class Producers(Protocol):
    """The strategies (:class:`perpbot_db.services.producers.ProducerService`): decide
    on a market and a state, then submit what they decided."""

    def read_state(self, now: datetime) -> ProducerState: ...

    def refresh_jobs(self, state: ProducerState) -> ProducerState: ...

    def plan(
        self,
        now: datetime,
        *,
        snapshots: Sequence[Snapshot] | None = None,
        state: ProducerState | None = None,
    ) -> list[Output]: ...

    def submit(self, outputs: list[Output], now: datetime) -> Submitted: ...


class Submitted(Protocol):
    """What a submission reports (:class:`perpbot_db.services.producers.ProducerReport`)."""

    @property
    def submitted(self) -> int:
        """How many jobs were written (those whose key was taken are not)."""
        ...


# -- the inputs -------------------------------------------------------------------------


def sim_symbols(settings: Settings, symbols: int | None) -> list[str]:
    """The live feed's symbols (``[feed] symbols``), or the first ``symbols`` defaults."""
    if symbols is None:
        return list(settings.feed.symbols)
    if not 1 <= symbols <= MAX_SYMBOLS:
        raise ValueError(f"symbols must be within 1-{MAX_SYMBOLS}, not {symbols}")
    return default_symbols(symbols)


def paper_market(
    settings: Settings, exchanges: Sequence[str], *, seed: int, symbols: int | None = None
) -> feeds.PaperSource:
    """The live paper feed's market (its regimes, ``[feed]`` knobs and each exchange's
    funding interval) over ``exchanges``, seeded by the simulation's ``seed``."""
    return feeds.paper_source(
        exchanges,
        sim_symbols(settings, symbols),
        seed=seed,
        params=settings.feed.market_params(),
        funding_interval_h={n: e.funding_interval_h for n, e in settings.exchanges.items()},
    )


class RecordedMarket:
    """A ``perpbot market load`` file replayed: each snapshot is written at its
    ``observed_at`` (required here), in time order."""

    def __init__(self, snapshots: Iterable[market_service.SnapshotIn]) -> None:
        self.snapshots = sorted(
            (_stored(s) for s in snapshots), key=lambda s: (s.observed_at, s.exchange, s.symbol)
        )
        self.next = 0

    @classmethod
    def from_file(cls, path: Path) -> RecordedMarket:
        snaps = []
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    snap = market_service.SnapshotIn.model_validate_json(line)
                except ValidationError as exc:
                    problems = "; ".join(str(p) for p in problems_from_validation(exc))
                    raise ValueError(f"--market {path} line {number}: {problems}") from None
                if snap.observed_at is None:
                    raise ValueError(f"--market {path} line {number}: observed_at is required")
                if snap.bid > snap.ask:
                    raise ValueError(
                        f"--market {path} line {number}: bid: {snap.bid} is above ask {snap.ask}"
                    )
                snaps.append(snap)
        if not snaps:
            raise ValueError(f"--market {path}: no snapshot in the file")
        return cls(snaps)

    @property
    def start(self) -> datetime:
        return self.snapshots[0].observed_at

    def poll(self, now: datetime) -> list[Snapshot]:
        out = []
        while self.next < len(self.snapshots):
            at = self.snapshots[self.next].observed_at
            if at > now:
                break
            out.append(self.snapshots[self.next])
            self.next += 1
        return out


def _stored(snap: market_service.SnapshotIn) -> Snapshot:
    """A validated snapshot (``observed_at`` set) as its row stores it."""
    assert snap.observed_at is not None, "a recorded snapshot has its time"
    return Snapshot(
        exchange=snap.exchange,
        symbol=snap.symbol,
        bid=_column(snap.bid, "bid"),
        ask=_column(snap.ask, "ask"),
        last=_column(snap.last, "last"),
        funding_rate=_optional(snap.funding_rate, "funding_rate"),
        volatility=_optional(snap.volatility, "volatility"),
        latency_ms=_optional(snap.latency_ms, "latency_ms"),
        observed_at=snap.observed_at,
    )


def _column(value: Decimal, name: str) -> Decimal:
    """``value`` rounded to its column's scale as PostgreSQL rounds (half away from 0)."""
    return value.quantize(Decimal(1).scaleb(-_SCALES[name]), ROUND_HALF_UP)


def _optional(value: Decimal | None, name: str) -> Decimal | None:
    return None if value is None else _column(value, name)


# -- the loop ---------------------------------------------------------------------------


class Stepper(Protocol):
    """What the loop drives besides the clock, the market, submissions and the tick:
    the workers and the leader's chores (wired by the caller, which may import the
    worker: this layer may not)."""

    def work(self) -> None:
        """Run every claimable job to its end, now, in this thread."""
        ...

    def housekeeping(self, ready: Callable[[], None]) -> bool:
        """The leader's chores: recover expired leases, end expired protections; True if
        they changed anything.  ``ready()`` writes the quotes before anything trades."""
        ...


@dataclass(frozen=True)
class SimOptions:
    hours: float
    mode: str = "balanced"
    seed: int = 1
    step_s: float = 1.0
    symbols: int | None = None  # the paper market's first N defaults; None: [feed] symbols
    start: datetime | None = None  # default: the recorded market's first snapshot, or a fixed day
    housekeeping_every: int = 10
    # The plain loop: each step moves the clock and writes the market in a transaction of
    # its own and the tick reads the market back.  What the held market is checked
    # against (the same ledger), and the benchmark's "before".
    reference: bool = False

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.hours * 3600 / self.step_s))


DEFAULT_START = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
ProgressFn = Callable[[int, int], None]


@dataclass
class ModeReport:
    mode: str
    seed: int
    steps: int
    start: datetime
    end: datetime
    submitted: int = 0
    admitted: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    volume_usd: Decimal = Decimal(0)
    fees_usd: Decimal = Decimal(0)
    realized_pnl_usd: Decimal = Decimal(0)
    holds: Counter[str] = field(default_factory=Counter)  # job-ticks held, by code
    denials: dict[str, int] = field(default_factory=dict)  # rejected/expired jobs, by code
    peak_capital: list[store_sim.PeakCapital] = field(default_factory=list)
    ledger_rows: int = 0
    ticks_skipped: int = 0  # steps whose tick could change nothing (not in the summary)
    protection_locks: list[tuple[object, ...]] = field(default_factory=list)
    digest: str = ""
    # sha256 over every job's stored decision, score and scoring time (not in the summary:
    # what the fast loop is held to besides the ledger)
    decisions_digest: str = ""
    wall_s: float | None = None
    phase_s: dict[str, float] = field(default_factory=dict)  # with a timer: wall time per phase

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "steps": self.steps,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "jobs": {
                "submitted": self.submitted,
                "admitted": self.admitted,
                "completed": self.by_status.get("completed", 0),
                "failed": self.by_status.get("failed", 0),
                "by_status": dict(sorted(self.by_status.items())),
            },
            "volume_usd": str(self.volume_usd),
            "fees_usd": str(self.fees_usd),
            "realized_pnl_usd": str(self.realized_pnl_usd),
            "holds": dict(sorted(self.holds.items())),
            "denials": self.denials,
            "peak_capital": {
                p.exchange: {
                    "peak_reserved_usd": str(p.peak_reserved_usd),
                    "share_of_equity": str(_share(p.peak_reserved_usd, p.equity_usd)),
                }
                for p in self.peak_capital
            },
            "ledger_rows": self.ledger_rows,
            "ledger_sha256": self.digest,
        }


def _share(part: Decimal, whole: Decimal) -> Decimal:
    return (part / whole).quantize(Decimal("0.0001")) if whole else Decimal(0)


def ledger_digest(rows: Iterable[Sequence[object]]) -> str:
    """sha256 over the ledger rows as text (decimals normalised: 1.50 and 1.5 are one)."""
    h = hashlib.sha256()
    for row in rows:
        h.update("\x1f".join(_text(v) for v in row).encode())
        h.update(b"\n")
    return h.hexdigest()


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def run(
    engine: Engine,
    settings: Settings,
    stepper: Stepper,
    clock: VirtualClock,
    options: SimOptions,
    market: MarketInput,
    producers: Producers,
    *,
    progress: ProgressFn | None = None,
    timer: Callable[[], float] | None = None,
) -> ModeReport:
    """Run ``options.steps`` steps from ``clock.now()`` and report on the ledger.

    The workers run in a step whose tick admitted something (every admitted job is
    run to its end in that step, so nothing else can be claimable) and with the
    housekeeping, which may hand jobs back.  ``timer`` (a benchmark's
    ``time.perf_counter``) adds up the wall time of each phase in ``report.phase_s``;
    it never changes what the simulation does."""
    config = tick.TickConfig.from_settings(settings)
    start = clock.now()
    with engine.begin() as conn:
        system.set_risk_mode(conn, risk_mode=options.mode, actor="simulate")
    report = ModeReport(options.mode, options.seed, options.steps, start, start)
    held = HeldMarket(max_future_skew_s=settings.market_max_future_skew_s)
    step = timedelta(seconds=options.step_s)
    every = timedelta(seconds=settings.strategies.interval_s)
    produce = settings.strategies.any_enabled
    next_pass = start
    lap = _Laps(report.phase_s, timer)
    quiet = _Quiet()
    state: ProducerState | None = None  # the producers' state, while no job changed
    jobs_moved = False  # since it was read, jobs were only submitted or expired
    for i in range(options.steps):
        now = start + i * step
        if now > clock.now():
            clock.advance((now - clock.now()).total_seconds())
        held.take(market.poll(now))
        lap("market input")
        chores = (i + 1) % options.housekeeping_every == 0
        moved = False
        if options.reference:
            with engine.begin() as conn:
                _move_clock(conn, now)
                held.write(conn)
            moved = True
        lap("clock and market write")
        if produce and now >= next_pass:  # a pass every strategies.interval_s, as in run
            while next_pass <= now:
                next_pass += every
            if options.reference:
                outputs = producers.plan(now)  # the market and the state read back
            else:
                if state is None or state.day != now.astimezone(UTC).date():
                    quiet.flushed(engine)
                    state = producers.read_state(now)
                elif jobs_moved:  # no fill, counter or safe mode moved: the jobs' part
                    state = producers.refresh_jobs(state)
                jobs_moved = False
                outputs = producers.plan(now, snapshots=held.rows(), state=state)
            lap("producers")
            if any(out.bodies for out in outputs):
                if not moved:  # the jobs are created at the step's time: clock first
                    with engine.begin() as conn:
                        _move_clock(conn, now)
                        quiet.flush(conn)
                    moved = True
                quiet.flushed(engine)
                if producers.submit(outputs, now).submitted:
                    quiet.submitted()
                    jobs_moved = True
            lap("submit")
        dry = None if options.reference else quiet.dry_run(engine, held, now)
        admitted = False
        if dry is not None:  # the tick would only expire and hold: left out, but the expiry
            if dry.expired:
                with engine.begin() as conn:
                    if not moved:
                        _move_clock(conn, now)
                    quiet.flush(conn)  # each job's last decision, which its expiry keeps
                    quiet.expired(tick.expire(conn, now), dry.expired)
                moved = True
                jobs_moved = True
            report.holds.update(dry.held)  # its decisions held back
            report.ticks_skipped += 1
        else:

            def first(conn: Connection, now: datetime = now, moved: bool = moved) -> None:
                if not moved:
                    _move_clock(conn, now)
                quiet.flush(conn)  # the decisions held back, before the tick reads them

            if options.reference:
                ticked = tick.run_tick(engine, config)
            else:
                # ``now`` is the database clock once ``first`` ran: not read back
                ticked = tick.run_tick(engine, config, now=now, markets=held.rows(), first=first)
            moved = True
            report.holds.update(ticked.held)
            quiet.ticked(ticked)
            if _jobs_or_locks_changed(ticked):
                state = None
            admitted = bool(ticked.admitted)
        lap("tick")
        # Only the tick admits and every job it admits ends in this step: the workers
        # have nothing to claim otherwise (the plain loop also looks at every chore).
        if admitted or (chores and options.reference):
            if held.unwritten:
                with engine.begin() as conn:
                    held.write(conn)
            stepper.work()
            quiet.changed()
            state = None
        lap("work")
        if chores and (options.reference or _chores_due(engine, now)):
            if not moved:  # the chores read the clock
                with engine.begin() as conn:
                    _move_clock(conn, now)
                    quiet.flush(conn)

            def ready() -> None:  # and the quotes, if they recover a job
                with engine.begin() as conn:
                    held.write(conn)

            if stepper.housekeeping(ready) or options.reference:
                quiet.changed()
                state = None
        lap("housekeeping")
        if progress is not None:
            progress(i + 1, options.steps)
        report.end = now
    quiet.flushed(engine)
    _read_outcome(engine, report)
    return report


def _jobs_or_locks_changed(ticked: tick.TickReport) -> bool:
    """Did the tick change what the producers read (jobs' statuses, safe modes)?"""
    placed = ticked.quiet is not None and bool(ticked.quiet.placed)
    return bool(ticked.admitted or ticked.rejected or ticked.expired or placed or ticked.halted)


def _chores_due(engine: Engine, now: datetime) -> bool:
    """:func:`perpbot_db.store.simulate.chores_due` in one round trip (autocommit: one
    statement needs no transaction around it)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return store_sim.chores_due(conn, now)


def _move_clock(conn: Connection, now: datetime) -> None:
    if not store_sim.clock_set(conn, now):
        raise RuntimeError(f"the simulation clock is past {now.isoformat()}")


class _Quiet:
    """When a step's tick can be left out (:meth:`perpbot_db.services.tick.QuietBasis.dry_run`):
    nothing but the market and the clock changed since the last tick, and the tick would
    only hold pending jobs (or do nothing at all), after expiring those past their
    deadline.  Such a step costs no round trip but the expiry's, the tick's own
    statement (:func:`perpbot_db.services.tick.expire`): the decisions it would have
    stored are held back (:attr:`deferred`, the latest per job, as the tick's UPDATE
    would leave them) and written by :meth:`flush` before anything reads the database
    again.  An expiry changes neither capital nor counters (a pending job holds
    neither), so what the tick judged on still holds after it.

    The pending jobs are read from the database after each tick that ran and after jobs
    were submitted, run or recovered, then followed here as dry ticks decide on them."""

    def __init__(self) -> None:
        self.basis: tick.QuietBasis | None = None
        self.pending: dict[int, pending.PendingFacts] | None = None  # None: not known
        self.in_place: dict[tuple[str, str, str], datetime] = {}
        self.deferred: dict[int, pending.StoredDecision] = {}

    def ticked(self, report: tick.TickReport) -> None:
        self.basis = report.quiet
        if report.quiet is not None:
            self.in_place.update(report.quiet.placed)
        self.pending = None  # the tick stored decisions: read them again

    def submitted(self) -> None:
        """New jobs wait: read the pending jobs again.  The rest of the basis holds (a
        submission only adds pending jobs: no capital, no lock, no counter moves)."""
        self.pending = None

    def changed(self) -> None:
        """Jobs were submitted or ran, or chores were done: the next tick runs, and the
        pending jobs are read again."""
        self.basis = None
        self.pending = None

    def flush(self, conn: Connection) -> None:
        """Write the decisions held back, each at the time it was made."""
        if self.deferred:
            decisions = [self.deferred[job_id] for job_id in sorted(self.deferred)]
            pending.store_decisions(conn, now=_at(decisions[0]), decisions=decisions)
            self.deferred.clear()

    def flushed(self, engine: Engine) -> None:
        """:meth:`flush` in a transaction of its own (none if nothing is held back)."""
        if self.deferred:
            with engine.begin() as conn:
                self.flush(conn)

    def expired(self, done: Sequence[int], predicted: Sequence[int]) -> None:
        """The jobs the tick's expiry statement expired, which the dry run predicted."""
        if sorted(done) != sorted(predicted):
            raise RuntimeError(
                f"the simulation predicted the expiry of jobs {sorted(predicted)} "
                f"but the tick's statement expired {sorted(done)}"
            )
        assert self.pending is not None, "a dry run read the pending jobs"
        for job_id in done:
            del self.pending[job_id]

    def dry_run(self, engine: Engine, held: HeldMarket, now: datetime) -> tick.HeldTick | None:
        """The tick at ``now`` if it would only expire and hold (its decisions are then
        held back, the pending jobs followed, and the caller runs the expiry), or None:
        run it."""
        if self.basis is None:
            return None
        if self.pending is None:
            self.flushed(engine)
            with reading(engine) as conn:
                self.pending = {p.job.id: p for p in pending.pending_facts(conn)}
        dry = self.basis.dry_run(held.rows(), now, self.in_place, list(self.pending.values()))
        if dry is None:
            return None
        for d in dry.decisions:
            self.deferred[d.id] = d
            self.pending[d.id] = self.pending[d.id].stored(d, now)
        return dry


def _at(decision: pending.StoredDecision) -> datetime:
    assert decision.at is not None, "a decision held back carries its time"
    return decision.at


class HeldMarket:
    """The latest snapshot per key, held in memory: the tick is handed these rows
    instead of reading them back, and ``market_snapshots`` is written only before
    something reads it (the workers' paper fills, the chores), with every key changed
    since the last write, in one statement.  A snapshot older than the one held is
    dropped, as the table's upsert drops it, so memory and table agree."""

    def __init__(self, *, max_future_skew_s: float) -> None:
        self.latest: dict[MarketKey, Snapshot] = {}
        self.unwritten: set[MarketKey] = set()
        self._rows: list[Snapshot] | None = None  # rows() until the next snapshot taken
        self.max_future_skew_s = max_future_skew_s

    def take(self, snapshots: Iterable[Snapshot]) -> None:
        for snap in snapshots:
            key = (snap.exchange, snap.symbol)
            seen = self.latest.get(key)
            if seen is None or snap.observed_at >= seen.observed_at:
                self.latest[key] = snap
                self.unwritten.add(key)
                self._rows = None

    def rows(self) -> list[Snapshot]:
        """The rows the table holds once written, in key order."""
        if self._rows is None:
            self._rows = [self.latest[key] for key in sorted(self.latest)]
        return self._rows

    def write(self, conn: Connection) -> None:
        if self.unwritten:
            store_market.snapshots_upsert(
                conn,
                [self.latest[key] for key in sorted(self.unwritten)],
                max_future_skew_s=self.max_future_skew_s,
            )
            self.unwritten.clear()


class _Laps:
    """Wall time per phase, added up (a no-op without a timer)."""

    def __init__(self, into: dict[str, float], timer: Callable[[], float] | None) -> None:
        self.into = into
        self.timer = timer
        self.last = timer() if timer else 0.0

    def __call__(self, phase: str) -> None:
        if self.timer is None:
            return
        now = self.timer()
        self.into[phase] = self.into.get(phase, 0.0) + now - self.last
        self.last = now


def _read_outcome(engine: Engine, report: ModeReport) -> None:
    with engine.connect() as conn:
        rows = store_sim.ledger_rows(conn)
        report.decisions_digest = ledger_digest(store_sim.decision_rows(conn))
        report.by_status = store_sim.jobs_by_status(conn)
        report.admitted = store_sim.jobs_admitted(conn)
        report.denials = store_sim.denials(conn)
        money = store_sim.money(conn)
        report.peak_capital = store_sim.peak_capital(conn)
        report.protection_locks = store_sim.protection_locks(conn)
    report.volume_usd = money.volume_usd
    report.fees_usd = money.fees_usd
    report.realized_pnl_usd = money.realized_pnl_usd
    report.submitted = sum(report.by_status.values())
    report.ledger_rows = len(rows)
    report.digest = ledger_digest(rows)
