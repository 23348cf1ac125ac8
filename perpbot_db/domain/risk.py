"""The risk manager: should this hedge job trade now, and how good is it?

Design note
-----------
* **Pure.**  :func:`assess` is a function of plain frozen values (the job, the
  latest market snapshots, exchange equity, the risk mode and the clock passed
  in as ``now``).  It reads no database, no settings and no clock, so the
  scheduler tick, the web console and the tests get the same answer from the
  same inputs, and hypothesis can prove its properties in microseconds.  The
  repository layer fetches ``market_snapshots`` and ``exchanges`` rows, builds
  :class:`MarketView` / :class:`JobView` and stores the :class:`Assessment`.
* **Ordered checks that fail closed** (NautilusTrader's risk engine): the
  market-data gate first (a missing snapshot, an unusable quote, a stale
  snapshot, a missing field that a dimension needs), then the five dimensions
  in a fixed order — spread/slippage, funding, latency, volatility, leverage.
  The first hard breach is the decision.  Nothing passes because data is
  missing: an absent latency, volatility or funding rate is
  ``MARKET_DATA_MISSING``, not a free pass; unknown equity is a leverage
  breach; a job with no legs has no market data and is denied the same way.
  Components that cannot be measured score their worst value.
* **Stable codes plus context.**  Every outcome is a
  :class:`~perpbot_db.domain.decisions.Decision`: an enum code that SQL can group by,
  and ``key=value`` context (``exchange``, ``symbol``, ``value``, ``limit`` and
  a few more) as JSON-safe strings, so a denial says why in numbers.
* **Soft limits lower the score; hard limits are never passed.**  Whether a
  hard limit only holds the job (the market may lift it) or rejects it (the job
  is too large for the account) is :mod:`perpbot_db.domain.decisions`' business
  (``Decision.hard``, ``Decision.rejects``).  A dimension beyond its
  soft threshold costs the mode's ``soft_penalty`` points on the final score
  (a hard breach is also beyond the soft threshold and pays the penalty too,
  which keeps the score monotone).  Limits are inclusive: a value equal to
  its limit passes.  Job-given score components change the score only; they
  never pass a hard limit.

Scores
------
Every component is 0-100 and higher is better, except ``risk``, which keeps
the meaning of ``hedge_jobs.risk_score``: 100 = riskiest.  The weighted sum
uses ``safety = 100 - risk`` under the ``risk`` weight.  A component the job
gives (``risk_score``, ``latency_score``, ``vol_score`` (volume),
``funding_score``, ``liquidity_score``) wins over the computed one; see
:class:`ScoreComponents` for how each is computed otherwise.

``final_score = clamp(sum(weight * component) - soft_penalty * soft_breaches,
0, 100)``, quantized to 0.001.  It is admitted when no hard limit is breached
and it reaches the mode's ``min_score``.  ``hedge_rebalance`` jobs reduce
exposure rather than earn an edge: they are judged on gross crossing cost
(not cost versus edge) and are not held back by ``min_score``; every hard
limit still applies to them.  So do a producer's closes of the hedged pairs it
opened (:attr:`JobView.closes_position`): a close only flattens what is held,
its price edge is negative by nature (it pays the spread and the fees the
opening already counted), and a close held back would leave the position open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from functools import cached_property
from operator import itemgetter
from types import MappingProxyType
from typing import Final

from perpbot_db.domain.decisions import Decision, DecisionCode, deny
from perpbot_db.domain.lifecycle import RiskMode, Side, Strategy

ZERO: Final = Decimal(0)
HUNDRED: Final = Decimal(100)
BPS: Final = Decimal(10_000)
INF: Final = Decimal("Infinity")
SCORE_QUANTUM: Final = Decimal("0.001")

#: Depth proxy for slippage: the book is assumed to hold this much USD per
#: spread width, so a leg of ``n`` USD walks ``n / DEPTH_PER_SPREAD_USD``
#: spread widths beyond the touch.  Snapshots carry no depth; the spread is
#: the best liquidity signal they have (wide books are thin books).
DEPTH_PER_SPREAD_USD: Final = Decimal(100_000)
#: Even a locked book (bid == ask) has finite depth: slippage uses at least
#: this spread.
MIN_SLIPPAGE_SPREAD_BPS: Final = Decimal("0.5")

#: Half-saturation points of the job's own components: the value that scores
#: 50 (``100 - 100 * half / (x + half)``; 3x the half point scores 75).
EDGE_HALF_BPS: Final = Decimal(10)
PNL_HALF_USD: Final = Decimal(10)
VOLUME_HALF_USD: Final = Decimal(10_000)
#: Crossing cost (spread + slippage, bps summed over legs) that scores 50 on liquidity.
LIQUIDITY_HALF_COST_BPS: Final = Decimal(5)


class Dimension(StrEnum):
    """The five risk dimensions, in the order they are checked."""

    SPREAD = "spread"
    FUNDING = "funding"
    LATENCY = "latency"
    VOLATILITY = "volatility"
    LEVERAGE = "leverage"


HARD_CODE: Final[Mapping[Dimension, DecisionCode]] = MappingProxyType(
    {
        Dimension.SPREAD: DecisionCode.SPREAD_HARD_LIMIT,
        Dimension.FUNDING: DecisionCode.FUNDING_HARD_LIMIT,
        Dimension.LATENCY: DecisionCode.LATENCY_HARD_LIMIT,
        Dimension.VOLATILITY: DecisionCode.VOLATILITY_HARD_LIMIT,
        Dimension.LEVERAGE: DecisionCode.LEVERAGE_HARD_LIMIT,
    }
)

#: Code of a soft-limit note (never holds a job: it lowers the score).
SOFT_CODE: Final[Mapping[Dimension, DecisionCode]] = MappingProxyType(
    {
        Dimension.SPREAD: DecisionCode.SPREAD_SOFT_LIMIT,
        Dimension.FUNDING: DecisionCode.FUNDING_SOFT_LIMIT,
        Dimension.LATENCY: DecisionCode.LATENCY_SOFT_LIMIT,
        Dimension.VOLATILITY: DecisionCode.VOLATILITY_SOFT_LIMIT,
        Dimension.LEVERAGE: DecisionCode.LEVERAGE_SOFT_LIMIT,
    }
)


# ---------------------------------------------------------------------------
# Inputs


#: The funding interval the risk limits are written for (hours).
FUNDING_BASIS_H: Final = 8


def funding_per_8h(rate: Decimal | None, interval_h: Decimal | int) -> Decimal | None:
    """A venue's funding rate per its own interval (ccxt's convention, what a feed
    stores) as the rate per 8 h the funding limits are written in: an hourly venue's
    0.0000125 is 0.0001 per 8 h."""
    if rate is None:
        return None
    return rate * FUNDING_BASIS_H / Decimal(interval_h)


@dataclass(frozen=True, kw_only=True)
class MarketView:
    """The latest ``market_snapshots`` row of one exchange and symbol.

    ``funding_rate`` is per 8 h interval, positive = longs pay shorts;
    ``volatility`` is short-horizon realized volatility as a fraction
    (0.02 = 2 %); ``latency_ms`` is the exchange API's recent latency.
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

    # What every job on this snapshot needs of it, worked out once per snapshot.

    @cached_property
    def quote_problem(self) -> str | None:
        """Why the quote cannot be used, or None."""
        return _usable_quote(self)

    @cached_property
    def field_problem(self) -> tuple[str, str] | None:
        """The first field a dimension needs that is absent or unusable: (field, problem)."""
        return _missing_field(self)

    @cached_property
    def spread_bps(self) -> Decimal:
        """The quoted spread in bps of the mid (only for a usable quote)."""
        mid = (self.bid + self.ask) / 2
        return (self.ask - self.bid) / mid * BPS


@dataclass(frozen=True)
class LegView:
    exchange: str
    side: Side
    quantity: Decimal


@dataclass(frozen=True, kw_only=True)
class JobView:
    """What the risk manager needs of a hedge job (a ``hedge_jobs`` row and its legs).

    The optional scores are the job's own components, 0-100: ``risk_score``
    100 = riskiest; the others 100 = best.  ``vol_score`` is the *volume*
    component (DESIGN.md's given scores map one to one onto the components
    risk, latency, volume, funding, liquidity).
    """

    id: int
    strategy: Strategy
    symbol: str
    notional_usd: Decimal
    expected_edge_bps: Decimal
    expected_pnl_usd: Decimal
    expected_volume_usd: Decimal | None = None
    legs: tuple[LegView, ...]
    risk_score: Decimal | None = None
    latency_score: Decimal | None = None
    vol_score: Decimal | None = None
    funding_score: Decimal | None = None
    liquidity_score: Decimal | None = None
    #: a producer's close of a hedged pair it opened: judged like a rebalance
    closes_position: bool = False

    @cached_property
    def reduces_exposure(self) -> bool:
        """A rebalance or a close: judged on gross cost, not held back by min_score."""
        return self.strategy is Strategy.HEDGE_REBALANCE or self.closes_position

    @cached_property
    def exchanges(self) -> tuple[str, ...]:
        """The exchanges the legs trade on, each once, in name order."""
        return tuple(sorted({leg.exchange for leg in self.legs}))

    @property
    def volume_usd(self) -> Decimal:
        """Expected traded volume: as given, else the notional traded on every leg."""
        if self.expected_volume_usd is not None:
            return self.expected_volume_usd
        if not self.legs:
            return ZERO
        if self.notional_usd.is_nan():  # also a signalling NaN: no volume to count on
            return Decimal("NaN")
        return self.notional_usd * len(self.legs)


# ---------------------------------------------------------------------------
# Limits and weights


def _fmt(value: Decimal, places: int = 6) -> str:
    """JSON-safe text of a number for decision context, without trailing zeros."""
    if not value.is_finite():
        return str(value)
    text = format(value, f".{places}f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


#: Score components, in the order of the weight tables.
COMPONENTS: Final = ("edge", "pnl", "risk", "latency", "volume", "funding", "liquidity")


def _weights(*values: str) -> Mapping[str, Decimal]:
    return MappingProxyType(dict(zip(COMPONENTS, map(Decimal, values), strict=True)))


#: Weight of each component per mode (each table sums to exactly 1).  The
#: ``risk`` weight multiplies safety = 100 - risk.
#:
#: ==============  ====  ===  ====  =======  ======  =======  =========
#: mode            edge  pnl  risk  latency  volume  funding  liquidity
#: ==============  ====  ===  ====  =======  ======  =======  =========
#: conservative    15    10   40    10       5       10       10
#: balanced        25    20   20    10       10      10       5
#: aggressive      40    25   10    5        10      5        5
#: volume_focused  10    5    15    15       40      5        10
#: ==============  ====  ===  ====  =======  ======  =======  =========
WEIGHTS: Final[Mapping[RiskMode, Mapping[str, Decimal]]] = MappingProxyType(
    {
        RiskMode.CONSERVATIVE: _weights("0.15", "0.10", "0.40", "0.10", "0.05", "0.10", "0.10"),
        RiskMode.BALANCED: _weights("0.25", "0.20", "0.20", "0.10", "0.10", "0.10", "0.05"),
        RiskMode.AGGRESSIVE: _weights("0.40", "0.25", "0.10", "0.05", "0.10", "0.05", "0.05"),
        RiskMode.VOLUME_FOCUSED: _weights("0.10", "0.05", "0.15", "0.15", "0.40", "0.05", "0.10"),
    }
)


@dataclass(frozen=True, kw_only=True)
class ModeLimits:
    """Soft and hard thresholds of one risk mode; a value above a limit breaches it.

    * **spread** — crossing cost in bps, summed over legs: half the spread on
      every leg (a taker crosses from mid to the touch) plus slippage
      ``max(spread, 0.5 bps) * leg_notional / DEPTH_PER_SPREAD_USD``.
      ``arb`` and ``funding_arb`` compare the *net cost* ``cost - edge``
      against ``spread_soft_bps`` / ``spread_hard_bps`` (hard: the costs eat the
      edge by more than the margin).  ``volume`` jobs pay for volume, so their
      net cost has its own, wider, bound (``volume_cost_*``).
      ``hedge_rebalance`` is never judged by edge: its *gross* cost only has to
      stay below a sanity bound (``rebalance_cost_*``) that stops trading into a
      broken book.
    * **funding** — net adverse funding in bps per 8 h interval over the legs: a
      long leg pays ``+rate``, a short leg receives it (pays ``-rate``).  A
      close (:attr:`JobView.closes_position`) reads no adverse funding: it leaves
      nothing held to pay it on.
      Typical perp funding is about 1 bps; 5 bps and more is a crowded market.
    * **latency** — the worst leg's API latency in ms.
    * **volatility** — the worst leg's short-horizon realized volatility (fraction).
    * **leverage** — the job's leg notional on an exchange (``|quantity| * last``)
      divided by that exchange's equity, worst exchange.  The capital
      orchestrator's single-job cap (10 % by default) usually binds first; this
      is the backstop when capital settings are loosened.
    * ``max_market_age`` — an older snapshot is stale (a hard limit).
    * ``min_score`` — the final score needed for admission.
    * ``soft_penalty`` — points taken off the final score per soft breach.
    * ``weight_<component>`` — the component's weight in the final score (the
      weights sum to exactly 1; defaults :data:`WEIGHTS`).
    """

    spread_soft_bps: Decimal
    spread_hard_bps: Decimal
    volume_cost_soft_bps: Decimal
    volume_cost_hard_bps: Decimal
    rebalance_cost_soft_bps: Decimal
    rebalance_cost_hard_bps: Decimal
    funding_soft_bps: Decimal
    funding_hard_bps: Decimal
    latency_soft_ms: Decimal
    latency_hard_ms: Decimal
    volatility_soft: Decimal
    volatility_hard: Decimal
    leverage_soft: Decimal
    leverage_hard: Decimal
    max_market_age: timedelta = timedelta(seconds=10)
    min_score: Decimal
    soft_penalty: Decimal
    # The weight of each score component (``weight_<component>``); they sum to 1.
    weight_edge: Decimal
    weight_pnl: Decimal
    weight_risk: Decimal
    weight_latency: Decimal
    weight_volume: Decimal
    weight_funding: Decimal
    weight_liquidity: Decimal

    def __post_init__(self) -> None:
        problem = limit_problem(self)
        if problem is not None:
            raise LimitError(*problem)

    # Decision context texts of the mode's constants, worked out once per mode.

    @cached_property
    def max_market_age_text(self) -> str:
        return _fmt(Decimal(str(self.max_market_age.total_seconds())), 3)

    @cached_property
    def min_score_text(self) -> str:
        return _fmt(self.min_score, 3)

    @cached_property
    def soft_penalty_text(self) -> str:
        return _fmt(self.soft_penalty)

    @cached_property
    def weights(self) -> Mapping[str, Decimal]:
        """The weight of each component, by the names of :data:`COMPONENTS`."""
        return MappingProxyType({c: getattr(self, f"weight_{c}") for c in COMPONENTS})

    def bounds(self, dimension: Dimension, strategy: Strategy) -> tuple[Decimal, Decimal]:
        """(soft, hard) for a dimension; the spread bounds depend on the strategy."""
        if dimension is Dimension.SPREAD:
            if strategy is Strategy.VOLUME:
                return self.volume_cost_soft_bps, self.volume_cost_hard_bps
            if strategy is Strategy.HEDGE_REBALANCE:
                return self.rebalance_cost_soft_bps, self.rebalance_cost_hard_bps
            return self.spread_soft_bps, self.spread_hard_bps
        if dimension is Dimension.FUNDING:
            return self.funding_soft_bps, self.funding_hard_bps
        if dimension is Dimension.LATENCY:
            return self.latency_soft_ms, self.latency_hard_ms
        if dimension is Dimension.VOLATILITY:
            return self.volatility_soft, self.volatility_hard
        return self.leverage_soft, self.leverage_hard


#: The default thresholds per mode, soft/hard: the one place the defaults are
#: written.  An operator changes them with ``[risk.MODE]`` settings or ``perpbot
#: risk set`` (by the names of :data:`LIMIT_NAMES`); the limits in force are
#: ``risk_limits`` rows (:mod:`perpbot_db.services.risk_limits`), and a limit
#: without a row is its default here.  Columns: net cost of ``arb``/``funding_arb``
#: (bps over the edge), net cost of ``volume`` (bps), gross cost of
#: ``hedge_rebalance`` (bps), net adverse funding (bps per 8 h), worst latency
#: (ms), worst volatility (fraction), worst leverage (notional / equity); then
#: max market age (s), min score, soft penalty (points).
#:
#: Conservative is the tightest everywhere and aggressive the loosest.
#: Conservative arb wants 2 bps of edge left after costs before it stops
#: penalising and rejects as soon as costs exceed the edge; aggressive
#: tolerates costs 5 bps beyond the stated edge (edges are estimates).
#: volume_focused is loose on cost for ``volume`` jobs (they pay for volume)
#: and the strictest on latency and snapshot age (volume is many quick fills).
#: Rebalance bounds are wide on purpose: leaving a book unhedged is worse than
#: paying a spread, and only a broken book (50-100 bps) should stop it.
#: Funding of ~1 bps per 8 h is ordinary, 5+ bps is a crowded market.
#: Staleness is a correctness matter, not appetite: aggressive keeps 10 s.
_LIMITS_TABLE: Final = """
mode            spread  volume  rebal.  funding  latency   volatility   leverage   age  min  pen
conservative    -2/0    3/6     15/50   1/3      150/400   0.01/0.03    0.05/0.10  5    60   15
balanced        0/2     5/10    20/75   2/5      250/750   0.02/0.05    0.10/0.25  10   50   10
aggressive      2/5     8/15    30/100  5/15     400/1500  0.04/0.10    0.20/0.50  10   40   5
volume_focused  0/3     10/20   20/75   3/10     100/300   0.015/0.04   0.10/0.25  5    45   10
"""
_PAIRED: Final = (
    "spread_%s_bps",
    "volume_cost_%s_bps",
    "rebalance_cost_%s_bps",
    "funding_%s_bps",
    "latency_%s_ms",
    "volatility_%s",
    "leverage_%s",
)


def _parse_limits(table: str) -> Mapping[RiskMode, ModeLimits]:
    modes: dict[RiskMode, ModeLimits] = {}
    for line in table.strip().splitlines()[1:]:
        mode, *cells = line.split()
        pairs, (age, min_score, penalty) = cells[: len(_PAIRED)], cells[len(_PAIRED) :]
        kwargs: dict[str, Decimal] = {}
        for name, pair in zip(_PAIRED, pairs, strict=True):
            soft, hard = pair.split("/")
            kwargs[name % "soft"], kwargs[name % "hard"] = Decimal(soft), Decimal(hard)
        modes[RiskMode(mode)] = ModeLimits(
            **kwargs,
            max_market_age=timedelta(seconds=int(age)),
            min_score=Decimal(min_score),
            soft_penalty=Decimal(penalty),
            **{f"weight_{c}": w for c, w in WEIGHTS[RiskMode(mode)].items()},
        )
    return MappingProxyType(modes)


# ---------------------------------------------------------------------------
# Limits by name: the operator's view (settings ``[risk.MODE]``, ``risk_limits`` rows)

#: A mode's limits as an operator names them (a setting under ``[risk.MODE]``, a
#: ``risk_limits.name``), in the order of the table: one per :class:`ModeLimits`
#: field, ``max_market_age`` given in seconds as ``max_market_age_s``.
LIMIT_NAMES: Final[tuple[str, ...]] = (
    *(pattern % level for pattern in _PAIRED for level in ("soft", "hard")),
    "max_market_age_s",
    "min_score",
    "soft_penalty",
    *(f"weight_{c}" for c in COMPONENTS),
)
WEIGHT_NAMES: Final = tuple(f"weight_{c}" for c in COMPONENTS)
#: Limits that may be negative: net costs (cost minus edge) below zero ask for
#: edge left over after costs.  Every other limit is a magnitude (>= 0).
SIGNED_LIMITS: Final = frozenset(
    {"spread_soft_bps", "spread_hard_bps", "volume_cost_soft_bps", "volume_cost_hard_bps"}
)
#: Hard limits the score divides by (risk, latency and funding components): > 0.
DIVISOR_LIMITS: Final = ("funding_hard_bps", "latency_hard_ms", "volatility_hard", "leverage_hard")
#: The longest snapshot age a mode may accept (a day is no longer a market).
MAX_MARKET_AGE_S: Final = Decimal(86_400)
_MICRO: Final = Decimal("0.000001")


class LimitError(ValueError):
    """A risk limit breaks a rule; ``name`` is the limit (a name of :data:`LIMIT_NAMES`)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def limit_values(limits: ModeLimits) -> dict[str, Decimal]:
    """The mode's limits by name, in :data:`LIMIT_NAMES` order."""
    age = limits.max_market_age
    micros = (age.days * 86_400 + age.seconds) * 1_000_000 + age.microseconds
    seconds = Decimal(micros) / 1_000_000  # exact, without trailing zeros (10, 2.5)
    return {
        name: seconds if name == "max_market_age_s" else getattr(limits, name)
        for name in LIMIT_NAMES
    }


def limit_problem(limits: ModeLimits) -> tuple[str, str] | None:
    """The first rule the limits break, as (limit name, what is wrong), or None.

    The one set of rules for the defaults, the settings and ``perpbot risk set``:
    every value finite; magnitudes not negative; the hard limits the score divides
    by above zero; soft never above hard; the snapshot age within (0, 1 day];
    ``min_score`` and ``soft_penalty`` within 0-100; weights within 0-1 (not
    negative, and they sum to exactly 1).
    """
    age = limits.max_market_age
    if age <= timedelta(0) or age > timedelta(seconds=int(MAX_MARKET_AGE_S)):
        return "max_market_age_s", f"must be above 0 and at most {MAX_MARKET_AGE_S} s"
    values = limit_values(limits)
    for name, value in values.items():
        if not isinstance(value, Decimal) or not value.is_finite():
            return name, f"must be a finite number, got {value}"
        if name not in SIGNED_LIMITS and value < 0:
            return name, f"must not be negative, got {_fmt(value)}"
    for name in DIVISOR_LIMITS:
        if values[name] <= 0:
            return name, f"must be above 0 (scores are measured against it), got {values[name]}"
    for pattern in _PAIRED:
        soft, hard = pattern % "soft", pattern % "hard"
        if values[soft] > values[hard]:
            return soft, (
                f"must not exceed {hard} ({_fmt(values[hard])}), got {_fmt(values[soft])}"
            )
    for name in ("min_score", "soft_penalty"):
        if values[name] > HUNDRED:
            return name, f"must be within 0-100, got {_fmt(values[name])}"
    total = sum((values[name] for name in WEIGHT_NAMES), ZERO)
    if total != 1:
        shown = ", ".join(f"{c} {_fmt(values[f'weight_{c}'])}" for c in COMPONENTS)
        return WEIGHT_NAMES[0], f"the weights must sum to 1, got {_fmt(total)} ({shown})"
    return None


#: Every limit lies strictly within this magnitude (the ``risk_limits`` table's check).
LIMIT_MAGNITUDE = Decimal(10) ** 12


def with_limits(base: ModeLimits, changes: Mapping[str, Decimal]) -> ModeLimits:
    """``base`` with the named limits changed, checked by :func:`limit_problem`.

    Raises :class:`LimitError` naming the limit: an unknown name, a value that is
    not a number, or a rule broken by the result.
    """
    kwargs: dict[str, object] = {}
    for name, value in changes.items():
        if name not in LIMIT_NAMES:
            raise LimitError(name, f"unknown limit (one of {', '.join(LIMIT_NAMES)})")
        if not isinstance(value, Decimal):
            raise LimitError(name, f"must be a number, got {value!r}")
        if not value.is_finite():
            raise LimitError(name, f"must be a finite number, got {value}")
        if abs(value) >= LIMIT_MAGNITUDE:  # ``risk_limits.value``'s check: nothing reaches it
            raise LimitError(name, f"must lie strictly between -1e12 and 1e12, got {value}")
        if name == "max_market_age_s":
            if not (ZERO < value <= MAX_MARKET_AGE_S):
                raise LimitError(name, f"must be above 0 and at most {MAX_MARKET_AGE_S} s")
            micros = int((value / _MICRO).to_integral_value(ROUND_HALF_EVEN))
            kwargs["max_market_age"] = timedelta(microseconds=max(micros, 1))
        else:
            kwargs[name] = value
    try:
        return replace(base, **kwargs)  # type: ignore[arg-type]
    except LimitError as exc:
        if exc.name in WEIGHT_NAMES:  # name a weight that was changed
            changed = [name for name in WEIGHT_NAMES if name in changes]
            raise LimitError(changed[-1] if changed else exc.name, exc.message) from None
        raise


#: The defaults: the limits in force when no setting and no ``perpbot risk set`` changed them.
LIMITS: Final[Mapping[RiskMode, ModeLimits]] = _parse_limits(_LIMITS_TABLE)


# ---------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class ScoreComponents:
    """The seven components, each 0-100.

    ``risk`` is riskiness (100 = riskiest, the scale of ``hedge_jobs.risk_score``);
    all others are goodness (100 = best).  Computed when the job gives none:

    * ``edge`` = ``100 - 100 * 10 / (edge_bps + 10)`` for a positive expected
      edge, else 0 (10 bps scores 50, 30 bps 75).
    * ``pnl`` — the same curve over expected PnL with half point 10 USD.
    * ``volume`` (job's ``vol_score``) — the same curve over expected volume
      with half point 10,000 USD.
    * ``risk`` (job's ``risk_score``) = ``100 * max(volatility / volatility_hard,
      leverage / leverage_hard)``, capped at 100: how close the riskier of the
      two is to the mode's hard limit.
    * ``latency`` (job's ``latency_score``) = ``100 * (1 - worst_latency /
      latency_hard)``, floored at 0.
    * ``funding`` (job's ``funding_score``) = ``50 - 50 * net_adverse_funding /
      funding_hard``, within 0-100: 50 when funding is neutral, 100 when the
      legs receive as much as the hard limit, 0 when they pay it.
    * ``liquidity`` (job's ``liquidity_score``) = ``100 * 5 / (cost_bps + 5)``
      over the gross crossing cost (spread + slippage, summed over legs).

    A component whose market data is missing scores its worst value (risk 100,
    others 0).  Given scores are clamped to 0-100; a NaN given score is worst.
    Every component is quantized to 0.001, the grid of the score columns.
    """

    edge: Decimal
    pnl: Decimal
    risk: Decimal
    latency: Decimal
    volume: Decimal
    funding: Decimal
    liquidity: Decimal

    @property
    def safety(self) -> Decimal:
        """The value that enters the weighted sum under the ``risk`` weight."""
        return HUNDRED - self.risk

    def weighted(self, weights: Mapping[str, Decimal]) -> Decimal:
        """Sum of weight x component, with safety in place of risk (0-100)."""
        values = (
            self.edge,
            self.pnl,
            self.safety,
            self.latency,
            self.volume,
            self.funding,
            self.liquidity,
        )  # in the order of COMPONENTS
        return sum(
            (weights[name] * value for name, value in zip(COMPONENTS, values, strict=True)), ZERO
        )


@dataclass(frozen=True)
class Reading:
    """One dimension measured for one job, with the limits it was held to."""

    dimension: Dimension
    value: Decimal
    exchange: str
    soft_limit: Decimal
    hard_limit: Decimal
    context: tuple[tuple[str, str], ...] = ()

    @property
    def hard_breach(self) -> bool:
        return self.value > self.hard_limit

    @property
    def soft_breach(self) -> bool:
        return self.value > self.soft_limit


@dataclass(frozen=True)
class Assessment:
    """The risk manager's answer for one job.

    ``decision`` is ADMITTED, the first hard-limit denial, or
    SCORE_BELOW_THRESHOLD; ``soft`` lists the soft breaches that lowered
    ``final_score``; ``readings`` are the measured dimensions (empty when the
    market-data gate failed), for the console and the job's stored context.
    """

    decision: Decision
    components: ScoreComponents
    final_score: Decimal
    soft: tuple[Decision, ...]
    readings: tuple[Reading, ...] = ()


# ---------------------------------------------------------------------------
# Helpers


def _clamp(value: Decimal, low: Decimal = ZERO, high: Decimal = HUNDRED) -> Decimal:
    return max(low, min(high, value))


def _saturating(value: Decimal, half: Decimal) -> Decimal:
    """0 for x <= 0 (or NaN), rising to 100: ``100 - 100 * half / (x + half)``.

    Written as a subtraction of a quotient over a growing denominator so that
    each rounded step is monotone in ``x``.
    """
    if value.is_nan() or value <= 0:
        return ZERO
    if value.is_infinite():
        return HUNDRED
    return _clamp(HUNDRED - HUNDRED * half / (value + half))


def _given(score: Decimal | None, *, worst: Decimal) -> Decimal | None:
    if score is None:
        return None
    if score.is_nan():
        return worst
    return _clamp(score)


def _magnitude(value: Decimal) -> Decimal:
    """|x|, with NaN read as infinitely large (fail closed)."""
    return INF if value.is_nan() else abs(value)


def _edge(job: JobView) -> Decimal:
    """Expected edge in bps, NaN read as no edge at all."""
    edge = job.expected_edge_bps
    return -INF if edge.is_nan() else edge


def _usable_quote(view: MarketView) -> str | None:
    """Why the quote cannot be used, or None."""
    prices = (view.bid, view.ask, view.last)
    if not all(p.is_finite() for p in prices):
        return "price_not_finite"
    if view.bid <= 0 or view.last <= 0:
        return "price_not_positive"
    if view.ask < view.bid:
        return "crossed_book"
    return None


def _missing_field(view: MarketView) -> tuple[str, str] | None:
    """The first field a dimension needs that is absent or unusable: (field, problem)."""
    checks: tuple[tuple[str, Decimal | None, bool], ...] = (
        ("funding_rate", view.funding_rate, False),
        ("volatility", view.volatility, True),
        ("latency_ms", view.latency_ms, True),
    )
    for name, value, non_negative in checks:
        if value is None:
            return name, "missing"
        if not value.is_finite():
            return name, "not_finite"
        if non_negative and value < 0:
            return name, "negative"
    return None


# ---------------------------------------------------------------------------
# The market-data gate


def _stale(view: MarketView, limits: ModeLimits, now: datetime) -> bool:
    """Older than the mode allows, or from the future by as much (a clock problem: no
    safer to trust than an old snapshot).  ``observed_at`` must be timezone-aware."""
    return abs(now - view.observed_at) > limits.max_market_age


def market_open(view: MarketView, limits: ModeLimits, now: datetime) -> bool:
    """Whether a job may trade on this market now, as far as the market alone can tell.

    The per-market part of :func:`assess`: a usable quote, a fresh and timezone-aware
    snapshot with every field a dimension needs, latency and volatility within their
    hard limits (both are judged on the worst leg, so one market beyond them holds
    every job with a leg there).  False means any job with a leg on this market is
    held by a hard limit; True promises nothing about the job's own checks.
    """
    if view.quote_problem is not None or view.field_problem is not None:
        return False
    if view.observed_at.utcoffset() is None or _stale(view, limits, now):
        return False
    latency, volatility = view.latency_ms, view.volatility
    assert latency is not None and volatility is not None  # field_problem checked them
    return latency <= limits.latency_hard_ms and volatility <= limits.volatility_hard


def _market_gate(
    job: JobView,
    markets: Mapping[tuple[str, str], MarketView],
    limits: ModeLimits,
    now: datetime,
) -> tuple[Decision | None, tuple[tuple[LegView, MarketView], ...]]:
    """First denial of the gate (missing, unusable, stale, missing field) and the legs' views."""
    if not job.legs:
        return deny(DecisionCode.MARKET_DATA_MISSING, symbol=job.symbol, reason="no_legs"), ()
    pairs: list[tuple[LegView, MarketView]] = []
    for leg in job.legs:
        view = markets.get((leg.exchange, job.symbol))
        if view is None:
            return deny(
                DecisionCode.MARKET_DATA_MISSING,
                exchange=leg.exchange,
                symbol=job.symbol,
                reason="no_snapshot",
            ), ()
        problem = view.quote_problem
        if problem is not None:
            return deny(
                DecisionCode.MARKET_DATA_MISSING,
                exchange=leg.exchange,
                symbol=job.symbol,
                reason=problem,
            ), ()
        pairs.append((leg, view))
    for leg, view in pairs:
        if view.observed_at.utcoffset() is None:
            return deny(
                DecisionCode.MARKET_DATA_STALE,
                exchange=leg.exchange,
                symbol=job.symbol,
                value="naive_timestamp",
                limit=limits.max_market_age_text,
            ), ()
        if _stale(view, limits, now):
            return deny(
                DecisionCode.MARKET_DATA_STALE,
                exchange=leg.exchange,
                symbol=job.symbol,
                value=_fmt(Decimal(str((now - view.observed_at).total_seconds())), 3),
                limit=limits.max_market_age_text,
                observed_at=view.observed_at.isoformat(),
            ), ()
    for leg, view in pairs:
        missing = view.field_problem
        if missing is not None:
            field_name, problem = missing
            return deny(
                DecisionCode.MARKET_DATA_MISSING,
                exchange=leg.exchange,
                symbol=job.symbol,
                field=field_name,
                reason=problem,
            ), ()
    return None, tuple(pairs)


# ---------------------------------------------------------------------------
# The five dimensions

_FIRST: Final = itemgetter(0)  # of (value, exchange): max() keeps the first of equals


def _crossing_cost_bps(leg: LegView, view: MarketView) -> Decimal:
    """Half the spread plus the size's slippage, in bps of the leg's notional."""
    spread_bps = view.spread_bps
    notional = _magnitude(leg.quantity) * view.last
    slippage_bps = max(spread_bps, MIN_SLIPPAGE_SPREAD_BPS) * notional / DEPTH_PER_SPREAD_USD
    return spread_bps / 2 + slippage_bps


def _spread_reading(
    job: JobView, pairs: tuple[tuple[LegView, MarketView], ...], limits: ModeLimits
) -> tuple[Reading, Decimal]:
    costs = [(_crossing_cost_bps(leg, view), leg.exchange) for leg, view in pairs]
    cost = sum((c for c, _ in costs), ZERO)
    worst_exchange = max(costs, key=_FIRST)[1]
    edge = _edge(job)
    judged_as = Strategy.HEDGE_REBALANCE if job.reduces_exposure else job.strategy
    soft, hard = limits.bounds(Dimension.SPREAD, judged_as)
    if job.reduces_exposure or cost.is_infinite():
        # An unbounded cost is not redeemed by any edge (and inf - inf is undefined).
        value, basis = cost, "gross_cost"
    else:
        value, basis = cost - edge, "cost_minus_edge"
    context = (
        ("basis", basis),
        ("strategy", job.strategy.value),
        ("cost_bps", _fmt(cost, 4)),
        ("edge_bps", _fmt(edge, 4)),
    )
    return Reading(Dimension.SPREAD, value, worst_exchange, soft, hard, context), cost


def _funding_reading(
    job: JobView, pairs: tuple[tuple[LegView, MarketView], ...], limits: ModeLimits
) -> Reading:
    paid: list[tuple[Decimal, str]] = []
    for leg, view in pairs:
        rate = view.funding_rate if view.funding_rate is not None else ZERO  # gate checked
        sign = 1 if leg.side is Side.BUY else -1
        paid.append((sign * rate * BPS, leg.exchange))
    net = sum((p for p, _ in paid), ZERO)
    worst_exchange = max(paid, key=_FIRST)[1]
    soft, hard = limits.bounds(Dimension.FUNDING, job.strategy)
    if job.closes_position:
        # the legs flatten a pair: nothing is held afterwards to pay or receive funding
        net = min(net, ZERO)
    return Reading(
        Dimension.FUNDING, net, worst_exchange, soft, hard, (("unit", "bps_per_8h_net"),)
    )


def _worst_leg_reading(
    dimension: Dimension,
    job: JobView,
    values: list[tuple[Decimal, str]],
    limits: ModeLimits,
) -> Reading:
    value, exchange = max(values, key=_FIRST)
    soft, hard = limits.bounds(dimension, job.strategy)
    return Reading(dimension, value, exchange, soft, hard, (("basis", "worst_leg"),))


def _leverage_reading(
    job: JobView,
    pairs: tuple[tuple[LegView, MarketView], ...],
    equity_by_exchange: Mapping[str, Decimal],
    limits: ModeLimits,
) -> Reading:
    notional: dict[str, Decimal] = {}
    for leg, view in pairs:
        notional[leg.exchange] = (
            notional.get(leg.exchange, ZERO) + _magnitude(leg.quantity) * view.last
        )
    soft, hard = limits.bounds(Dimension.LEVERAGE, job.strategy)
    worst: Reading | None = None
    for exchange, amount in notional.items():
        equity = equity_by_exchange.get(exchange)
        if equity is None or not equity.is_finite() or equity <= 0:
            # Unknown or exhausted equity: no leverage is safe (fail closed).
            shown = "missing" if equity is None else _fmt(equity, 2)
            return Reading(Dimension.LEVERAGE, INF, exchange, soft, hard, (("equity", shown),))
        ratio = amount / equity
        if worst is None or ratio > worst.value:
            context = (("notional_usd", _fmt(amount, 2)), ("equity_usd", _fmt(equity, 2)))
            worst = Reading(Dimension.LEVERAGE, ratio, exchange, soft, hard, context)
    assert worst is not None  # the gate guarantees at least one leg
    return worst


def _readings(
    job: JobView,
    pairs: tuple[tuple[LegView, MarketView], ...],
    equity_by_exchange: Mapping[str, Decimal],
    limits: ModeLimits,
) -> tuple[tuple[Reading, ...], Decimal]:
    """The five readings in check order, and the gross crossing cost (for liquidity)."""
    spread, cost = _spread_reading(job, pairs, limits)
    latency = _worst_leg_reading(
        Dimension.LATENCY,
        job,
        [(view.latency_ms or ZERO, leg.exchange) for leg, view in pairs],
        limits,
    )
    volatility = _worst_leg_reading(
        Dimension.VOLATILITY,
        job,
        [(view.volatility or ZERO, leg.exchange) for leg, view in pairs],
        limits,
    )
    return (
        spread,
        _funding_reading(job, pairs, limits),
        latency,
        volatility,
        _leverage_reading(job, pairs, equity_by_exchange, limits),
    ), cost


def _reading_context(reading: Reading, symbol: str, limit: Decimal) -> dict[str, str]:
    return {
        "exchange": reading.exchange,
        "symbol": symbol,
        "value": _fmt(reading.value),
        "limit": _fmt(limit),
        **dict(reading.context),
    }


# ---------------------------------------------------------------------------
# Scoring


def score_components(
    job: JobView,
    readings: tuple[Reading, ...],
    gross_cost_bps: Decimal | None,
    limits: ModeLimits,
) -> ScoreComponents:
    """Job-given components, else computed from the readings (worst when unmeasured)."""
    by_dim = {r.dimension: r for r in readings}

    computed_risk = HUNDRED
    vol, lev = _ratio(by_dim, Dimension.VOLATILITY), _ratio(by_dim, Dimension.LEVERAGE)
    if vol is not None and lev is not None:
        computed_risk = _clamp(HUNDRED * max(vol, lev))

    computed_latency = ZERO
    lat = _ratio(by_dim, Dimension.LATENCY)
    if lat is not None:
        computed_latency = _clamp(HUNDRED - HUNDRED * lat)

    computed_funding = ZERO
    fund = _ratio(by_dim, Dimension.FUNDING)
    if fund is not None:
        computed_funding = _clamp(50 - 50 * fund)

    computed_liquidity = ZERO
    if gross_cost_bps is not None:
        computed_liquidity = _clamp(
            HUNDRED
            * LIQUIDITY_HALF_COST_BPS
            / (max(gross_cost_bps, ZERO) + LIQUIDITY_HALF_COST_BPS)
        )

    return ScoreComponents(
        edge=_q(_saturating(_edge(job), EDGE_HALF_BPS)),
        pnl=_q(_saturating(job.expected_pnl_usd, PNL_HALF_USD)),
        risk=_pick(_given(job.risk_score, worst=HUNDRED), computed_risk),
        latency=_pick(_given(job.latency_score, worst=ZERO), computed_latency),
        volume=_pick(
            _given(job.vol_score, worst=ZERO), _saturating(job.volume_usd, VOLUME_HALF_USD)
        ),
        funding=_pick(_given(job.funding_score, worst=ZERO), computed_funding),
        liquidity=_pick(_given(job.liquidity_score, worst=ZERO), computed_liquidity),
    )


def _ratio(by_dim: Mapping[Dimension, Reading], dimension: Dimension) -> Decimal | None:
    """The dimension's value as a share of its hard limit, or None when unmeasured."""
    reading = by_dim.get(dimension)
    if reading is None:
        return None
    return reading.value / reading.hard_limit  # hard limits are > 0 (validated)


def _q(value: Decimal) -> Decimal:
    """On the 0.001 grid of hedge_jobs' score columns."""
    return value.quantize(SCORE_QUANTUM, rounding=ROUND_HALF_EVEN)


def _pick(given: Decimal | None, computed: Decimal) -> Decimal:
    return _q(computed if given is None else given)


def final_score(
    components: ScoreComponents, mode: RiskMode, soft_breaches: int, limits: ModeLimits
) -> Decimal:
    """Weighted sum less the soft penalties, within 0-100, quantized to 0.001."""
    raw = components.weighted(limits.weights) - limits.soft_penalty * soft_breaches
    return _q(_clamp(raw))


# ---------------------------------------------------------------------------
# The risk manager


def assess(
    job: JobView,
    markets: Mapping[tuple[str, str], MarketView],
    equity_by_exchange: Mapping[str, Decimal],
    mode: RiskMode,
    now: datetime,
    limits: Mapping[RiskMode, ModeLimits] = LIMITS,
) -> Assessment:
    """Assess one job: the ordered, fail-closed checks and its final score.

    ``markets`` is keyed by ``(exchange, symbol)``; ``equity_by_exchange`` by
    exchange name; ``now`` must be timezone-aware.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    mode_limits = limits[mode]
    gate, pairs = _market_gate(job, markets, mode_limits, now)
    readings: tuple[Reading, ...] = ()
    gross_cost: Decimal | None = None
    if gate is None:
        readings, gross_cost = _readings(job, pairs, equity_by_exchange, mode_limits)

    soft: list[Decision] = []
    hard: Decision | None = gate
    for reading in readings:
        if reading.soft_breach:
            soft.append(
                deny(
                    SOFT_CODE[reading.dimension],
                    soft_limit=reading.dimension.value,
                    penalty=mode_limits.soft_penalty_text,
                    **_reading_context(reading, job.symbol, reading.soft_limit),
                )
            )
        if hard is None and reading.hard_breach:
            hard = deny(
                HARD_CODE[reading.dimension],
                **_reading_context(reading, job.symbol, reading.hard_limit),
            )

    components = score_components(job, readings, gross_cost, mode_limits)
    score = final_score(components, mode, len(soft), mode_limits)
    score_context = {
        "score": _fmt(score, 3),
        "min_score": mode_limits.min_score_text,
        "mode": mode.value,
    }
    if hard is not None:
        decision = hard
    elif job.reduces_exposure:
        decision = deny(DecisionCode.ADMITTED, **score_context, threshold="exempt_rebalance")
    elif score < mode_limits.min_score:
        decision = deny(DecisionCode.SCORE_BELOW_THRESHOLD, **score_context)
    else:
        decision = deny(DecisionCode.ADMITTED, **score_context)
    return Assessment(decision, components, score, tuple(soft), readings)


def is_fast_market(
    view: MarketView, mode: RiskMode, limits: Mapping[RiskMode, ModeLimits] = LIMITS
) -> bool:
    """Volatility above the mode's hard limit: the symbol goes on the blacklist.

    Fails closed: a snapshot without a usable volatility counts as fast (such a
    snapshot is rejected by :func:`assess` anyway; the blacklist entry expires
    once a calm reading arrives).
    """
    vol = view.volatility
    if vol is None or not vol.is_finite() or vol < 0:
        return True
    return vol > limits[mode].volatility_hard
