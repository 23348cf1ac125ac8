"""Cross-exchange price-spread arbitrage: buy where the ask is below another venue's bid.

For every symbol and ordered pair of venues (buy on B at its ask, sell on S at
its bid)::

    gap   = (S's bid - B's ask) / mid                       (bps)
    costs = taker(B) + taker(S) + slippage at the job's size on B and on S
    edge  = gap - costs

The best pair per symbol is emitted when ``edge >= min_edge_bps`` (which is
never below zero: an edge that does not pay both venues' taker fees and the
slippage emits nothing).  An arbitrage gap is gone within seconds, so the job's
deadline is ``deadline_s`` (a few seconds) and its key names the window of
``window_s`` it was seen in: the same gap seen again in that window is the same
job.  While an arb job for a symbol is on its way, the symbol gets no other.
A gap that persists is taken again each window (the capital and concurrency
limits bound how much).

The pair it leaves (long B, short S: delta neutral) is not meant to stay: once
the opening completed, one job keyed ``<opening key>:close`` sells on B and buys
on S when the prices have converged (selling at B's bid and buying at S's ask
costs at most ``close_max_cost_bps``) or, whatever the price, once
``close_after_s`` has passed since the opening.  A close that failed or expired
is sent again by the next pass (``:close:<n>``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, getcontext
from functools import partial
from itertools import permutations
from typing import Annotated, NamedTuple

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


class ArbParams(BaseModel):
    """``[strategies.arb]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    notional_usd: Annotated[Decimal, Field(gt=0, le=10_000_000, allow_inf_nan=False)] = Decimal(
        5000
    )
    min_edge_bps: Annotated[Decimal, Field(ge=0, le=10_000, allow_inf_nan=False)] = Decimal(1)
    deadline_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    window_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # close once selling where it bought and buying where it sold costs at most this
    close_max_cost_bps: Annotated[Decimal, Field(ge=0, le=1000, allow_inf_nan=False)] = Decimal(3)
    close_after_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 300.0
    close_deadline_s: Annotated[float, Field(gt=0, le=3600)] = 300.0


def _gap_and_fees(buy: Quote, sell: Quote, venues: Mapping[str, Venue]) -> tuple[Decimal, Decimal]:
    """(gap, fees) in bps of buying on ``buy`` and selling on ``sell``."""
    gap = (sell.bid - buy.ask) / ((buy.mid + sell.mid) / 2) * BPS
    return gap, venues[buy.exchange].taker_fee_bps + venues[sell.exchange].taker_fee_bps


_Best = tuple[Decimal, Quote, Quote, Decimal, Decimal, Decimal]


def _best(
    pairs: Iterable[tuple[Quote, Quote]], venues: Mapping[str, Venue], params: ArbParams
) -> _Best | None:
    """(edge, buy, sell, gap, costs, notional) of the first of ``pairs`` with the highest
    edge, valued exactly (None without a pair)."""
    best: _Best | None = None
    for buy, sell in pairs:
        gap, fees = _gap_and_fees(buy, sell, venues)
        if best is not None and gap - fees <= best[0]:
            continue  # slippage only adds cost: this pair cannot beat the best
        notional = min(
            params.notional_usd, size_cap_usd(venues[buy.exchange], venues[sell.exchange])
        )
        costs = fees + slippage_bps(notional, buy) + slippage_bps(notional, sell)
        if best is None or gap - costs > best[0]:
            best = (gap - costs, buy, sell, gap, costs, notional)
    return best


class _Sides(NamedTuple):
    """A symbol's venues in floats, the mid taken as one for the symbol: the edge of
    buying on B and selling on S is ``sell[S] - buy[B]`` within ``drift`` (the mid of the
    pair's two venues, not the symbol's) plus ``error`` (float error: base.APPROX_REL of
    the figures' magnitude) of its exact edge."""

    sell: list[float]
    buy: list[float]
    drift: float
    error: float


def _sides(book: FloatBook) -> _Sides:
    """:class:`_Sides` of one size for every pair: a pair's edge is
    ``A(sell) - B(buy)`` but for the mid it is divided by (the two venues' mean); divided
    by one mid for the symbol instead, the edge moves by at most ``drift``."""
    approx, fees, size = book.approx, book.fees, book.size
    bids = [a.bid for a in approx]
    asks = [a.ask for a in approx]
    mids = [a.mid for a in approx]
    slips = [a.slip_per_usd * size for a in approx]
    low, high = min(mids), max(mids)
    k = 20_000 / (low + high)
    sell = [b * k - f - w for b, f, w in zip(bids, fees, slips, strict=True)]
    buy = [a * k + f + w for a, f, w in zip(asks, fees, slips, strict=True)]
    top_bid, top_ask = max(bids), max(asks)
    drift = max(top_bid - min(asks), top_ask - min(bids)) * 5_000 * (high - low) / (low * low)
    scale = (top_bid + top_ask) / low * 10_000 + 2 * max(map(abs, fees))
    scale += 2 * size * max(a.slip_scale for a in approx)
    return _Sides(sell, buy, drift, APPROX_REL * scale)


def _candidates(
    quotes: Sequence[Quote], sizes: Mapping[str, tuple[float, float, float]]
) -> list[tuple[Quote, Quote]] | None:
    """The ordered pairs (buy, sell) that may have the best exact edge, in the order
    ``permutations`` gives them, or None when floats cannot rank them (a figure out of
    range, or sizes that differ by pair).  ``sizes``: each venue's figures
    in floats (:func:`~perpbot_db.domain.strategies.base.float_sizes`).

    Every pair within twice :class:`_Sides`' ``drift``, plus its ``error``, of the best
    float edge is returned: no other pair can be the exact best."""
    book = float_book(quotes, sizes)
    if book is None:
        return None
    sell, buy, drift, error = _sides(book)
    pairs = ordered_pairs(len(quotes))
    edges = [sell[s] - buy[b] for b, s in pairs]
    floor = max(edges) - 2 * drift - error
    return [
        (quotes[b], quotes[s]) for (b, s), edge in zip(pairs, edges, strict=True) if edge >= floor
    ]


def _cannot_pay(
    quotes: Sequence[Quote],
    screen: tuple[PriceExtremes | None, VenueFloor | None],
    sizes: Mapping[str, tuple[float, float, float]],
    min_edge: float,
) -> bool:
    """Whether floats prove that no pair of ``quotes`` has an exact edge of ``min_edge``
    (``min_edge_bps`` in floats): the symbol is skipped for its best pair's edge, whatever
    that pair.  False when they cannot tell (see :func:`_candidates`).

    Two bounds on every pair's exact edge, the cheap one first: :func:`_ceiling` from
    ``screen`` (the symbol's extremes and the venues' floor; None when out of the float
    range), then :func:`_float_ceiling`.  ``min_edge`` is in floats too, so
    ``APPROX_REL`` of its magnitude is added.  A bound that is not finite or a number
    (figures at the edge of the float range) compares false."""
    slack = APPROX_REL * abs(min_edge)
    extremes, floor = screen
    if extremes is not None and floor is not None and _ceiling(extremes, floor) + slack < min_edge:
        return True
    book = float_book(quotes, sizes)
    return book is not None and _float_ceiling(book) + slack < min_edge


def _ceiling(extremes: PriceExtremes, floor: VenueFloor) -> float:
    """A bound on every pair's exact edge from the symbol's extremes alone: its gap is at
    most ``extremes.gap`` and each of its two legs costs at least the lowest fee plus the
    least slippage (:class:`VenueFloor`), all within far less than ``APPROX_REL`` of the
    figures' magnitude, which is added."""
    scale = extremes.scale + 2 * (floor.fee_scale + floor.slip_scale)
    return extremes.gap - 2 * (floor.fee + floor.slip) + APPROX_REL * scale


def _float_ceiling(book: FloatBook) -> float:
    """A bound on every pair's exact edge from its float edge: no pair's ``sell[S] -
    buy[B]`` exceeds ``max(sell) - min(buy)`` (a bound over every S and B, the pairs of one
    venue with itself included), and no exact edge exceeds its float edge by more than
    ``drift + error`` (:class:`_Sides`)."""
    sell, buy, drift, error = _sides(book)
    return max(sell) - min(buy) + drift + error


def _exact_best(
    quotes: Sequence[Quote],
    venues: Mapping[str, Venue],
    params: ArbParams,
    sizes: Mapping[str, tuple[float, float, float]],
    floats: bool,
) -> _Best:
    """The best pair of ``quotes`` (at least two), valued exactly: the pairs the floats
    ranked near the best (every pair when they cannot rank them)."""
    candidates = _candidates(quotes, sizes) if floats else None
    best = _best(permutations(quotes, 2) if candidates is None else candidates, venues, params)
    assert best is not None
    return best


def _unpaid(best: _Best, params: ArbParams) -> str:
    """The skip of a symbol whose best pair's edge is below ``min_edge_bps``."""
    _, buy, sell, gap, costs, _ = best
    return (
        f"best gap {gap:.2f} bps ({buy.exchange} ask < {sell.exchange} bid) does not "
        f"pay costs {costs:.2f} bps + min_edge_bps {params.min_edge_bps}"
    )


def closing_cost_bps(pair: OpenPair, market: Market) -> Decimal | None:
    """What selling at the long venue's bid and buying at the short venue's ask costs, in
    bps of the mid (negative: the close earns); None without both quotes."""
    sell = market.quotes.get((pair.long_exchange, pair.symbol))
    buy = market.quotes.get((pair.short_exchange, pair.symbol))
    if sell is None or buy is None:
        return None
    return (buy.ask - sell.bid) / ((buy.mid + sell.mid) / 2) * BPS


def _closes(
    out: Output,
    market: Market,
    venues: Mapping[str, Venue],
    params: ArbParams,
    now: datetime,
    open_pairs: Sequence[OpenPair],
) -> None:
    """One close per opening whose prices converged or whose time is up."""
    for pair in open_pairs:
        cost = closing_cost_bps(pair, market)
        if cost is not None and cost <= params.close_max_cost_bps:
            why = "converged"
        elif pair.close_after <= now:
            why = "time_up"
        else:
            continue
        body = close_body(
            pair,
            market,
            venues,
            now=now,
            deadline_s=params.close_deadline_s,
            metadata={"source": "arb", "phase": "close", "opens": pair.key, "why": why},
        )
        if isinstance(body, str):
            out.skip(pair.symbol, f"close of {pair.key}: {body}")
        else:
            out.bodies.append(body)


def _why_unpaid(
    quotes: Sequence[Quote],
    venues: Mapping[str, Venue],
    params: ArbParams,
    sizes: Mapping[str, tuple[float, float, float]],
) -> str:
    """:func:`_unpaid` of the exact best pair (a symbol :func:`_cannot_pay` skipped)."""
    return _unpaid(_exact_best(quotes, venues, params, sizes, True), params)


def arb(
    market: Market,
    venues: Mapping[str, Venue],
    params: ArbParams,
    now: datetime,
    busy: Collection[str] = frozenset(),
    open_pairs: Sequence[OpenPair] = (),
) -> Output:
    """Close the pairs due; one job per symbol where the best crossed pair pays both taker
    fees and slippage.

    ``busy``: symbols with an arb job on its way (pending to running): the gap it is
    taking is not taken twice.  ``open_pairs``: completed openings with no close on its
    way or completed."""
    out = Output(Strategy.ARB)
    _closes(out, market, venues, params, now, open_pairs)  # even disabled: nothing stays open
    if not params.enabled:
        return out
    if not market.quotes:
        out.skip("*", NO_QUOTES)
    window = window_start(now, params.window_s)
    floats = floats_rank_exactly()
    sizes = float_sizes(venues, params.notional_usd)
    min_edge = float(params.min_edge_bps)
    extremes, floor = market.extremes, venue_floor(venues, sizes)
    context = getcontext().copy()
    for symbol in market.symbols():
        if symbol in busy:
            out.skip(symbol, "an arb job for it is on its way")
            continue
        quotes = market.venues_quoting(symbol, venues)
        if len(quotes) < 2:
            out.skip(symbol, "fewer than two venues quote it")
            continue
        if floats and _cannot_pay(quotes, (extremes.get(symbol), floor), sizes, min_edge):
            # the exact best pair is valued when the skip is read (its figures word it)
            out.skip(symbol, later(partial(_why_unpaid, quotes, venues, params, sizes), context))
            continue
        best = _exact_best(quotes, venues, params, sizes, floats)
        edge, buy, sell, gap, _, notional = best
        if edge < params.min_edge_bps:
            out.skip(symbol, _unpaid(best, params))
            continue
        if edge >= MAX_EDGE_BPS:
            out.skip(symbol, f"edge {edge:.0f} bps is implausible: a data error, not traded")
            continue
        price = max(buy.ask, sell.last, buy.last)
        quantity = quantity_for(notional, price)
        if quantity <= 0:
            out.skip(symbol, "size rounds to zero")
            continue
        notional = quantity * price
        buy_v, sell_v = venues[buy.exchange], venues[sell.exchange]
        funding_8h = Decimal(0)
        if buy.funding_rate is not None and sell.funding_rate is not None:
            daily = sell_v.funding_per_day(sell.funding_rate) - buy_v.funding_per_day(
                buy.funding_rate
            )
            funding_8h = daily * BPS * RISK_FUNDING_HOURS / 24
        out.bodies.append(
            pair_body(
                strategy=Strategy.ARB,
                symbol=symbol,
                legs=[(buy.exchange, Side.BUY, quantity), (sell.exchange, Side.SELL, quantity)],
                notional_usd=notional,
                expected_edge_bps=edge,
                expected_pnl_usd=edge * notional / BPS,
                expected_volume_usd=2 * notional,
                idempotency_key=(
                    f"arb:{short_symbol(symbol)}:{buy.exchange}>{sell.exchange}:{key_time(window)}"
                ),
                deadline=now + timedelta(seconds=params.deadline_s),
                components=scores(
                    (buy, sell),
                    notional_usd=notional,
                    equity_usd=min(buy_v.equity_usd, sell_v.equity_usd),
                    cost_bps=crossing_cost_bps(notional, buy) + crossing_cost_bps(notional, sell),
                    funding_received_bps_8h=funding_8h,
                    volume_usd=2 * notional,
                ),
                metadata={
                    "source": "arb",
                    "buy": buy.exchange,
                    "sell": sell.exchange,
                    "gap_bps": format(gap.quantize(Decimal("0.0001")), "f"),
                    "phase": "open",
                    "close_after": (now + timedelta(seconds=params.close_after_s)).isoformat(),
                },
            )
        )
    return out
