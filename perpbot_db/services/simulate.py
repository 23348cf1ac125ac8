"""The simulation loop: the production tick and execution, stepped on a virtual clock.

Design note.  A step is: set the clock (the scratch database's ``sim.clock``
and the Python :class:`~perpbot_db.domain.clock.VirtualClock` the paper
exchanges read) and write the step's market snapshots in one transaction, submit what the job
source emits through the validated path of ``perpbot submit``, run one
admission tick (:func:`perpbot_db.services.tick.run_tick`, reading the virtual
database clock), and when it admitted something run the worker synchronously
until nothing is claimable (``Stepper.work``: every job ends in the step it was
admitted in); every ``housekeeping_every`` steps the leader's chores (recovery,
expired protections) and a worker pass.  Nothing sleeps: time only moves when the
loop moves it, so a day of market runs as fast as the database answers.

The inputs are two small interfaces so the real paper feed and strategies can
plug in: :class:`MarketInput` (snapshots per step) and :class:`JobInput` (job
bodies per step, given the step's market).  Until those land, this module
carries a seeded random-walk market and a seeded two-leg arbitrage source,
and :class:`RecordedMarket` replays a ``perpbot market load`` file.

The report is read from the scratch database at the end (``store/simulate``),
with a sha256 over the ordered ledger: the same seed, input and mode give the
same digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import Engine

from perpbot_db.domain.clock import VirtualClock
from perpbot_db.domain.jobspec import problems_from_validation
from perpbot_db.services import market as market_service
from perpbot_db.services import tick
from perpbot_db.services.submit import submit_lines
from perpbot_db.settings import Settings
from perpbot_db.store import simulate as store_sim
from perpbot_db.store import system

Snapshot = market_service.SnapshotIn
MarketKey = tuple[str, str]

#: The symbols of the seeded market, in order (``symbols=N`` takes the first N), with a
#: starting price and a typical quoted spread in bps.
SYMBOLS: tuple[tuple[str, Decimal, float], ...] = (
    ("BTC/USDT:USDT", Decimal(97000), 0.2),
    ("ETH/USDT:USDT", Decimal(3100), 0.4),
    ("SOL/USDT:USDT", Decimal(180), 0.8),
    ("XRP/USDT:USDT", Decimal("2.2"), 1.0),
    ("BNB/USDT:USDT", Decimal(650), 0.8),
    ("DOGE/USDT:USDT", Decimal("0.32"), 1.2),
    ("ADA/USDT:USDT", Decimal("0.9"), 1.2),
    ("AVAX/USDT:USDT", Decimal(38), 1.0),
    ("LINK/USDT:USDT", Decimal(22), 1.0),
    ("DOT/USDT:USDT", Decimal("7.5"), 1.2),
    ("LTC/USDT:USDT", Decimal(105), 1.0),
    ("TRX/USDT:USDT", Decimal("0.25"), 1.5),
    ("NEAR/USDT:USDT", Decimal("5.5"), 1.5),
    ("APT/USDT:USDT", Decimal(11), 1.5),
    ("ARB/USDT:USDT", Decimal("0.85"), 1.5),
    ("OP/USDT:USDT", Decimal("2.1"), 1.5),
    ("SUI/USDT:USDT", Decimal("3.8"), 1.2),
    ("ATOM/USDT:USDT", Decimal("6.8"), 1.5),
    ("FIL/USDT:USDT", Decimal("5.2"), 1.8),
    ("UNI/USDT:USDT", Decimal("12.5"), 1.5),
)
MAX_SYMBOLS = len(SYMBOLS)
PRICE_Q = Decimal("1e-8")


class MarketInput(Protocol):
    def step(self, now: datetime) -> list[Snapshot]:
        """The snapshots observed at ``now`` (``observed_at`` set), possibly none."""
        ...


class JobInput(Protocol):
    def step(self, now: datetime, market: Mapping[MarketKey, Snapshot]) -> list[dict[str, Any]]:
        """Job bodies (the JSON of ``perpbot submit``) to submit at ``now``."""
        ...


# -- the seeded inputs ----------------------------------------------------------------


@dataclass
class _Walk:
    price: float
    spread_bps: float
    gaps: dict[str, float]  # per exchange, bps off the common price
    funding: dict[str, float]


class SeededMarket:
    """Correlated random walks: one price per symbol, a small per-venue gap that mean-
    reverts, a quoted spread, drifting funding, lognormal latency and a rare fast market.

    A stand-in for the paper feed (``perpbot_db/services/feeds.py``): reproducible from
    ``seed`` alone, cheap enough for a day at one snapshot a second."""

    def __init__(self, seed: int, exchanges: Sequence[str], symbols: int = 4) -> None:
        if not 1 <= symbols <= MAX_SYMBOLS:
            raise ValueError(f"symbols must be within 1-{MAX_SYMBOLS}, not {symbols}")
        self.rng = random.Random(f"market:{seed}")  # noqa: S311 - a seeded simulation
        self.exchanges = tuple(sorted(exchanges))
        self.walks = {
            name: _Walk(
                float(price),
                spread,
                {ex: self.rng.gauss(0, 1.5) for ex in self.exchanges},
                {ex: 0.0001 for ex in self.exchanges},
            )
            for name, price, spread in SYMBOLS[:symbols]
        }
        self.fast_until: datetime | None = None

    def step(self, now: datetime) -> list[Snapshot]:
        rng = self.rng
        if self.fast_until is None and rng.random() < 1 / 3600:  # about once an hour
            self.fast_until = now + timedelta(seconds=rng.uniform(30, 180))
        fast = self.fast_until is not None and now < self.fast_until
        if not fast:
            self.fast_until = None
        vol = 0.00012 * (3 if fast else 1)  # per step, about 2 % a day when calm
        volatility = _decimal(vol * 120, 6)
        out = []
        for symbol, walk in self.walks.items():
            walk.price *= math.exp(rng.gauss(0, vol))
            for ex in self.exchanges:
                walk.gaps[ex] += -0.05 * walk.gaps[ex] + rng.gauss(0, 0.6 * (4 if fast else 1))
                walk.funding[ex] = min(0.003, max(-0.003, walk.funding[ex] + rng.gauss(0, 2e-6)))
                mid = walk.price * (1 + walk.gaps[ex] / 10_000)
                half = mid * walk.spread_bps * (8 if fast else 1) / 20_000
                bid = _decimal(mid - half, 8)
                ask = max(_decimal(mid + half, 8), bid + PRICE_Q)
                latency = rng.lognormvariate(math.log(60), 0.5) * (4 if fast else 1)
                # Built, not validated: every value is in range by construction, and
                # validating 80 snapshots a step would cost more than generating them.
                out.append(
                    Snapshot.model_construct(
                        exchange=ex,
                        symbol=symbol,
                        bid=bid,
                        ask=ask,
                        last=_decimal(mid, 8),
                        funding_rate=_decimal(walk.funding[ex], 8),
                        volatility=volatility,
                        latency_ms=_decimal(latency, 1),
                        observed_at=now,
                    )
                )
        return out


def _decimal(value: float, places: int) -> Decimal:
    """A float rounded to ``places`` decimals, exactly as its text says."""
    return Decimal(f"{value:.{places}f}")


class SeededJobs:
    """Two-leg jobs across the configured exchanges, a few a minute: buy where the ask is
    lowest, sell where the bid is highest, with the edge the market shows (often too small
    to pay: the risk manager decides).  A stand-in for the strategies
    (``perpbot_db/services/producers.py``)."""

    STRATEGIES = ("arb", "volume", "funding_arb")

    def __init__(self, seed: int, *, per_minute: float = 6.0, notional_usd: float = 2000) -> None:
        self.rng = random.Random(f"jobs:{seed}")  # noqa: S311 - a seeded simulation
        self.seed = seed
        self.per_minute = per_minute
        self.notional_usd = notional_usd
        self.made = 0
        self.last: datetime | None = None

    def step(self, now: datetime, market: Mapping[MarketKey, Snapshot]) -> list[dict[str, Any]]:
        elapsed = 1.0 if self.last is None else (now - self.last).total_seconds()
        self.last = now
        symbols = sorted({symbol for _, symbol in market})
        if not symbols:
            return []
        bodies = []
        for _ in range(self._count(elapsed)):
            body = self._job(now, market, self.rng.choice(symbols))
            if body is not None:
                bodies.append(body)
        return bodies

    def _count(self, elapsed_s: float) -> int:
        """A Poisson draw of the jobs arriving in ``elapsed_s`` seconds."""
        mean = self.per_minute * elapsed_s / 60
        n, p, limit = 0, self.rng.random(), math.exp(-mean)
        while p > limit:
            n += 1
            p *= self.rng.random()
        return n

    def _job(
        self, now: datetime, market: Mapping[MarketKey, Snapshot], symbol: str
    ) -> dict[str, Any] | None:
        quotes = sorted((ex, snap) for (ex, sym), snap in market.items() if sym == symbol)
        if len(quotes) < 2:
            return None
        buy_ex, buy = min(quotes, key=lambda q: q[1].ask)
        sell_ex, sell = max(((ex, s) for ex, s in quotes if ex != buy_ex), key=lambda q: q[1].bid)
        notional = self.notional_usd * self.rng.uniform(0.5, 2.0)
        quantity = (Decimal(notional) / buy.ask).quantize(Decimal("1e-6"))
        if quantity <= 0:
            return None
        edge_bps = float((sell.bid - buy.ask) / buy.ask * 10_000)
        self.made += 1
        strategy = self.rng.choice(self.STRATEGIES)
        return {
            "strategy": strategy,
            "symbol": symbol,
            "notional_usd": str((quantity * buy.ask).quantize(Decimal("0.01"))),
            "expected_edge_bps": round(edge_bps + self.rng.uniform(0, 15), 3),
            "expected_pnl_usd": round(notional * max(edge_bps, 0) / 10_000, 4),
            "legs": [
                {"exchange": buy_ex, "side": "buy", "quantity": str(quantity)},
                {"exchange": sell_ex, "side": "sell", "quantity": str(quantity)},
            ],
            "idempotency_key": f"sim-{self.seed}-{self.made}",
            "deadline": (now + timedelta(seconds=30)).isoformat(),
            "metadata": {"source": "simulate"},
        }


class RecordedMarket:
    """A ``perpbot market load`` file replayed: each snapshot is written at its
    ``observed_at`` (required here), in time order."""

    def __init__(self, snapshots: Iterable[Snapshot]) -> None:
        self.snapshots = sorted(
            snapshots, key=lambda s: (s.observed_at or datetime.min, s.exchange, s.symbol)
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
                    snap = Snapshot.model_validate_json(line)
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
        first = self.snapshots[0].observed_at
        assert first is not None
        return first

    def step(self, now: datetime) -> list[Snapshot]:
        out = []
        while self.next < len(self.snapshots):
            at = self.snapshots[self.next].observed_at
            assert at is not None
            if at > now:
                break
            out.append(self.snapshots[self.next])
            self.next += 1
        return out


# -- the loop ---------------------------------------------------------------------------


class Stepper(Protocol):
    """What the loop drives besides the clock, the market, submissions and the tick:
    the workers and the leader's chores (wired by the caller, which may import the
    worker: this layer may not)."""

    def work(self) -> None:
        """Run every claimable job to its end, now, in this thread."""
        ...

    def housekeeping(self) -> None:
        """The leader's chores: recover expired leases, end expired protections."""
        ...


@dataclass(frozen=True)
class SimOptions:
    hours: float
    mode: str = "balanced"
    seed: int = 1
    step_s: float = 1.0
    symbols: int = 4
    start: datetime | None = None  # default: the recorded market's first snapshot, or a fixed day
    housekeeping_every: int = 10

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
    digest: str = ""
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
    jobs: JobInput,
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
    latest: dict[MarketKey, Snapshot] = {}
    step = timedelta(seconds=options.step_s)
    skew = settings.market_max_future_skew_s
    lap = _Laps(report.phase_s, timer)
    for i in range(options.steps):
        now = start + i * step
        if now > clock.now():
            clock.advance((now - clock.now()).total_seconds())
        snaps = market.step(now)
        lap("market input")
        latest.update({(s.exchange, s.symbol): s for s in snaps})
        with engine.begin() as conn:  # the clock moves with the step's market
            if not store_sim.clock_set(conn, now):
                raise RuntimeError(f"the simulation clock is past {now.isoformat()}")
            market_service.upsert_snapshots(conn, snaps, now, max_future_skew_s=skew)
        lap("clock and market write")
        bodies = jobs.step(now, latest)
        if bodies:
            submit_lines(engine, [json.dumps(b) for b in bodies], settings, now)
        lap("submit")
        ticked = tick.run_tick(engine, config)
        report.holds.update(ticked.held)
        lap("tick")
        chores = (i + 1) % options.housekeeping_every == 0
        if ticked.admitted or chores:
            stepper.work()
        lap("work")
        if chores:
            stepper.housekeeping()
        lap("housekeeping")
        if progress is not None:
            progress(i + 1, options.steps)
        report.end = now
    _read_outcome(engine, report)
    return report


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
        report.by_status = store_sim.jobs_by_status(conn)
        report.admitted = store_sim.jobs_admitted(conn)
        report.denials = store_sim.denials(conn)
        money = store_sim.money(conn)
        report.peak_capital = store_sim.peak_capital(conn)
    report.volume_usd = money.volume_usd
    report.fees_usd = money.fees_usd
    report.realized_pnl_usd = money.realized_pnl_usd
    report.submitted = sum(report.by_status.values())
    report.ledger_rows = len(rows)
    report.digest = ledger_digest(rows)
