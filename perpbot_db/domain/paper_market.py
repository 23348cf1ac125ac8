"""A paper market: seeded, reproducible quotes per exchange and symbol.

Design note
-----------
The paper feed, the demo and the simulation need a market that behaves enough
like the real one that the risk manager and the strategies have something to
act on, and that gives the same numbers twice for the same seed.

* **One mid per symbol, a small basis per venue.**  The common mid is a
  geometric random walk (volatility from :class:`SymbolSpec`) with occasional
  jumps.  Each venue quotes the mid shifted by its basis; the venues' bases are
  spread so that the gap between the highest and the lowest venue is exactly a
  slowly drifting *gap* (calm: ``calm_gap_bps``, 0-3 bps; fast: ``fast_gap_bps``,
  10-50 bps), which is what a cross-venue arbitrage sees.
* **A two-state regime per symbol** (calm / fast market), Markov switching in
  continuous time: a calm symbol turns fast at ``fast_per_hour`` and a fast one
  calms down after ``fast_mean_s`` on average; the switch to fast comes with a
  jump.  A fast market multiplies the volatility (``fast_volatility_x``), the
  quoted spreads (a draw from ``fast_spread_x``), the API latency (a draw from
  ``fast_latency_x``), the jump rate and the latency tail.
* **Units are the risk manager's** (:class:`perpbot_db.domain.risk.MarketView`):
  ``volatility`` is short-horizon realized volatility as a fraction.  Each
  symbol's calm level lies between 0.0135 and 0.017, under balanced mode's soft
  limit (0.02); a fast market multiplies it by ``fast_volatility_x`` (4 by
  default: issue 13's x3 on the diffusion plus the jumps a fast market brings),
  above balanced mode's hard limit (0.05) for every symbol, so a fast market
  puts its symbol on the blacklist.  ``latency_ms`` is lognormal around each
  venue's median (15-30 ms; calm stays well under balanced's 250 ms soft
  limit), with a tail.  ``funding_rate`` is the rate per the venue's own
  funding interval (ccxt's convention): an 8 h-equivalent rate around 0.01 %
  that drifts (mean-reverting) and flips sign, scaled by ``interval_h / 8``.
* **Cheap.**  Plain floats inside, one ``Decimal`` per field at the edge,
  prices quantized to the tick (bid and ask are whole ticks).  About 80 quotes
  per step at thousands of steps per second in one core.

Pure: the time comes in as ``now``, the randomness from the model's own seeded
``random.Random``; same seed and same sequence of ``now`` => identical quotes.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, NamedTuple, TypeVar

#: Seconds per hour; the volatility's horizon (a per-hour fraction).
HOUR_S: Final = 3600.0
#: The longest step a switch or a drift is integrated over at once (a gap in the
#: calls, e.g. after an outage, does not become one huge move).
MAX_STEP_S: Final = 3600.0
#: Quantization of the stored fields (numeric(12, 8) and numeric(12, 3) columns).
FUNDING_PLACES: Final = 8
VOLATILITY_PLACES: Final = 6
LATENCY_PLACES: Final = 1
#: A full turn (the Box-Muller angle).
TAU: Final = math.tau
#: Latencies (whole ms) up to this many get a shared ``Decimal`` each instead of a new one.
LATENCY_DECIMALS: Final = 4096
#: Each symbol keeps the ``Decimal`` prices it quoted (a whole number of ticks times the
#: tick: the same value and exponent every time) for reuse, up to this many at once.
PRICE_DECIMALS: Final = 4096
_VOLATILITY_SCALE: Final = 10**VOLATILITY_PLACES

T = TypeVar("T")

#: Start price, tick and calm volatility of the default symbols; a symbol not here
#: gets generic parameters derived from its name (:func:`symbol_spec`).
_KNOWN: Final = {
    "BTC": (97_000.0, "0.1"),
    "ETH": (3_100.0, "0.01"),
    "SOL": (160.0, "0.01"),
    "BNB": (620.0, None),
    "XRP": (2.2, None),
    "DOGE": (0.15, None),
    "ADA": (0.75, None),
    "AVAX": (35.0, None),
    "LINK": (18.0, None),
    "DOT": (7.0, None),
    "TRX": (0.25, None),
    "LTC": (95.0, None),
    "BCH": (450.0, None),
    "NEAR": (5.0, None),
    "APT": (9.0, None),
    "ARB": (0.8, None),
    "OP": (1.9, None),
    "SUI": (3.5, None),
    "TON": (5.5, None),
    "ATOM": (6.5, None),
}
_CALM_VOL: Final = {"BTC": 0.0135, "ETH": 0.014, "SOL": 0.016}
#: Calm volatility of the other symbols: within this range, by name.
GENERIC_VOL: Final = (0.0135, 0.017)


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One instrument: ccxt symbol, start price, tick size, calm volatility (per-hour
    fraction, the risk manager's unit) and its calm spread in ticks (one or two)."""

    symbol: str
    start_price: float
    tick: Decimal
    volatility: float

    def __post_init__(self) -> None:
        if not (self.start_price > 0 and math.isfinite(self.start_price)):
            raise ValueError(f"{self.symbol}: start_price must be positive")
        if not self.tick > 0:
            raise ValueError(f"{self.symbol}: tick must be positive")
        if not 0 < self.volatility < 10:
            raise ValueError(f"{self.symbol}: volatility must be a positive fraction")


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """One exchange: its funding interval (hours) and median API latency (ms)."""

    exchange: str
    funding_interval_h: int = 8
    latency_ms: float = 35.0

    def __post_init__(self) -> None:
        if not 1 <= self.funding_interval_h <= 24:
            raise ValueError(f"{self.exchange}: funding_interval_h must be 1 to 24")
        if not self.latency_ms > 0:
            raise ValueError(f"{self.exchange}: latency_ms must be positive")


@dataclass(frozen=True, slots=True)
class MarketParams:
    """The regime knobs (settings ``[feed]``); defaults follow issue 13."""

    fast_per_hour: float = 0.5
    fast_mean_s: float = 120.0
    fast_volatility_x: float = 4.0
    fast_spread_x: tuple[float, float] = (5.0, 20.0)
    fast_latency_x: tuple[float, float] = (3.0, 10.0)
    calm_gap_bps: tuple[float, float] = (0.0, 3.0)
    fast_gap_bps: tuple[float, float] = (10.0, 50.0)
    jumps_per_hour: float = 0.2
    fast_jumps_x: float = 10.0
    jump_bps: float = 30.0
    funding_mean_8h: float = 0.0001
    funding_sd_8h: float = 0.00015
    funding_reversion_h: float = 6.0
    latency_sigma: float = 0.3
    latency_tail_p: float = 0.002
    timeout_ms: float = 2000.0

    def __post_init__(self) -> None:
        for name in ("fast_spread_x", "fast_latency_x", "calm_gap_bps", "fast_gap_bps"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name}: needs 0 <= low <= high, got ({low}, {high})")
        if self.fast_mean_s <= 0 or self.funding_reversion_h <= 0:
            raise ValueError("fast_mean_s and funding_reversion_h must be positive")


class Quote(NamedTuple):
    """One ``market_snapshots`` row as the paper market quotes it; ``fast`` says the
    symbol is in a fast market (not stored: for tests, the demo and the simulation).

    A named tuple, not a frozen dataclass: it is built 80 times a step, and a
    tuple is built several times faster."""

    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    funding_rate: Decimal
    volatility: Decimal
    latency_ms: Decimal
    observed_at: datetime
    fast: bool


def _unit(name: str, salt: str) -> float:
    """A stable number in [0, 1) from a name (not ``hash``: that changes per process)."""
    return zlib.crc32(f"{salt}:{name}".encode()) / 2**32


def _generic_tick(price: float) -> Decimal:
    """A tick of 0.1-1 bps of the price: 10^(floor(log10(price)) - 4)."""
    return Decimal(1).scaleb(math.floor(math.log10(price)) - 4)


def symbol_spec(symbol: str) -> SymbolSpec:
    """The parameters of a ccxt symbol (``BASE/QUOTE[:SETTLE]``): known ones from the
    table, any other from its name (price 0.1 to 1000, a tick of 0.1-1 bps)."""
    base = symbol.split("/", 1)[0].upper()
    known = _KNOWN.get(base)
    if known is not None:
        price, tick = known
    else:
        price, tick = 10 ** (4 * _unit(base, "price") - 1), None
    low, high = GENERIC_VOL
    vol = _CALM_VOL.get(base, low + (high - low) * _unit(base, "vol"))
    return SymbolSpec(
        symbol=symbol,
        start_price=price,
        tick=Decimal(tick) if tick is not None else _generic_tick(price),
        volatility=vol,
    )


def default_symbols(n: int = 3) -> list[str]:
    """The first ``n`` default perpetuals (BTC, ETH, SOL, ...), then generic ``SYMk``s."""
    names = [f"{base}/USDT:USDT" for base in _KNOWN]
    names += [f"SYM{k}/USDT:USDT" for k in range(1, max(0, n - len(names)) + 1)]
    return names[:n]


def venue_spec(exchange: str, funding_interval_h: int = 8) -> VenueSpec:
    """A venue with a median latency of 15-30 ms, derived from its name."""
    return VenueSpec(exchange, funding_interval_h, 15.0 + 15.0 * _unit(exchange, "latency"))


@dataclass(slots=True)
class _SymbolState:
    spec: SymbolSpec
    tick: float
    log_mid: float
    fast: bool = False
    gap_bps: float = 0.0
    spread_x: float = 1.0
    latency_x: float = 1.0
    funding_8h: float = 0.0
    slow_due_s: float = 0.0  # time not yet applied to the slow state (funding, bases)
    positions: list[float] = field(default_factory=list)  # per venue, in [0, 1]
    funding_offsets: list[float] = field(default_factory=list)  # per venue, 8 h-equivalent
    funding: list[Decimal] = field(default_factory=list)  # per venue, as stored
    #: Per venue, what quoting it needs of the slow state: its place in the gap (the
    #: share of the gap above the lowest venue, less a half), exchange, median
    #: latency and stored funding rate.
    venue_rows: list[tuple[float, str, float, Decimal]] = field(default_factory=list)
    prices: dict[int, Decimal] = field(default_factory=dict)  # ticks -> ticks * tick


class _Rates(NamedTuple):
    """What a step of ``dt`` seconds means for every symbol: the switch and jump
    probabilities and the random walks' scales (the formulas of :meth:`PaperMarket._evolve`,
    each float computed exactly as there)."""

    dt: float
    to_calm: float
    to_fast: float
    root_h: float
    jump_calm: float
    jump_fast: float
    drift_calm: float
    drift_fast: float


#: The slow state (funding and the venues' places in the gap) moves in steps of
#: at least this many seconds: it changes over minutes and hours, and moving it
#: every second would cost most of a step.
SLOW_STEP_S: Final = 10.0


class PaperMarket:
    """The market of ``symbols`` on ``venues``: call :meth:`step` with a clock's ``now``.

    The first step quotes the start state; each later one moves the market by
    the time since the previous ``now`` (which may not go back).
    """

    def __init__(
        self,
        symbols: Sequence[SymbolSpec | str],
        venues: Sequence[VenueSpec | str],
        *,
        seed: int,
        params: MarketParams | None = None,
    ) -> None:
        if not symbols or not venues:
            raise ValueError("a paper market needs at least one symbol and one venue")
        self.params = params or MarketParams()
        self.venues = [v if isinstance(v, VenueSpec) else venue_spec(v) for v in venues]
        specs = [s if isinstance(s, SymbolSpec) else symbol_spec(s) for s in symbols]
        self.rng = random.Random(seed)  # noqa: S311 (a simulation, not cryptography)
        self._last: datetime | None = None
        self._funding_scale = [v.funding_interval_h / 8 for v in self.venues]
        self._states = [self._initial(spec) for spec in specs]
        self._rates: _Rates | None = None
        self._latencies = [
            Decimal(ms) for ms in range(min(LATENCY_DECIMALS, round(self.params.timeout_ms)) + 1)
        ]

    @property
    def symbols(self) -> list[str]:
        return [s.spec.symbol for s in self._states]

    def fast_symbols(self) -> list[str]:
        """The symbols in a fast market now."""
        return [s.spec.symbol for s in self._states if s.fast]

    def force_regime(self, symbol: str, *, fast: bool) -> None:
        """Put ``symbol`` into (or out of) its fast market now, as the regime switch would:
        the demo's hook to show the risk manager holding a symbol (it draws from the
        seeded generator, so a run that forces the same switches at the same steps is
        the same market).  A forced fast market calms down by itself like any other."""
        state = next((s for s in self._states if s.spec.symbol == symbol), None)
        if state is None:
            raise ValueError(f"{symbol!r} is not in this market ({', '.join(self.symbols)})")
        if state.fast == fast:
            return
        rng, p = self.rng, self.params
        state.fast = fast
        if fast:
            state.gap_bps = rng.uniform(*p.fast_gap_bps)
            state.spread_x = rng.uniform(*p.fast_spread_x)
            state.latency_x = rng.uniform(*p.fast_latency_x)
            state.log_mid += self._jump()
        else:
            state.gap_bps = rng.uniform(*p.calm_gap_bps)
            state.spread_x = state.latency_x = 1.0

    def _initial(self, spec: SymbolSpec) -> _SymbolState:
        rng, p = self.rng, self.params
        n = len(self.venues)
        state = _SymbolState(
            spec=spec,
            tick=float(spec.tick),
            log_mid=math.log(spec.start_price),
            gap_bps=rng.uniform(*p.calm_gap_bps),
            funding_8h=p.funding_mean_8h + p.funding_sd_8h * _normal(rng),
            positions=[rng.random() for _ in range(n)],
            funding_offsets=[p.funding_sd_8h / 4 * _normal(rng) for _ in range(n)],
        )
        self._price_funding(state)
        return state

    def step(self, now: datetime) -> list[Quote]:
        """Move the market to ``now`` and quote every venue and symbol (symbols in the
        given order, venues within each)."""
        return self.step_as(now, Quote)

    def step_as(self, now: datetime, make: Callable[..., T]) -> list[T]:
        """:meth:`step`, each quote built by ``make`` from a :class:`Quote`'s ten fields
        (positional, in order) instead of as a ``Quote``: a feed builds its rows
        directly, without a ``Quote`` per row in between."""
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        dt = 0.0
        if self._last is not None:
            dt = (now - self._last).total_seconds()
            if dt < 0:
                raise ValueError(f"the market never goes back ({self._last} -> {now})")
        self._last = now
        dt = min(dt, MAX_STEP_S)
        out: list[T] = []
        append = out.append
        if dt > 0:
            rates = self._rates_for(dt)
            for state in self._states:
                self._evolve(state, rates)
                self._quote(state, now, make, append)
        else:
            for state in self._states:
                self._quote(state, now, make, append)
        return out

    # -- the dynamics ---------------------------------------------------------------

    def _rates_for(self, dt: float) -> _Rates:
        """The step's probabilities and scales, computed once for every symbol (and
        kept while the steps are as long: a simulation's always are)."""
        rates = self._rates
        if rates is None or rates.dt != dt:
            p = self.params
            root_dt = math.sqrt(dt)
            calm_low, calm_high = p.calm_gap_bps
            fast_low, fast_high = p.fast_gap_bps
            rates = self._rates = _Rates(
                dt=dt,
                to_calm=-math.expm1(-dt / p.fast_mean_s),
                to_fast=-math.expm1(-p.fast_per_hour * dt / HOUR_S),
                root_h=math.sqrt(dt / HOUR_S),
                jump_calm=-math.expm1(-p.jumps_per_hour * dt / HOUR_S),
                jump_fast=-math.expm1(-p.jumps_per_hour * p.fast_jumps_x * dt / HOUR_S),
                drift_calm=(calm_high - calm_low) * 0.05 * root_dt,
                drift_fast=(fast_high - fast_low) * 0.05 * root_dt,
            )
        return rates

    def _evolve(self, s: _SymbolState, r: _Rates) -> None:
        # The arithmetic is the plain formulas' in the same order, so the floats (and
        # the draws, in number and order) are exactly theirs; see _normal.
        rng, p = self.rng, self.params
        random_, log, sqrt, cos = rng.random, math.log, math.sqrt, math.cos
        # The regime: a Poisson switch in continuous time.
        if s.fast:
            if random_() < r.to_calm:
                s.fast = False
                s.gap_bps = rng.uniform(*p.calm_gap_bps)
                s.spread_x = s.latency_x = 1.0
        elif random_() < r.to_fast:
            s.fast = True
            s.gap_bps = rng.uniform(*p.fast_gap_bps)
            s.spread_x = rng.uniform(*p.fast_spread_x)
            s.latency_x = rng.uniform(*p.fast_latency_x)
            s.log_mid += self._jump()
        fast = s.fast
        # The mid: a geometric random walk plus jumps.
        if fast:
            sigma = s.spec.volatility * p.fast_volatility_x * r.root_h
        else:
            sigma = s.spec.volatility * r.root_h
        normal = sqrt(-2.0 * log(1.0 - random_())) * cos(TAU * random_())
        s.log_mid += sigma * normal - sigma * sigma / 2
        if random_() < (r.jump_fast if fast else r.jump_calm):
            s.log_mid += self._jump()
        # The gap between venues drifts within its regime's range.
        low, high = p.fast_gap_bps if fast else p.calm_gap_bps
        normal = sqrt(-2.0 * log(1.0 - random_())) * cos(TAU * random_())
        s.gap_bps = _reflect(
            s.gap_bps + (r.drift_fast if fast else r.drift_calm) * normal, low, high
        )
        s.slow_due_s += r.dt
        if s.slow_due_s >= SLOW_STEP_S:
            self._evolve_slow(s, s.slow_due_s)
            s.slow_due_s = 0.0

    def _evolve_slow(self, s: _SymbolState, dt: float) -> None:
        """The venues' places within the gap wander; funding mean-reverts around its mean,
        so it drifts and now and then flips sign."""
        rng, p = self.rng, self.params
        step = 0.05 * math.sqrt(dt)
        s.positions = [_reflect(x + step * _normal(rng), 0.0, 1.0) for x in s.positions]
        theta = min(1.0, dt / (p.funding_reversion_h * HOUR_S))
        shock = math.sqrt(theta * (2 - theta))  # keeps the stationary sd at funding_sd_8h
        s.funding_8h += theta * (p.funding_mean_8h - s.funding_8h) + (
            p.funding_sd_8h * shock * _normal(rng)
        )
        s.funding_offsets = [
            (1 - theta) * o + p.funding_sd_8h / 4 * shock * _normal(rng) for o in s.funding_offsets
        ]
        self._price_funding(s)

    def _price_funding(self, s: _SymbolState) -> None:
        """The stored rates: per each venue's own interval, within +-50 %; and the venue
        rows the quotes read until the slow state moves again."""
        s.funding = [
            _fixed(max(-0.5, min(0.5, (s.funding_8h + o) * scale)), FUNDING_PLACES)
            for o, scale in zip(s.funding_offsets, self._funding_scale, strict=True)
        ]
        low = min(s.positions)
        width = max(s.positions) - low
        s.venue_rows = [
            (((x - low) / width if width > 1e-12 else 0.5) - 0.5, v.exchange, v.latency_ms, rate)
            for x, v, rate in zip(s.positions, self.venues, s.funding, strict=True)
        ]

    def _jump(self) -> float:
        """A log-return jump: exponential size around ``jump_bps``, either direction."""
        size = min(self.rng.expovariate(1.0) * self.params.jump_bps, 2000.0) / 10_000
        return size if self.rng.random() < 0.5 else -size

    def _quote(
        self, s: _SymbolState, now: datetime, make: Callable[..., T], append: Callable[[T], None]
    ) -> None:
        p = self.params
        random_, exp, log, sqrt, cos, floor = (
            self.rng.random,
            math.exp,
            math.log,
            math.sqrt,
            math.cos,
            math.floor,
        )
        spec, tick, dtick, fast = s.spec, s.tick, s.spec.tick, s.fast
        symbol = spec.symbol
        mid = exp(s.log_mid)
        vol_x = p.fast_volatility_x if fast else 1.0
        volatility = Decimal(
            round(spec.volatility * vol_x * (0.96 + 0.08 * random_()) * _VOLATILITY_SCALE)
        ).scaleb(-VOLATILITY_PLACES)  # _fixed, inlined
        tail_p = p.latency_tail_p * (5.0 if fast else 1.0)
        sigma, timeout, spread_x, latency_x = p.latency_sigma, p.timeout_ms, s.spread_x, s.latency_x
        latencies = self._latencies
        n_latencies = len(latencies)
        gap = s.gap_bps / 10_000
        prices = s.prices
        if len(prices) > PRICE_DECIMALS:
            prices.clear()
        price = prices.get
        for place, exchange, venue_latency, funding in s.venue_rows:
            venue_mid = mid * (1 + place * gap)
            spread = 2 if random_() < 0.3 else 1
            if spread_x > 1:
                spread = round(spread * spread_x)
            bid_ticks = floor(venue_mid / tick - spread / 2 + 0.5)
            if bid_ticks < 1:
                bid_ticks = 1
            bid = price(bid_ticks)
            if bid is None:
                bid = prices[bid_ticks] = bid_ticks * dtick
            ask_ticks = bid_ticks + spread
            ask = price(ask_ticks)
            if ask is None:
                ask = prices[ask_ticks] = ask_ticks * dtick
            at = floor(random_() * (spread + 1))
            if at == 0:
                last = bid
            elif at == spread:
                last = ask
            else:
                last_ticks = bid_ticks + at
                between = price(last_ticks)
                if between is None:
                    between = prices[last_ticks] = last_ticks * dtick
                last = between
            normal = sqrt(-2.0 * log(1.0 - random_())) * cos(TAU * random_())
            latency = venue_latency * latency_x * exp(sigma * normal)
            if random_() < tail_p:
                latency *= 2 + 2 * random_()
            if latency > timeout:
                latency = timeout
            # round(latency), half to even as round() does, at a fraction of its cost
            # (the fraction is exact: a float less its floor)
            ms = floor(latency)
            rest = latency - ms
            if rest > 0.5 or (rest == 0.5 and ms & 1):
                ms += 1
            append(
                make(
                    exchange,
                    symbol,
                    bid,
                    ask,
                    last,
                    funding,
                    volatility,
                    latencies[ms] if 0 <= ms < n_latencies else Decimal(ms),
                    now,
                    fast,
                )
            )


def _normal(rng: random.Random) -> float:
    """A standard normal draw (Box-Muller: a few times cheaper than ``Random.gauss``).

    The hot loops (``_evolve``, ``_quote``) inline this very expression: the same two
    draws in the same order, the same float."""
    return math.sqrt(-2.0 * math.log(1.0 - rng.random())) * math.cos(math.tau * rng.random())


def _reflect(x: float, low: float, high: float) -> float:
    """``x`` folded back into [low, high] (a random walk between walls)."""
    if high <= low:
        return low
    span = high - low
    y = (x - low) % (2 * span)
    return low + (y if y <= span else 2 * span - y)


def _fixed(x: float, places: int) -> Decimal:
    """``x`` as a Decimal with ``places`` decimals (exact, from the rounded integer)."""
    return Decimal(round(x * 10**places)).scaleb(-places)
