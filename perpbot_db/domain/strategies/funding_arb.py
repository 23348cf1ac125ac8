"""Funding-rate arbitrage: long where funding is lower, short where it is higher.

For every symbol and every ordered pair of venues (long on L, short on S) the
strategy values holding the pair for ``hold_h`` hours::

    funding   = (S's rate per day - L's rate per day) x hold_h / 24      (bps)
    entry gap = (S's bid - L's ask) / mid                                (bps, may be < 0)
    costs     = taker(L) + taker(S)                 entry fees
              + taker(L) + taker(S) + exit_buffer   exit fees and a buffer for the exit's gap
              + 2 x slippage at the job's size on each venue (entry and exit)
    edge      = funding + entry gap - costs

and emits the best pair per symbol when ``edge >= min_edge_bps`` and the funding
spread is at least ``min_daily_spread_bps`` per day.  Nothing is emitted when
the edge does not pay both venues' taker fees, the slippage and the exit buffer.

Compared with Hummingbot's ``v2_funding_rate_arb`` (scripts/v2_funding_rate_arb.py):

* **Normalisation is the same**: a venue's rate divided by its funding interval
  and scaled to a day (Hummingbot: ``rate / interval_s x 86,400``, with a map of
  intervals per connector; here ``exchanges.NAME.funding_interval_h``).
* **Long/short is the same**: long where the normalised rate is lower, short
  where it is higher; the best pair is the largest daily spread.
* **The profitability check differs.**  Hummingbot enters when the daily spread
  reaches ``min_funding_rate_profitability`` and, separately, when the entry's
  price gap at the position size minus both venues' entry fees is not negative;
  exit fees are not counted, and funding and the entry gap are never added up.
  Here one figure decides: the funding expected over the holding horizon plus
  the entry gap must beat the entry fees, the exit fees, an exit buffer and the
  slippage at the job's size on both venues (Hummingbot reads slippage off the
  order book; snapshots carry no depth, so the risk manager's depth proxy is
  used).  A pair that earns funding but cannot pay its round trip within the
  horizon is skipped, where Hummingbot could enter it.
* **Exits.**  At most one position per symbol (like Hummingbot's one active
  arbitrage per token).  A completed opening is closed by one job keyed
  ``<opening key>:close`` (sell the long, buy back the short, same quantity) when
  its hold has passed (``close_after`` = opening + ``hold_h``, in its metadata) or
  when the funding spread has turned against it: the long venue's funding per
  day now exceeds the short venue's by more than ``exit_spread_bps_per_day``.
  Hummingbot's ``v2_funding_rate_arb`` stops out the same way when the funding
  difference turns below its threshold.  A close that failed or expired is sent
  again by the next pass (``:close:<n>``).
* **Take-profit** (``take_profit_bps``, off by default).  Hummingbot closes when
  the position's PnL (funding payments + the executors' PnL net of fees) passes
  ``profitability_to_take_profit`` (1 % by default).  Here the position is marked
  to market as a close would realise it: the long leg sold at its venue's bid, the
  short leg bought back at its venue's ask, less the fees the opening's legs paid
  and the taker fees of the close, plus the funding earned.  The store records no
  funding payments, so funding is estimated from the rates held: the lower of the
  daily spread the position was opened on and today's, times the days since the
  opening completed (never more than either rate paid; a spread that turned
  against the pair counts against it).  In bps of the entry notional (quantity x
  the mean of the two entry prices); the close's metadata carries the figure
  (``pnl_bps``).  Off by default: the position is a carry trade sized to earn its
  funding over ``hold_h``, and a close taken early gives up the rest of it; a
  take-profit is the operator's trade-off (Hummingbot's 100 bps is a sensible
  start), not a silent change of what a running deployment does.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, getcontext
from functools import partial
from itertools import pairwise, permutations
from typing import Annotated, Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from perpbot_db.domain.lifecycle import Side, Strategy
from perpbot_db.domain.strategies.base import (
    APPROX_REL,
    BPS,
    MAX_EDGE_BPS,
    NO_QUOTES,
    RISK_FUNDING_HOURS,
    FloatBook,
    Market,
    OpenPair,
    Output,
    PriceExtremes,
    Quote,
    Venue,
    VenueFloor,
    close_body,
    crossing_cost_bps,
    float_book,
    float_sizes,
    floats_rank_exactly,
    key_time,
    later,
    ordered_pairs,
    pair_body,
    quantity_for,
    scores,
    short_symbol,
    size_cap_usd,
    slippage_bps,
    venue_floor,
    window_start,
)

#: Funding rates outside this range (in size) are never ranked in floats.
_FUNDING_LOW: Final = 1e-100
_FUNDING_HIGH: Final = 1e100


class FundingArbParams(BaseModel):
    """``[strategies.funding_arb]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    notional_usd: Annotated[Decimal, Field(gt=0, le=10_000_000, allow_inf_nan=False)] = Decimal(
        5000
    )
    hold_h: Annotated[Decimal, Field(gt=0, le=24 * 365, allow_inf_nan=False)] = Decimal(72)
    # never below 0: an edge that does not pay the fees is never traded
    min_edge_bps: Annotated[Decimal, Field(ge=0, le=10_000, allow_inf_nan=False)] = Decimal(0)
    min_daily_spread_bps: Annotated[Decimal, Field(ge=0, le=10_000, allow_inf_nan=False)] = Decimal(
        1
    )
    exit_buffer_bps: Annotated[Decimal, Field(ge=0, le=1000, allow_inf_nan=False)] = Decimal(2)
    deadline_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    window_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    # close before the hold when the long venue's funding per day exceeds the short's by more
    exit_spread_bps_per_day: Annotated[Decimal, Field(ge=0, le=10_000, allow_inf_nan=False)] = (
        Decimal(0)
    )
    close_deadline_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # close once the position's marked-to-market PnL (bps of its entry notional, net of
    # every fee, funding estimated) reaches this; None: no take-profit
    take_profit_bps: Annotated[Decimal | None, Field(gt=0, le=10_000, allow_inf_nan=False)] = None


def _pair(
    long_q: Quote, short_q: Quote, venues: Mapping[str, Venue], params: FundingArbParams
) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal] | None:
    """(edge, funding, gap, costs, daily spread) in bps of holding long L / short S at the
    job's size; None unless S's funding per day is above L's."""
    long_v, short_v = venues[long_q.exchange], venues[short_q.exchange]
    if long_q.funding_rate is None or short_q.funding_rate is None:
        return None
    daily = (
        short_v.funding_per_day(short_q.funding_rate) - long_v.funding_per_day(long_q.funding_rate)
    ) * BPS
    if daily <= 0:
        return None  # long where funding is lower only
    notional = min(params.notional_usd, size_cap_usd(long_v, short_v))
    funding = daily * params.hold_h / 24
    mid = (long_q.mid + short_q.mid) / 2
    gap = (short_q.bid - long_q.ask) / mid * BPS
    fees = 2 * (long_v.taker_fee_bps + short_v.taker_fee_bps)
    slip = 2 * (slippage_bps(notional, long_q) + slippage_bps(notional, short_q))
    costs = fees + params.exit_buffer_bps + slip
    return funding + gap - costs, funding, gap, costs, daily


_Best = tuple[Decimal, Quote, Quote, tuple[Decimal, Decimal, Decimal, Decimal, Decimal]]


def _best(
    pairs: Iterable[tuple[Quote, Quote]], venues: Mapping[str, Venue], params: FundingArbParams
) -> _Best | None:
    """(edge, long, short, :func:`_pair`'s values) of the first of ``pairs`` with the
    highest edge among those S's funding is above L's, valued exactly (else None)."""
    best: _Best | None = None
    for long_q, short_q in pairs:
        valued = _pair(long_q, short_q, venues, params)
        if valued is None:
            continue
        if best is None or valued[0] > best[0]:
            best = (valued[0], long_q, short_q, valued)
    return best


def _days(
    quotes: Sequence[Quote], sizes: Mapping[str, tuple[float, float, float]]
) -> list[float] | None:
    """Each venue's funding per day in bps, in floats (``sizes``: the venues' figures,
    :func:`~perpbot_db.domain.strategies.base.float_sizes`); None when a rate is out of the
    float range (or missing), or a venue's figures are."""
    days = []
    for q in quotes:
        rate = float(q.funding_rate) if q.funding_rate is not None else math.nan
        figures = sizes.get(q.exchange)
        if figures is None or not (_FUNDING_LOW < abs(rate) < _FUNDING_HIGH or rate == 0):
            return None
        days.append(rate * 24 / figures[2] * 10_000)
    return days


class _Sides(NamedTuple):
    """A symbol's venues in floats, the mid taken as one for the symbol: the edge of long
    L / short S is ``sell[S] - buy[L]`` less the exit buffer, within ``drift`` (the mid
    of the pair's two venues, not the symbol's) plus ``error`` (float error:
    base.APPROX_REL of the figures' magnitude) of its exact edge."""

    sell: list[float]
    buy: list[float]
    drift: float
    error: float


def _sides(book: FloatBook, days: list[float], hold: float) -> _Sides:
    """:class:`_Sides` of one size for every pair (``hold``: ``hold_h / 24``): a pair's
    edge is ``A(short) - B(long) - exit buffer`` but for the mid the gap is divided by (the
    two venues' mean); divided by one mid for the symbol instead, the edge moves by at
    most ``drift``."""
    approx, fees, size = book.approx, book.fees, book.size
    bids = [a.bid for a in approx]
    asks = [a.ask for a in approx]
    mids = [a.mid for a in approx]
    slips = [2 * a.slip_per_usd * size for a in approx]
    low, high = min(mids), max(mids)
    k = 20_000 / (low + high)
    sell = [
        d * hold + b * k - 2 * f - w for d, b, f, w in zip(days, bids, fees, slips, strict=True)
    ]
    buy = [d * hold + a * k + 2 * f + w for d, a, f, w in zip(days, asks, fees, slips, strict=True)]
    top_bid, top_ask = max(bids), max(asks)
    drift = max(top_bid - min(asks), top_ask - min(bids)) * 5_000 * (high - low) / (low * low)
    scale = (top_bid + top_ask) / low * 10_000 + 4 * max(map(abs, fees))
    scale += 2 * max(map(abs, days)) * hold + 4 * size * max(a.slip_scale for a in approx)
    return _Sides(sell, buy, drift, APPROX_REL * scale)


def _candidates(
    quotes: Sequence[Quote],
    venues: Mapping[str, Venue],
    params: FundingArbParams,
    sizes: Mapping[str, tuple[float, float, float]],
) -> list[tuple[Quote, Quote]] | None:
    """The ordered pairs (long, short) that may have the best exact edge, in the order
    ``permutations`` gives them, or None when floats cannot rank them (a figure out of
    range, or sizes that differ by pair).  ``sizes``: each venue's figures
    in floats (:func:`~perpbot_db.domain.strategies.base.float_sizes`).

    A pair counts when S's funding per day is above L's (decided exactly when the floats
    are too close to zero to tell).  Every pair within twice :class:`_Sides`' ``drift``,
    plus its ``error``, of the best float edge is returned: no other pair can be the
    exact best."""
    book = float_book(quotes, sizes)
    if book is None:
        return None
    days = _days(quotes, sizes)
    if days is None:
        return None
    ranked = sorted(days)
    apart = 2 * APPROX_REL * max(-ranked[0], ranked[-1])  # >= APPROX_REL x (|L| + |S|)
    if all(high - low > apart for low, high in pairwise(ranked)):
        # no two venues' funding within float error of each other: the floats' order is
        # the exact one
        pairs = [(b, s) for b, s in ordered_pairs(len(quotes)) if days[s] > days[b]]
    else:
        pairs = []
        for b, s in ordered_pairs(len(quotes)):
            daily = days[s] - days[b]
            near = APPROX_REL * (abs(days[s]) + abs(days[b]))
            if daily > near or (
                daily >= -near and _pair(quotes[b], quotes[s], venues, params) is not None
            ):
                pairs.append((b, s))  # S's funding per day is above L's
    if not pairs:
        return []
    sell, buy, drift, error = _sides(book, days, float(params.hold_h) / 24)
    edges = [sell[s] - buy[b] for b, s in pairs]
    floor = max(edges) - 2 * drift - error
    return [
        (quotes[b], quotes[s]) for (b, s), edge in zip(pairs, edges, strict=True) if edge >= floor
    ]


class _Bars(NamedTuple):
    """A pass's thresholds in floats: ``min_daily_spread_bps``, ``min_edge_bps`` plus the
    exit buffer (the float edges leave it out), and ``hold_h / 24``."""

    min_daily: float
    min_edge: float
    hold: float

    @classmethod
    def of(cls, params: FundingArbParams) -> _Bars:
        return cls(
            float(params.min_daily_spread_bps),
            float(params.min_edge_bps + params.exit_buffer_bps),
            float(params.hold_h) / 24,
        )


def _cannot_enter(
    quotes: Sequence[Quote],
    screen: tuple[PriceExtremes | None, VenueFloor | None],
    sizes: Mapping[str, tuple[float, float, float]],
    bars: _Bars,
) -> bool:
    """Whether floats prove that the symbol is skipped whatever its best pair: no pair's
    exact daily spread reaches ``min_daily_spread_bps``, or no pair's exact edge reaches
    ``min_edge_bps`` (then the best pair fails one of the two checks, or there is none:
    funding is equal everywhere).  False when they cannot tell (see :func:`_candidates`).

    The bounds hold over every L and S (a venue with itself included, and whichever way
    the funding goes), the cheap ones first: :func:`_spread_ceiling`, :func:`_ceiling`
    from ``screen`` (the symbol's extremes and the venues' floor; None when out of the
    float range), then :func:`_float_ceiling`.  The thresholds are in floats too:
    ``APPROX_REL`` of their magnitude is added.  A bound that is not finite or a number
    compares false."""
    days = _days(quotes, sizes)
    if days is None:
        return False
    if _spread_ceiling(days) + APPROX_REL * abs(bars.min_daily) < bars.min_daily:
        return True
    slack = APPROX_REL * abs(bars.min_edge)
    extremes, floor = screen
    if (
        extremes is not None
        and floor is not None
        and _ceiling(extremes, floor, days, bars.hold) + slack < bars.min_edge
    ):
        return True
    book = float_book(quotes, sizes)
    return book is not None and _float_ceiling(book, days, bars.hold) + slack < bars.min_edge


def _spread_ceiling(days: list[float]) -> float:
    """A bound on every pair's exact daily spread: no pair's float spread ``days[S] -
    days[L]`` exceeds ``max(days) - min(days)``, and it is within ``APPROX_REL x
    (|days[S]| + |days[L]|)`` of the exact one (the bound :func:`_candidates` decides the
    pairs' direction with), which is added."""
    low, high = min(days), max(days)
    return high - low + 2 * APPROX_REL * max(-low, high)


def _ceiling(extremes: PriceExtremes, floor: VenueFloor, days: list[float], hold: float) -> float:
    """A bound on every pair's exact edge (less the exit buffer) from the symbol's
    extremes alone: its funding over the hold is at most the widest spread of ``days``,
    its gap at most ``extremes.gap``, and each of its two legs costs at least twice
    (entry and exit) the lowest fee plus the least slippage (:class:`VenueFloor`), all
    within far less than ``APPROX_REL`` of the figures' magnitude, which is added."""
    low, high = min(days), max(days)
    scale = extremes.scale + 2 * max(-low, high) * hold + 4 * (floor.fee_scale + floor.slip_scale)
    return (high - low) * hold + extremes.gap - 4 * (floor.fee + floor.slip) + APPROX_REL * scale


def _float_ceiling(book: FloatBook, days: list[float], hold: float) -> float:
    """A bound on every pair's exact edge (less the exit buffer) from its float edge: no
    pair's ``sell[S] - buy[L]`` exceeds ``max(sell) - min(buy)``, and no exact edge exceeds
    its float edge by more than ``drift + error`` (:class:`_Sides`)."""
    sell, buy, drift, error = _sides(book, days, hold)
    return max(sell) - min(buy) + drift + error


def _exact_best(
    quotes: Sequence[Quote],
    venues: Mapping[str, Venue],
    params: FundingArbParams,
    sizes: Mapping[str, tuple[float, float, float]],
    floats: bool,
) -> _Best | None:
    """The best pair of ``quotes``, valued exactly: the pairs the floats ranked near the
    best (every pair when they cannot rank them); None when funding is equal everywhere."""
    candidates = _candidates(quotes, venues, params, sizes) if floats else None
    return _best(permutations(quotes, 2) if candidates is None else candidates, venues, params)


def _refused(best: _Best | None, params: FundingArbParams) -> str | None:
    """Why the best pair is not entered (the checks in their order); None if it is."""
    if best is None:
        return "funding is equal on every venue"
    edge, _, _, (_, funding, gap, costs, daily) = best
    if daily < params.min_daily_spread_bps:
        return (
            f"daily funding spread {daily:.2f} bps < min_daily_spread_bps "
            f"{params.min_daily_spread_bps}"
        )
    if edge < params.min_edge_bps:
        return (
            f"edge {edge:.2f} bps (funding {funding:.2f} + gap {gap:.2f} - costs "
            f"{costs:.2f}) < min_edge_bps {params.min_edge_bps}"
        )
    if edge >= MAX_EDGE_BPS:
        return f"edge {edge:.0f} bps is implausible: a data error, not traded"
    return None


def _why_refused(
    quotes: Sequence[Quote],
    venues: Mapping[str, Venue],
    params: FundingArbParams,
    sizes: Mapping[str, tuple[float, float, float]],
) -> str:
    """:func:`_refused` of the exact best pair (a symbol :func:`_cannot_enter` skipped)."""
    why = _refused(_exact_best(quotes, venues, params, sizes, True), params)
    assert why is not None
    return why


def adverse_spread_bps_per_day(
    pair: OpenPair, market: Market, venues: Mapping[str, Venue]
) -> Decimal | None:
    """How much more the long venue's funding per day now is than the short venue's, in
    bps (negative while the pair still earns); None without both funding rates."""
    long_q = market.quotes.get((pair.long_exchange, pair.symbol))
    short_q = market.quotes.get((pair.short_exchange, pair.symbol))
    if long_q is None or short_q is None or pair.long_exchange not in venues:
        return None
    if long_q.funding_rate is None or short_q.funding_rate is None:
        return None
    if pair.short_exchange not in venues:
        return None
    long_v, short_v = venues[pair.long_exchange], venues[pair.short_exchange]
    return (
        long_v.funding_per_day(long_q.funding_rate) - short_v.funding_per_day(short_q.funding_rate)
    ) * BPS


def position_pnl_bps(
    pair: OpenPair, market: Market, venues: Mapping[str, Venue], now: datetime
) -> Decimal | None:
    """The pair's PnL were it closed now, in bps of its entry notional: the long leg sold
    at its venue's bid and the short bought back at its venue's ask, less the opening's
    booked fees and the close's taker fees, plus the funding earned (estimated: the lower
    of the entry and the current daily spread, times the days held).  None without the
    entry's prices or a quote on both venues."""
    entry = pair.entry
    long_q = market.quotes.get((pair.long_exchange, pair.symbol))
    short_q = market.quotes.get((pair.short_exchange, pair.symbol))
    if entry is None or long_q is None or short_q is None:
        return None
    if pair.long_exchange not in venues or pair.short_exchange not in venues:
        return None
    notional = pair.quantity * (entry.long_price + entry.short_price) / 2
    if notional <= 0:
        return None
    long_v, short_v = venues[pair.long_exchange], venues[pair.short_exchange]
    prices = pair.quantity * ((long_q.bid - entry.long_price) + (entry.short_price - short_q.ask))
    close_fees = (
        pair.quantity
        * (long_q.bid * long_v.taker_fee_bps + short_q.ask * short_v.taker_fee_bps)
        / BPS
    )
    daily = entry.daily_spread_bps
    adverse = adverse_spread_bps_per_day(pair, market, venues)
    if adverse is not None:
        daily = -adverse if daily is None else min(daily, -adverse)
    days = max(Decimal(0), Decimal(str((now - entry.opened_at).total_seconds())) / 86_400)
    funding = (daily or Decimal(0)) * days * notional / BPS
    return (prices + funding - entry.fees_usd - close_fees) / notional * BPS


def _closes(
    out: Output,
    market: Market,
    venues: Mapping[str, Venue],
    params: FundingArbParams,
    now: datetime,
    open_pairs: Sequence[OpenPair],
) -> None:
    """One close per opening whose hold has passed, whose funding spread has flipped or
    (with ``take_profit_bps``) whose PnL has reached the take-profit."""
    for pair in open_pairs:
        adverse = adverse_spread_bps_per_day(pair, market, venues)
        pnl = position_pnl_bps(pair, market, venues, now)
        if pair.close_after <= now:
            why = "hold_passed"
        elif adverse is not None and adverse > params.exit_spread_bps_per_day:
            why = "funding_flipped"
        elif (
            params.take_profit_bps is not None and pnl is not None and pnl >= params.take_profit_bps
        ):
            why = "take_profit"
        else:
            continue
        metadata = {"source": "funding_arb", "phase": "close", "opens": pair.key, "why": why}
        if pnl is not None:
            shown = max(-MAX_EDGE_BPS, min(MAX_EDGE_BPS, pnl))  # a data error stays printable
            metadata["pnl_bps"] = format(shown.quantize(Decimal("0.01")), "f")
        body = close_body(
            pair,
            market,
            venues,
            now=now,
            deadline_s=params.close_deadline_s,
            metadata=metadata,
        )
        if isinstance(body, str):
            out.skip(pair.symbol, f"close of {pair.key}: {body}")
        else:
            out.bodies.append(body)


def funding_arb(
    market: Market,
    venues: Mapping[str, Venue],
    params: FundingArbParams,
    now: datetime,
    held: Collection[str] = frozenset(),
    open_pairs: Sequence[OpenPair] = (),
) -> Output:
    """Close the positions due; one entry job per symbol where the best long/short pair
    pays its round trip.

    ``held``: symbols with a funding position open or opening (a funding_arb job pending
    to running, or a completed opening whose close has not completed): one per symbol.
    ``open_pairs``: the completed openings with no close on its way or completed."""
    out = Output(Strategy.FUNDING_ARB)
    _closes(out, market, venues, params, now, open_pairs)  # even disabled: nothing stays open
    if not params.enabled:
        return out
    if not market.quotes:
        out.skip("*", NO_QUOTES)
    window = window_start(now, params.window_s)
    floats = floats_rank_exactly()
    sizes = float_sizes(venues, params.notional_usd)
    bars = _Bars.of(params)
    extremes, floor = market.extremes, venue_floor(venues, sizes)
    context = getcontext().copy()
    for symbol in market.symbols():
        if symbol in held:
            out.skip(symbol, "a funding position is open or opening (one per symbol)")
            continue
        quotes = [q for q in market.venues_quoting(symbol, venues) if q.funding_rate is not None]
        if len(quotes) < 2:
            out.skip(symbol, "fewer than two venues quote it with a funding rate")
            continue
        if floats and _cannot_enter(quotes, (extremes.get(symbol), floor), sizes, bars):
            # the exact best pair is valued when the skip is read (its figures word it)
            out.skip(symbol, later(partial(_why_refused, quotes, venues, params, sizes), context))
            continue
        best = _exact_best(quotes, venues, params, sizes, floats)
        why = _refused(best, params)
        if why is not None:
            out.skip(symbol, why)
            continue
        assert best is not None
        edge, long_q, short_q, (*_, daily) = best
        long_v, short_v = venues[long_q.exchange], venues[short_q.exchange]
        notional = min(params.notional_usd, size_cap_usd(long_v, short_v))
        price = max(long_q.last, short_q.last, long_q.ask, short_q.bid)
        quantity = quantity_for(notional, price)
        if quantity <= 0:
            out.skip(symbol, "size rounds to zero")
            continue
        notional = quantity * price
        per_8h = daily * RISK_FUNDING_HOURS / 24
        key = f"fra:{short_symbol(symbol)}:{long_q.exchange}>{short_q.exchange}:{key_time(window)}"
        out.bodies.append(
            pair_body(
                strategy=Strategy.FUNDING_ARB,
                symbol=symbol,
                legs=[
                    (long_q.exchange, Side.BUY, quantity),
                    (short_q.exchange, Side.SELL, quantity),
                ],
                notional_usd=notional,
                expected_edge_bps=edge,
                expected_pnl_usd=edge * notional / BPS,
                expected_volume_usd=2 * notional,
                idempotency_key=key,
                deadline=now + timedelta(seconds=params.deadline_s),
                components=scores(
                    (long_q, short_q),
                    notional_usd=notional,
                    equity_usd=min(long_v.equity_usd, short_v.equity_usd),
                    cost_bps=crossing_cost_bps(notional, long_q)
                    + crossing_cost_bps(notional, short_q),
                    funding_received_bps_8h=per_8h,
                    volume_usd=2 * notional,
                ),
                metadata={
                    "source": "funding_arb",
                    "long": long_q.exchange,
                    "short": short_q.exchange,
                    "daily_spread_bps": format(daily.quantize(Decimal("0.0001")), "f"),
                    "hold_h": format(params.hold_h, "f"),
                    "phase": "open",
                    "close_after": (now + timedelta(hours=float(params.hold_h))).isoformat(),
                },
            )
        )
    return out
