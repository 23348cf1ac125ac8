"""What every strategy shares: the market view, the venues, sizing, scoring, keys and bodies.

Design note
-----------
* **Inputs are plain values.**  A :class:`Quote` is one ``market_snapshots`` row
  with its funding rate *per the venue's own interval* (the convention ccxt and
  the feeds use); :class:`Venue` carries what a strategy needs of an exchange
  account (taker fee, funding interval, equity, the single-job cap, safe mode).
  Nothing here reads a clock, a database or a setting: ``now`` is passed in.
* **Costs are counted the way the risk manager counts them.**  Slippage at a
  job's size uses the same depth proxy as :mod:`perpbot_db.domain.risk`
  (``DEPTH_PER_SPREAD_USD`` of book per spread width), so a job a strategy
  thinks pays its costs is not one the tick finds too expensive.
* **Score components are filled, never inflated.**  :func:`scores` computes the
  five components a job may give (``risk_score``, ``latency_score``,
  ``vol_score``, ``funding_score``, ``liquidity_score``) from the same readings
  and on the same curves as the risk manager, measured against the balanced
  mode's hard limits; a strategy only adds what it knows better (the volume
  program's need for volume, the funding a pair earns per 8 h).  They lower
  nothing the risk manager checks: hard limits are still judged from the
  snapshots at admission.
* **Sizing keeps a job admissible.**  One job may hold at most
  ``single_job_cap x equity`` on each exchange it touches (DESIGN.md, Capital);
  :func:`size_cap_usd` stays a margin below that at the last price the tick
  values legs at.
* **Most symbols cost a few float operations.**  A pass skips nearly every symbol
  (its best edge does not pay the fees).  arb and funding_arb first bound every pair
  of a symbol at once from its price extremes (:class:`PriceExtremes`) and the
  venues' lowest costs (:class:`VenueFloor`), with the float error bound the pair
  ranking uses (``APPROX_REL``); a symbol the bound proves skipped is skipped with a
  reason worded from the exact best pair only when it is read (:class:`Skip`,
  :func:`later`), so the decisions and their words are the exact path's.
* **Idempotency keys are deterministic.**  A key names the strategy, the
  symbol, the venues and the window of time the opportunity belongs to
  (:func:`window_start`), so the producer re-run over the same window submits
  nothing new: ``perpbot submit`` returns the existing job for a repeated key.
* **What is opened is closed.**  A hedged opening (``metadata.phase = "open"``,
  with the time its hold ends as ``close_after``) that completed is read back as
  an :class:`OpenPair` until a close of it completed; :func:`close_body` builds
  the mirror job (sell where it bought, buy where it sold, same quantity) keyed
  ``<opening key>:close``, or ``:close:<n>`` after ``n`` closes failed or expired,
  so a close lost once is sent again by the next pass and never twice at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    Clamped,
    Context,
    Decimal,
    Inexact,
    Rounded,
    Subnormal,
    Underflow,
    getcontext,
    localcontext,
)
from functools import cache
from itertools import permutations
from typing import Any, Final, Generic, NamedTuple, TypeVar, overload

from perpbot_db.domain.lifecycle import RiskMode, Side, Strategy
from perpbot_db.domain.risk import (
    DEPTH_PER_SPREAD_USD,
    LIMITS,
    MIN_SLIPPAGE_SPREAD_BPS,
)

ZERO: Final = Decimal(0)
HUNDRED: Final = Decimal(100)
BPS: Final = Decimal(10_000)
#: Hours the risk manager's funding dimension is expressed in (bps per 8 h).
RISK_FUNDING_HOURS: Final = Decimal(8)
#: Sizing stays this far below the single-job cap: the tick values legs at the
#: last price of its own moment, which may have moved up a little since.
CAP_MARGIN: Final = Decimal("0.98")
CAP_MARGIN_F: Final = float(CAP_MARGIN)
#: Quantities are cut to this grid (the legs column holds 12 decimal places).
QUANTITY_PLACES: Final = 8
#: The skip of a strategy that found no quote to trade on.
NO_QUOTES = "no fresh, usable quote (none stored, or older than max_quote_age_s)"
#: An edge this large (100 %) is a data error, not an opportunity: skipped (and beyond
#: what a job's ``expected_edge_bps`` may hold).
MAX_EDGE_BPS: Final = Decimal(9_999)
#: A closing job's key is its opening's key with this suffix (and ``:<n>`` on a retry).
CLOSE_SUFFIX: Final = ":close"
#: The scale every score is measured against: the balanced mode's limits.
_REFERENCE = LIMITS[RiskMode.BALANCED]
#: Crossing cost that scores 50 on liquidity (the risk manager's constant).
LIQUIDITY_HALF_COST_BPS: Final = Decimal(5)
VOLUME_HALF_USD: Final = Decimal(10_000)

#: Pairs are ranked in floats first (a pass values hundreds of pairs and keeps one per
#: symbol): every pair whose float figure is within this share of the figures' magnitude
#: of the best one's is then valued exactly, as before, and the exact values decide.
#: Floats carry ~1e-16 relative error per operation and decimals ~1e-28, so no pair left
#: out could have been the exact best: the choice, ties included, is the exact one.
APPROX_REL: Final = 1e-9
#: Prices (and venue figures) outside this range are never ranked in floats.
_FLOAT_LOW: Final = 1e-100
_FLOAT_HIGH: Final = 1e100
_DEPTH_F: Final = float(DEPTH_PER_SPREAD_USD)
_MIN_SLIPPAGE_F: Final = float(MIN_SLIPPAGE_SPREAD_BPS)

_T = TypeVar("_T")


class Approx(NamedTuple):
    """A quote in floats: ``slip_per_usd`` is :func:`slippage_bps` per USD of notional,
    ``slip_scale`` the size of the figures behind it (for the error bound)."""

    bid: float
    ask: float
    mid: float
    slip_per_usd: float
    slip_scale: float


class VenueApprox(NamedTuple):
    """A venue in floats: taker fee (bps), funding interval (h), single-job cap (USD)."""

    fee_bps: float
    interval_h: float
    single_job_usd: float


def floats_rank_exactly() -> bool:
    """Whether the current decimal context is one the float ranking is exact under (the
    default one is): enough precision and exponent range, and no trap on rounding (a
    trap would raise on a pair the float ranking never values exactly)."""
    ctx = getcontext()
    return (
        ctx.prec >= 20
        and ctx.Emax >= 999
        and ctx.Emin <= -999
        and not any(ctx.traps[s] for s in (Inexact, Rounded, Subnormal, Underflow, Clamped))
    )


def float_sizes(
    venues: Mapping[str, Venue], notional: Decimal
) -> dict[str, tuple[float, float, float]]:
    """Each venue's (taker fee in bps, the size of a job of ``notional`` on it in USD
    within its single-job cap, funding interval in hours) in floats, to rank pairs; a
    venue whose figures floats cannot hold is left out (its pairs are valued exactly)."""
    out = {}
    wanted = float(notional)
    for name, v in venues.items():
        a = v.approx
        if a is not None:
            out[name] = (a.fee_bps, min(wanted, a.single_job_usd * CAP_MARGIN_F), a.interval_h)
    return out


class FloatBook(NamedTuple):
    """A symbol's quotes in floats with their venues' fees and intervals, and the one
    size every pair of them trades (:func:`float_book`)."""

    approx: list[Approx]
    fees: list[float]
    intervals: list[float]
    size: float


def float_book(
    quotes: Iterable[Quote], sizes: Mapping[str, tuple[float, float, float]]
) -> FloatBook | None:
    """``quotes`` in floats (:class:`FloatBook`); None when a figure is out of the float
    range or the venues' sizes differ (a pair's size would then depend on the pair)."""
    approx: list[Approx] = []
    fees: list[float] = []
    intervals: list[float] = []
    size = 0.0
    for q in quotes:
        a, v = q.approx, sizes.get(q.exchange)
        if a is None or v is None or (approx and v[1] != size):
            return None
        size = v[1]
        approx.append(a)
        fees.append(v[0])
        intervals.append(v[2])
    return FloatBook(approx, fees, intervals, size)


class PriceExtremes(NamedTuple):
    """The extremes of a symbol's prices in floats (every venue's: :meth:`Market.extremes`),
    which bound every pair of its quotes at once.  A screen: a symbol none of whose pairs
    can pay is skipped without ranking them.  Any subset of the quotes (the venues a
    strategy trades on) has its extremes inside these, so the bounds hold for it too.

    Floats hold a decimal correctly rounded (within 2**-53 of it) and keep its order, so
    each figure is the extreme of the floats of the quotes' prices."""

    top_bid: float
    low_bid: float
    low_ask: float
    top_ask: float

    @property
    def gap(self) -> float:
        """No pair's gap (the sell or short venue's bid less the buy or long venue's ask,
        in bps of the pair's mid) is above it but for float error: the highest bid less
        the lowest ask, divided by the lowest bid when that is positive and by the highest
        ask when not (every mid, and so the mid of a pair, lies between them)."""
        cross = self.top_bid - self.low_ask
        return cross * 10_000 / (self.low_bid if cross > 0 else self.top_ask)

    @property
    def scale(self) -> float:
        """The magnitude of the price figures in bps (a gap's float error is well within
        ``APPROX_REL`` of it)."""
        return (self.top_bid + self.top_ask) / self.low_bid * 10_000


def price_extremes(quotes: Collection[Quote]) -> PriceExtremes | None:
    """:class:`PriceExtremes` of ``quotes`` (at least one, usable: ``0 < bid <= ask``);
    None when a price is out of the float range.  The decimals are compared, and only the
    extremes turned into floats."""
    bids = [q.bid for q in quotes]
    asks = [q.ask for q in quotes]
    low_bid, top_ask = float(min(bids)), float(max(asks))
    if not (low_bid > _FLOAT_LOW and top_ask < _FLOAT_HIGH):
        return None
    return PriceExtremes(float(max(bids)), low_bid, float(min(asks)), top_ask)


class VenueFloor(NamedTuple):
    """What every pair's costs on a set of venues are at least, in floats: the lowest
    taker fee (bps), and the least slippage a leg pays (bps: the depth proxy's floor,
    ``MIN_SLIPPAGE_SPREAD_BPS``, at the smallest size a pair trades, that of its smaller
    venue: :func:`float_sizes`); and the largest fee and floor (to bound float error)."""

    fee: float
    slip: float
    fee_scale: float
    slip_scale: float


def venue_floor(
    venues: Mapping[str, Venue], sizes: Mapping[str, tuple[float, float, float]]
) -> VenueFloor | None:
    """:class:`VenueFloor` of ``venues`` (``sizes``: their figures, :func:`float_sizes`);
    None without a venue, or when one's figures are out of the float range (its fee
    could be the lowest)."""
    if not venues or len(sizes) != len(venues):
        return None
    fees = [v[0] for v in sizes.values()]
    amounts = [v[1] for v in sizes.values()]
    per_usd = _MIN_SLIPPAGE_F / _DEPTH_F
    return VenueFloor(
        min(fees), per_usd * min(amounts), max(map(abs, fees)), per_usd * max(amounts)
    )


@cache
def ordered_pairs(n: int) -> list[tuple[int, int]]:
    """``permutations(range(n), 2)`` as a list, made once per ``n``."""
    return list(permutations(range(n), 2))


def _in_range(x: float) -> bool:
    return _FLOAT_LOW < abs(x) < _FLOAT_HIGH or x == 0


class once(Generic[_T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes one per first
    read): the value is computed on the first read and stored in the instance's
    ``__dict__``, where later reads find it without calling anything.  For the
    per-pass objects a producers' pass reads hundreds of times (quotes, venues)."""

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> once[_T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> once[_T] | _T:
        if instance is None:
            return self
        value = self.compute(instance)
        instance.__dict__[self.name] = value
        return value


@dataclass(frozen=True)
class Quote:
    """The latest snapshot of one exchange and symbol.

    ``funding_rate`` is per the venue's funding interval (positive: longs pay
    shorts); ``volatility`` a fraction; ``latency_ms`` the API's recent latency.
    """

    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    funding_rate: Decimal | None
    volatility: Decimal | None
    latency_ms: Decimal | None
    observed_at: datetime

    @classmethod
    def of(
        cls,
        exchange: str,
        symbol: str,
        bid: Decimal,
        ask: Decimal,
        last: Decimal,
        funding_rate: Decimal | None,
        volatility: Decimal | None,
        latency_ms: Decimal | None,
        observed_at: datetime,
    ) -> Quote:
        """The quote of a snapshot's fields, positionally (the producers' conversion: a
        pass converts every snapshot, and a frozen dataclass takes its fields by position
        at two thirds of the cost by keyword)."""
        return cls(
            exchange, symbol, bid, ask, last, funding_rate, volatility, latency_ms, observed_at
        )

    @once
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2

    @once
    def spread_bps(self) -> Decimal:
        return (self.ask - self.bid) / self.mid * BPS

    @once
    def approx(self) -> Approx | None:
        """The quote in floats, to rank pairs cheaply (:class:`Approx`); None when a
        price is outside the range where floats stay within ``APPROX_REL`` of the
        exact figures (the strategies then compute every pair exactly)."""
        bid, ask = float(self.bid), float(self.ask)
        if not (_FLOAT_LOW < bid <= ask < _FLOAT_HIGH):
            return None
        mid = (bid + ask) / 2
        width = (ask - bid) / mid * 10_000
        scale = (ask + bid) / mid * 10_000
        return Approx(
            bid,
            ask,
            mid,
            (width if width > _MIN_SLIPPAGE_F else _MIN_SLIPPAGE_F) / _DEPTH_F,
            (scale if scale > _MIN_SLIPPAGE_F else _MIN_SLIPPAGE_F) / _DEPTH_F,
        )

    def usable(self) -> bool:
        """A two-sided, uncrossed, positive quote with the fields scoring needs."""
        return (
            self.bid.is_finite()
            and self.ask.is_finite()
            and self.last.is_finite()
            and ZERO < self.bid <= self.ask
            and self.last > 0
            and self.volatility is not None
            and self.latency_ms is not None
        )


@dataclass(frozen=True, kw_only=True)
class Venue:
    """What a strategy needs of one exchange account."""

    name: str
    taker_fee_bps: Decimal
    funding_interval_h: Decimal = Decimal(8)
    equity_usd: Decimal
    single_job_cap: Decimal = Decimal("0.10")
    safe_mode: bool = False

    @once
    def single_job_usd(self) -> Decimal:
        return max(ZERO, self.equity_usd * self.single_job_cap)

    @once
    def approx(self) -> VenueApprox | None:
        """The venue in floats (:class:`VenueApprox`); None if a figure is out of range."""
        fee, interval = float(self.taker_fee_bps), float(self.funding_interval_h)
        single = float(self.single_job_usd)
        if not (_in_range(fee) and _in_range(single) and _FLOAT_LOW < interval < _FLOAT_HIGH):
            return None
        return VenueApprox(fee, interval, single)

    def funding_per_day(self, rate: Decimal) -> Decimal:
        """A rate per this venue's interval as a rate per day (Hummingbot normalises the
        same way: rate / interval_seconds x 86,400)."""
        return rate * Decimal(24) / self.funding_interval_h


@dataclass(frozen=True)
class Market:
    """Fresh, usable quotes by (exchange, symbol); what every strategy reads."""

    quotes: Mapping[tuple[str, str], Quote]

    @classmethod
    def of(cls, quotes: Iterable[Quote], now: datetime, max_age_s: float) -> Market:
        """Keep the quotes observed within ``max_age_s`` of ``now`` that are usable
        (a stale quote would only be held by the tick for ``market_data_stale``)."""
        oldest = now - timedelta(seconds=max_age_s)
        newest = now + timedelta(seconds=max_age_s)
        fresh = {
            (q.exchange, q.symbol): q
            for q in quotes
            if q.usable() and oldest <= q.observed_at <= newest
        }
        return cls(fresh)

    @once
    def _by_symbol(self) -> Mapping[str, tuple[Quote, ...]]:
        """Each symbol's quotes in exchange order, grouped once per market (a pass asks
        for them per strategy and symbol)."""
        grouped: dict[str, list[Quote]] = {}
        for (_, symbol), q in sorted(self.quotes.items()):
            grouped.setdefault(symbol, []).append(q)
        return {symbol: tuple(qs) for symbol, qs in grouped.items()}

    def symbols(self) -> list[str]:
        return sorted(self._by_symbol)

    @once
    def extremes(self) -> Mapping[str, PriceExtremes | None]:
        """Each symbol's :class:`PriceExtremes` over every venue quoting it, once per
        market (arb and funding_arb screen every symbol with them)."""
        return {symbol: price_extremes(qs) for symbol, qs in self._by_symbol.items()}

    def quoted_on(self, symbol: str, exchanges: Collection[str]) -> int:
        """How many of ``exchanges`` quote ``symbol``."""
        return len([q for q in self._by_symbol.get(symbol, ()) if q.exchange in exchanges])

    def venues_quoting(
        self, symbol: str, venues: Mapping[str, Venue], *, safe_mode_ok: bool = False
    ) -> list[Quote]:
        """The quotes of ``symbol`` on the known venues, by name; venues in safe mode only
        with ``safe_mode_ok`` (they admit risk-reducing jobs alone)."""
        return [
            q
            for q in self._by_symbol.get(symbol, ())
            if q.exchange in venues and (safe_mode_ok or not venues[q.exchange].safe_mode)
        ]


class Skip:
    """Why a strategy did not emit a job for a symbol (or at all): for the report.

    ``reason`` is given as the text, or as a function that says it (:func:`later`): a
    pass skips most symbols and the report rarely reads why, so a reason that takes the
    exact valuation of a symbol's pairs to word is worded on its first read, then kept."""

    def __init__(self, strategy: Strategy, symbol: str, reason: str | Callable[[], str]) -> None:
        self.strategy = strategy
        self.symbol = symbol
        self._reason = reason

    @property
    def reason(self) -> str:
        reason = self._reason
        if not isinstance(reason, str):
            reason = self._reason = reason()
        return reason

    def _fields(self) -> tuple[Strategy, str, str]:
        return (self.strategy, self.symbol, self.reason)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Skip):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Skip(strategy={self.strategy!r}, symbol={self.symbol!r}, reason={self.reason!r})"


def later(word: Callable[[], str], context: Context) -> Callable[[], str]:
    """``word`` to be called on a skip's first read, in ``context`` (a copy of the pass's
    decimal context: the reason is then worded with the precision and rounding the pass
    decided with, whatever thread reads it and whatever that thread's context is)."""

    def worded() -> str:
        with localcontext(context):
            return word()

    return worded


@dataclass
class Output:
    """What one strategy decided in one pass: the job bodies and the skips."""

    strategy: Strategy
    bodies: list[dict[str, Any]] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)

    def skip(self, symbol: str, reason: str | Callable[[], str]) -> None:
        """Skip ``symbol`` for ``reason``: the text, or a function that words it on the
        skip's first read (:func:`later`)."""
        self.skips.append(Skip(self.strategy, symbol, reason))

    def skip_pairs(self) -> Sequence[tuple[str, str]]:
        """The skips as (symbol, reason), each reason worded when it is read."""
        return SkipPairs(self.skips)


class SkipPairs(Sequence[tuple[str, str]]):
    """Skips seen as (symbol, reason) pairs, without wording a reason before it is read
    (the producers' report holds them; most passes are never shown)."""

    def __init__(self, skips: Sequence[Skip]) -> None:
        self._skips = skips

    def __len__(self) -> int:
        return len(self._skips)

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        if isinstance(index, slice):
            return SkipPairs(self._skips[index])
        skip = self._skips[index]
        return (skip.symbol, skip.reason)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass(frozen=True)
class Entry:
    """What an opening cost, as its legs booked it: the average fill prices of its long
    (bought) and short (sold) legs, the fees of every leg, when it completed, and the
    daily funding spread it was opened on (funding_arb's metadata; None for others)."""

    long_price: Decimal
    short_price: Decimal
    fees_usd: Decimal
    opened_at: datetime
    daily_spread_bps: Decimal | None = None


@dataclass(frozen=True)
class OpenPair:
    """A completed opening not closed yet: long ``quantity`` on one venue, short on another.

    ``failed_closes``: closes of it that failed, expired or were cancelled or rejected
    (the next close's key counts them); ``entry``: its fill prices and fees (None when
    the legs booked no price), for an exit on the position's PnL (funding_arb's
    take-profit)."""

    key: str
    symbol: str
    long_exchange: str
    short_exchange: str
    quantity: Decimal
    close_after: datetime
    failed_closes: int = 0
    strategy: Strategy = Strategy.VOLUME
    entry: Entry | None = None

    @property
    def close_key(self) -> str:
        """``<opening key>:close``, then ``:close:<n>`` after ``n`` lost closes: the same
        key for every pass until that close ends, a new one once it failed."""
        key = f"{self.key}{CLOSE_SUFFIX}"
        return key if self.failed_closes == 0 else f"{key}:{self.failed_closes}"


# ---------------------------------------------------------------------------
# Costs and sizing


def slippage_bps(notional_usd: Decimal, quote: Quote) -> Decimal:
    """Slippage of a market order of ``notional_usd`` beyond the touch, in bps: the risk
    manager's depth proxy (``DEPTH_PER_SPREAD_USD`` of book per spread width)."""
    width = max(quote.spread_bps, MIN_SLIPPAGE_SPREAD_BPS)
    return width * notional_usd / DEPTH_PER_SPREAD_USD


def crossing_cost_bps(notional_usd: Decimal, quote: Quote) -> Decimal:
    """Half the spread plus the size's slippage: what the risk manager calls crossing cost."""
    return quote.spread_bps / 2 + slippage_bps(notional_usd, quote)


def size_cap_usd(*venues: Venue) -> Decimal:
    """The most one job may trade per leg and stay within every venue's single-job cap."""
    if len(venues) == 2:  # a pair's (most calls): the same figure, without a generator
        first, second = venues[0].single_job_usd, venues[1].single_job_usd
        return (second if second < first else first) * CAP_MARGIN
    return min(v.single_job_usd for v in venues) * CAP_MARGIN


def quantity_for(notional_usd: Decimal, price: Decimal) -> Decimal:
    """Base quantity of ``notional_usd`` at ``price``, cut down to the quantity grid."""
    return (notional_usd / price).quantize(Decimal(1).scaleb(-QUANTITY_PLACES), ROUND_DOWN)


def window_start(now: datetime, window_s: float) -> datetime:
    """The start of the ``window_s``-long window ``now`` falls in (UTC, aligned on the epoch)."""
    epoch = now.astimezone(UTC).timestamp()
    start = epoch - (epoch % window_s)
    return datetime.fromtimestamp(start, UTC)


def key_time(at: datetime) -> str:
    """A window start as it appears in an idempotency key (UTC, to the second)."""
    return at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


# ---------------------------------------------------------------------------
# Scores


def _clamp(value: Decimal) -> Decimal:
    return min(HUNDRED, max(ZERO, value))


def _q(value: Decimal) -> Decimal:
    return _clamp(value).quantize(Decimal("0.001"), ROUND_HALF_EVEN)


def saturating(value: Decimal, half: Decimal) -> Decimal:
    """``100 - 100 x half / (value + half)`` for a positive value, else 0 (the risk
    manager's curve: ``half`` scores 50, three times it 75)."""
    if value <= 0:
        return ZERO
    return HUNDRED - HUNDRED * half / (value + half)


def scores(
    quotes: Iterable[Quote],
    *,
    notional_usd: Decimal,
    equity_usd: Decimal,
    cost_bps: Decimal,
    funding_received_bps_8h: Decimal,
    volume_usd: Decimal,
    vol_score: Decimal | None = None,
) -> dict[str, Decimal]:
    """The five job-given components (0-100), on the risk manager's curves.

    * ``risk_score`` (100 = riskiest): the riskier of worst volatility and leverage
      (``notional / smallest equity``) as a share of the balanced hard limits;
    * ``latency_score``: ``100 x (1 - worst latency / hard limit)``;
    * ``vol_score``: given (the volume program's need), else the volume curve;
    * ``funding_score``: 50 when neutral, 100 when the legs receive the hard limit
      per 8 h, 0 when they pay it;
    * ``liquidity_score``: ``100 x 5 / (crossing cost + 5)``.
    """
    listed = list(quotes)
    worst_vol = max((q.volatility or ZERO) for q in listed)
    worst_latency = max((q.latency_ms or ZERO) for q in listed)
    leverage = notional_usd / equity_usd if equity_usd > 0 else Decimal("Infinity")
    risk = HUNDRED * max(
        worst_vol / _REFERENCE.volatility_hard, leverage / _REFERENCE.leverage_hard
    )
    latency = HUNDRED - HUNDRED * worst_latency / _REFERENCE.latency_hard_ms
    funding = 50 + 50 * funding_received_bps_8h / _REFERENCE.funding_hard_bps
    liquidity = HUNDRED * LIQUIDITY_HALF_COST_BPS / (max(cost_bps, ZERO) + LIQUIDITY_HALF_COST_BPS)
    volume = saturating(volume_usd, VOLUME_HALF_USD) if vol_score is None else vol_score
    return {
        "risk_score": _q(risk),
        "latency_score": _q(latency),
        "vol_score": _q(volume),
        "funding_score": _q(funding),
        "liquidity_score": _q(liquidity),
    }


# ---------------------------------------------------------------------------
# Bodies


def _num(value: Decimal, places: int) -> str:
    """A Decimal as a plain JSON-safe string at ``places`` decimals (no exponent)."""
    return format(value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN), "f")


def pair_body(
    *,
    strategy: Strategy,
    symbol: str,
    legs: Iterable[tuple[str, Side, Decimal]],
    notional_usd: Decimal,
    expected_edge_bps: Decimal,
    expected_pnl_usd: Decimal,
    expected_volume_usd: Decimal,
    idempotency_key: str,
    deadline: datetime,
    components: Mapping[str, Decimal],
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """A job body in the JSON form ``perpbot submit`` takes (numbers as strings: the
    parser reads them as exact decimals)."""
    return {
        "strategy": strategy.value,
        "symbol": symbol,
        "notional_usd": _num(notional_usd, 2),
        "expected_edge_bps": _num(expected_edge_bps, 4),
        "expected_pnl_usd": _num(expected_pnl_usd, 4),
        "expected_volume_usd": _num(expected_volume_usd, 2),
        "legs": [
            {"exchange": exchange, "side": side.value, "quantity": format(quantity, "f")}
            for exchange, side, quantity in legs
        ],
        "idempotency_key": idempotency_key,
        "deadline": deadline.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        **{name: format(value, "f") for name, value in components.items()},
        "metadata": dict(metadata),
    }


def short_symbol(symbol: str) -> str:
    """``BTC/USDT:USDT`` -> ``BTC-USDT`` for keys a person reads."""
    return symbol.split(":", 1)[0].replace("/", "-")


def close_body(
    pair: OpenPair,
    market: Market,
    venues: Mapping[str, Venue],
    *,
    now: datetime,
    deadline_s: float,
    vol_score: Decimal | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any] | str:
    """The job that flattens ``pair`` (sell on its long venue, buy on its short one, the
    same quantity: the mirror of a valid pair, never both sides on one venue), scored
    like an opening; or why it cannot be built now (the next pass tries again)."""
    sell = market.quotes.get((pair.long_exchange, pair.symbol))
    buy = market.quotes.get((pair.short_exchange, pair.symbol))
    if sell is None or buy is None:
        return "no fresh quote on both venues to close it"
    if pair.long_exchange not in venues or pair.short_exchange not in venues:
        return "a venue of the pair is no longer configured"
    sell_v, buy_v = venues[pair.long_exchange], venues[pair.short_exchange]
    price = max(sell.last, buy.last, buy.ask)
    notional = pair.quantity * price
    gap = (sell.bid - buy.ask) / ((sell.mid + buy.mid) / 2) * BPS
    edge = max(-MAX_EDGE_BPS, min(MAX_EDGE_BPS, gap - sell_v.taker_fee_bps - buy_v.taker_fee_bps))
    return pair_body(
        strategy=pair.strategy,
        symbol=pair.symbol,
        legs=[
            (pair.long_exchange, Side.SELL, pair.quantity),
            (pair.short_exchange, Side.BUY, pair.quantity),
        ],
        notional_usd=notional,
        expected_edge_bps=edge,
        expected_pnl_usd=edge * notional / BPS,
        expected_volume_usd=2 * notional,
        idempotency_key=pair.close_key,
        deadline=now + timedelta(seconds=deadline_s),
        components=scores(
            (sell, buy),
            notional_usd=notional,
            equity_usd=min(sell_v.equity_usd, buy_v.equity_usd),
            cost_bps=crossing_cost_bps(notional, sell) + crossing_cost_bps(notional, buy),
            funding_received_bps_8h=ZERO,
            volume_usd=2 * notional,
            vol_score=vol_score,
        ),
        metadata=dict(
            metadata or {"source": pair.strategy.value, "phase": "close", "opens": pair.key}
        ),
    )
