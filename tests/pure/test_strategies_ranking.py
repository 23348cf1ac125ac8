"""The pair ranking in floats picks exactly the pair the exact loop picks.

``arb`` and ``funding_arb`` rank a symbol's ordered pairs of venues in floats and value
only the few that may be the best exactly (``_candidates``).  Here, over random
markets (calm: venues a few ticks apart, prices equal on several venues, equal fees
and funding; stressed: gaps of tens of bps, wide spreads; prices from 1e-7 to 1e7 and
beyond the float range; small equities that make the sizes differ by pair), the pair
they choose and its figures are the ones the loop over every pair chose before
(``_reference_*`` below: that loop, as it was).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, Inexact, localcontext
from itertools import permutations
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from perpbot_db.domain.strategies import arb as arb_module
from perpbot_db.domain.strategies import funding_arb as funding_module
from perpbot_db.domain.strategies.arb import ArbParams
from perpbot_db.domain.strategies.base import (
    Market,
    Quote,
    Venue,
    float_sizes,
    floats_rank_exactly,
    size_cap_usd,
    slippage_bps,
)
from perpbot_db.domain.strategies.funding_arb import FundingArbParams

NOW = datetime(2026, 12, 2, 14, 0, 1, tzinfo=UTC)
NAMES = ("binance", "bybit", "gate", "okx")
SYMBOL = "BTC/USDT:USDT"


def _reference_arb(
    quotes: list[Quote], venues: Mapping[str, Venue], params: ArbParams
) -> tuple[Decimal, Quote, Quote, Decimal, Decimal, Decimal] | None:
    """The arb pair loop before the float ranking, as it was."""
    best: tuple[Decimal, Quote, Quote, Decimal, Decimal, Decimal] | None = None
    for buy, sell in permutations(quotes, 2):
        gap, fees = arb_module._gap_and_fees(buy, sell, venues)
        if best is not None and gap - fees <= best[0]:
            continue  # slippage only adds cost: this pair cannot beat the best
        notional = min(
            params.notional_usd, size_cap_usd(venues[buy.exchange], venues[sell.exchange])
        )
        costs = fees + slippage_bps(notional, buy) + slippage_bps(notional, sell)
        if best is None or gap - costs > best[0]:
            best = (gap - costs, buy, sell, gap, costs, notional)
    return best


def _reference_funding(
    quotes: list[Quote], venues: Mapping[str, Venue], params: FundingArbParams
) -> tuple[Decimal, Quote, Quote, tuple[Decimal, ...]] | None:
    """The funding_arb pair loop before the float ranking, as it was."""
    best: tuple[Decimal, Quote, Quote, tuple[Decimal, ...]] | None = None
    for long_q, short_q in permutations(quotes, 2):
        valued = funding_module._pair(long_q, short_q, venues, params)
        if valued is None:
            continue
        if best is None or valued[0] > best[0]:
            best = (valued[0], long_q, short_q, valued)
    return best


_magnitude = st.sampled_from(
    ["0.0000001", "0.15", "0.75", "3.1", "160", "3100", "97000", "10000000", "1E-120", "1E+120"]
)


@st.composite
def markets(draw: st.DrawFn) -> tuple[list[Quote], dict[str, Venue]]:
    base = Decimal(draw(_magnitude))
    tick = base / Decimal(draw(st.sampled_from([1000, 10_000, 100_000])))
    stressed = draw(st.booleans())
    names = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=4, unique=True))
    quotes = []
    previous: Quote | None = None
    for name in names:
        if previous is not None and draw(st.integers(0, 3)) == 0:  # the same book: ties
            quotes.append(Quote.of(name, SYMBOL, *_fields(previous)))
            continue
        offset = draw(st.integers(-600, 600) if stressed else st.integers(-4, 4))
        bid = base + offset * tick
        spread = draw(st.integers(0, 400) if stressed else st.integers(0, 3))
        rate = draw(
            st.one_of(
                st.none(),
                st.sampled_from([Decimal(0), Decimal("0.0001"), Decimal("-0.00005")]),
                st.decimals(min_value=Decimal("-0.003"), max_value=Decimal("0.003"), places=8),
            )
        )
        previous = Quote(
            exchange=name,
            symbol=SYMBOL,
            bid=bid,
            ask=bid + spread * tick,
            last=bid,
            funding_rate=rate,
            volatility=Decimal("0.01"),
            latency_ms=Decimal(30),
            observed_at=NOW - timedelta(seconds=1),
        )
        quotes.append(previous)
    venues = {
        name: Venue(
            name=name,
            taker_fee_bps=draw(
                st.sampled_from([Decimal(0), Decimal(2), Decimal("2.5"), Decimal(5)])
            ),
            funding_interval_h=Decimal(draw(st.sampled_from([1, 4, 8]))),
            equity_usd=Decimal(draw(st.sampled_from([0, 10_000, 1_000_000, 1_000_000]))),
        )
        for name in names
    }
    return quotes, venues


def _fields(q: Quote) -> tuple[Any, ...]:
    return (q.bid, q.ask, q.last, q.funding_rate, q.volatility, q.latency_ms, q.observed_at)


def _usable(quotes: list[Quote]) -> list[Quote]:
    market = Market.of(quotes, NOW, 10)
    return market.venues_quoting(SYMBOL, {q.exchange: _any_venue(q.exchange) for q in quotes})


def _any_venue(name: str) -> Venue:
    return Venue(name=name, taker_fee_bps=Decimal(0), equity_usd=Decimal(1))


arb_params = st.builds(
    ArbParams,
    notional_usd=st.sampled_from([Decimal(1000), Decimal(5000), Decimal(60_000)]),
)
funding_params = st.builds(
    FundingArbParams,
    notional_usd=st.sampled_from([Decimal(1000), Decimal(5000), Decimal(60_000)]),
    hold_h=st.sampled_from([Decimal(8), Decimal(72), Decimal(720)]),
    exit_buffer_bps=st.sampled_from([Decimal(0), Decimal(2)]),
)


@hypothesis_settings(max_examples=600, deadline=None)
@given(markets(), arb_params)
def test_arb_ranks_to_the_pair_the_exact_loop_chose(
    drawn: tuple[list[Quote], dict[str, Venue]], params: ArbParams
) -> None:
    quotes, venues = drawn
    quotes = _usable(quotes)
    if len(quotes) < 2:
        return
    candidates = arb_module._candidates(quotes, float_sizes(venues, params.notional_usd))
    pairs = permutations(quotes, 2) if candidates is None else candidates
    assert arb_module._best(pairs, venues, params) == _reference_arb(quotes, venues, params)


@hypothesis_settings(max_examples=600, deadline=None)
@given(markets(), funding_params)
def test_funding_arb_ranks_to_the_pair_the_exact_loop_chose(
    drawn: tuple[list[Quote], dict[str, Venue]], params: FundingArbParams
) -> None:
    quotes, venues = drawn
    quotes = [q for q in _usable(quotes) if q.funding_rate is not None]
    if len(quotes) < 2:
        return
    sizes = float_sizes(venues, params.notional_usd)
    candidates = funding_module._candidates(quotes, venues, params, sizes)
    pairs = permutations(quotes, 2) if candidates is None else candidates
    expected = _reference_funding(quotes, venues, params)
    assert funding_module._best(pairs, venues, params) == expected


def test_the_float_ranking_leaves_out_pairs_that_cannot_win() -> None:
    """It is a ranking, not the loop again: on a calm book one pair is valued exactly."""
    quotes = [
        Quote.of(
            n,
            SYMBOL,
            Decimal(97_000 + i),
            Decimal(97_000.5 + i),
            Decimal(97_000),
            None,
            Decimal("0.01"),
            Decimal(30),
            NOW,
        )
        for i, n in enumerate(NAMES)
    ]
    venues = {n: Venue(name=n, taker_fee_bps=Decimal(5), equity_usd=Decimal(10**6)) for n in NAMES}
    candidates = arb_module._candidates(quotes, float_sizes(venues, Decimal(5000)))
    assert candidates == [(quotes[0], quotes[3])]


def test_out_of_float_range_or_a_coarse_decimal_context_values_every_pair() -> None:
    tiny = [
        Quote.of(
            n,
            SYMBOL,
            Decimal("1E-120"),
            Decimal("1.1E-120"),
            Decimal("1E-120"),
            None,
            Decimal("0.01"),
            Decimal(30),
            NOW,
        )
        for n in NAMES[:2]
    ]
    venues = {n: Venue(name=n, taker_fee_bps=Decimal(5), equity_usd=Decimal(10**6)) for n in NAMES}
    assert arb_module._candidates(tiny, float_sizes(venues, Decimal(5000))) is None
    with localcontext() as ctx:
        assert floats_rank_exactly()
        ctx.prec = 12  # floats would not bound the decimals' error: every pair exactly
        assert not floats_rank_exactly()
        ctx.prec = 28
        ctx.traps[Inexact] = True  # a trap the exact loop would hit on any pair
        assert not floats_rank_exactly()


_CALM = (Decimal("0.01"), Decimal(30))

#: Books (bid, ask per venue) and taker fees where the best float edge, the mid taken
#: as one for the symbol, is not the exact best pair: the band around it decides.
_SEPARABLE_MISRANKS = [
    (
        [("91.47", "91.67"), ("91.62", "91.72"), ("108.16", "108.29"), ("108.58", "108.59")],
        ["5", "0", "0", "5"],
    ),
    (
        [("97.99", "98.17"), ("107.99", "108.10"), ("98.22", "98.22"), ("109.17", "109.24")],
        ["5", "0", "1", "5"],
    ),
]


@pytest.mark.parametrize(("book", "fees"), _SEPARABLE_MISRANKS)
def test_arb_values_exactly_every_pair_near_the_float_best(
    book: list[tuple[str, str]], fees: list[str]
) -> None:
    quotes = [
        Quote.of(
            n, SYMBOL, Decimal(b), Decimal(a), Decimal(b), None, Decimal("0.01"), Decimal(30), NOW
        )
        for n, (b, a) in zip(NAMES, book, strict=True)
    ]
    venues = {
        n: Venue(name=n, taker_fee_bps=Decimal(f), equity_usd=Decimal(10**6))
        for n, f in zip(NAMES, fees, strict=True)
    }
    params = ArbParams()
    expected = _reference_arb(quotes, venues, params)
    candidates = arb_module._candidates(quotes, float_sizes(venues, params.notional_usd))
    assert candidates is not None and len(candidates) > 1
    assert arb_module._best(candidates, venues, params) == expected
    assert expected is not None
    assert _float_best(quotes, venues, params) != (expected[1], expected[2])  # the band decided


def _float_best(
    quotes: list[Quote], venues: Mapping[str, Venue], params: ArbParams
) -> tuple[Quote, Quote]:
    """The pair with the best edge in floats, the mid taken as one for the symbol."""
    mids = [float(q.mid) for q in quotes]
    k = 20_000 / (min(mids) + max(mids))

    def edge(buy: Quote, sell: Quote) -> float:
        slip = slippage_bps(params.notional_usd, buy) + slippage_bps(params.notional_usd, sell)
        fees = float(venues[buy.exchange].taker_fee_bps + venues[sell.exchange].taker_fee_bps)
        return float(sell.bid) * k - float(buy.ask) * k - fees - float(slip)

    return max(permutations(quotes, 2), key=lambda pair: edge(*pair))
