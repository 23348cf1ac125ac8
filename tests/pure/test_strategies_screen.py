"""The float screen skips exactly the symbols the exact valuation skips, for the same words.

``arb`` and ``funding_arb`` first bound every pair of a symbol's venues in floats
(``_cannot_pay``, ``_cannot_enter``): a symbol none of whose pairs can reach the
thresholds is skipped without valuing its pairs, and the skip's reason is worded from
the exact best pair only when it is read.  Here, over random markets (calm books,
crossed books that pay, funding equal everywhere, venues in safe mode or with sizes
that differ, prices beyond the float range) and thresholds drawn at the exact best
figures' last digit, the strategies' bodies and skips are the ones the exact path
alone gives (the screen switched off), and every bound is above every exact figure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal, localcontext
from itertools import permutations
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from perpbot_db.domain.lifecycle import Strategy
from perpbot_db.domain.strategies import arb as arb_module
from perpbot_db.domain.strategies import funding_arb as funding_module
from perpbot_db.domain.strategies.arb import ArbParams, arb
from perpbot_db.domain.strategies.base import (
    MAX_EDGE_BPS,
    Market,
    Output,
    Quote,
    Skip,
    Venue,
    float_book,
    float_sizes,
    venue_floor,
)
from perpbot_db.domain.strategies.funding_arb import FundingArbParams, funding_arb

NOW = datetime(2026, 12, 2, 14, 0, 1, tzinfo=UTC)
NAMES = ("binance", "bybit", "gate", "okx")
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
CALM = (Decimal("0.01"), Decimal(30))

_magnitude = st.sampled_from(
    ["0.0000001", "0.15", "3.1", "160", "97000", "10000000", "1E-120", "1E+120"]
)
_rate = st.one_of(
    st.none(),
    st.sampled_from([Decimal(0), Decimal("0.0001"), Decimal("-0.00005")]),
    st.decimals(min_value=Decimal("-0.003"), max_value=Decimal("0.003"), places=8),
)


def _quote(name: str, symbol: str, bid: Decimal, ask: Decimal, rate: Decimal | None) -> Quote:
    return Quote.of(name, symbol, bid, ask, bid, rate, *CALM, NOW - timedelta(seconds=1))


@st.composite
def _book(draw: st.DrawFn, symbol: str) -> list[Quote]:
    """One symbol on 1-4 venues: calm (a few ticks apart), crossed (up to a few hundred
    bps apart: pairs that pay) or the same book everywhere; funding equal on every venue
    now and then."""
    base = Decimal(draw(_magnitude))
    tick = base / 10_000
    kind = draw(st.sampled_from(["calm", "crossed", "same"]))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    equal_rate = draw(st.one_of(st.none(), _rate)) if draw(st.booleans()) else None
    quotes = []
    offset = spread = 0
    for name in names:
        if kind != "same" or not quotes:
            offset = draw(st.integers(-4, 4) if kind == "calm" else st.integers(-300, 300))
            spread = draw(st.integers(0, 3) if kind == "calm" else st.integers(0, 40))
        bid = base + offset * tick
        rate = equal_rate if equal_rate is not None else draw(_rate)
        quotes.append(_quote(name, symbol, bid, bid + spread * tick, rate))
    return quotes


@st.composite
def markets(draw: st.DrawFn) -> tuple[Market, dict[str, Venue]]:
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3, unique=True))
    quotes = [q for symbol in symbols for q in draw(_book(symbol))]
    venues = {
        name: Venue(
            name=name,
            taker_fee_bps=draw(
                st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(2), Decimal(5)])
            ),
            funding_interval_h=Decimal(draw(st.sampled_from([1, 4, 8]))),
            equity_usd=Decimal(draw(st.sampled_from([1_000, 1_000_000, 1_000_000]))),
            safe_mode=draw(st.integers(0, 9)) == 0,
        )
        for name in NAMES
    }
    return Market.of(quotes, NOW, 10), venues


_notional = st.sampled_from([Decimal(1000), Decimal(5000), Decimal(60_000)])
_threshold = st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(1), Decimal(20)])
arb_params = st.builds(ArbParams, notional_usd=_notional, min_edge_bps=_threshold)
funding_params = st.builds(
    FundingArbParams,
    notional_usd=_notional,
    hold_h=st.sampled_from([Decimal(8), Decimal(72), Decimal(720)]),
    exit_buffer_bps=st.sampled_from([Decimal(0), Decimal(2)]),
    min_edge_bps=_threshold,
    min_daily_spread_bps=_threshold,
)


def _decided(run: Callable[[], Output]) -> object:
    """The bodies and the skips (symbol, reason) of a run, every reason read; or the
    error it raised (a job at a price of 1E-120 has a quantity no decimal holds: both
    paths raise it alike)."""
    try:
        out = run()
    except ArithmeticError as exc:
        return type(exc)
    return out.bodies, [(s.symbol, s.reason) for s in out.skips]


def _arb(market: Market, venues: dict[str, Venue], params: ArbParams) -> object:
    return _decided(lambda: arb(market, venues, params, NOW))


def _arb_exactly(market: Market, venues: dict[str, Venue], params: ArbParams) -> object:
    """``arb`` with the screen switched off: every symbol valued exactly, as before."""
    with patch.object(arb_module, "_cannot_pay", return_value=False):
        return _arb(market, venues, params)


def _funding(market: Market, venues: dict[str, Venue], params: FundingArbParams) -> object:
    return _decided(lambda: funding_arb(market, venues, params, NOW))


def _funding_exactly(market: Market, venues: dict[str, Venue], params: FundingArbParams) -> object:
    """``funding_arb`` with the screen switched off."""
    with patch.object(funding_module, "_cannot_enter", return_value=False):
        return _funding(market, venues, params)


def _traded(market: Market, venues: dict[str, Venue], symbol: str) -> list[Quote]:
    return market.venues_quoting(symbol, venues)


def _near(value: Decimal) -> list[Decimal]:
    """Thresholds at ``value``'s last digit: just below it, it, just above it (those a
    threshold may take: 0 to 10,000)."""
    return [t for t in (value.next_minus(), value, value.next_plus()) if 0 <= t <= 10_000]


# ---------------------------------------------------------------------------
# Same bodies and skips as the exact path


@hypothesis_settings(max_examples=400, deadline=None)
@given(markets(), arb_params)
def test_arb_screened_decides_and_words_what_the_exact_path_does(
    drawn: tuple[Market, dict[str, Venue]], params: ArbParams
) -> None:
    market, venues = drawn
    assert _arb(market, venues, params) == _arb_exactly(market, venues, params)


@hypothesis_settings(max_examples=400, deadline=None)
@given(markets(), funding_params)
def test_funding_arb_screened_decides_and_words_what_the_exact_path_does(
    drawn: tuple[Market, dict[str, Venue]], params: FundingArbParams
) -> None:
    market, venues = drawn
    assert _funding(market, venues, params) == _funding_exactly(market, venues, params)


@hypothesis_settings(max_examples=300, deadline=None)
@given(markets(), arb_params)
def test_arb_at_the_threshold_an_edge_just_above_it_emits(
    drawn: tuple[Market, dict[str, Venue]], params: ArbParams
) -> None:
    """``min_edge_bps`` set to the exact best edge, one digit below and one above: the
    screen lets through every symbol that pays, and the skip of one that does not is
    worded as before."""
    market, venues = drawn
    sizes = float_sizes(venues, params.notional_usd)
    for symbol in market.symbols():
        quotes = _traded(market, venues, symbol)
        if len(quotes) < 2:
            continue
        edge = arb_module._exact_best(quotes, venues, params, sizes, True)[0]
        if not 0 <= edge < MAX_EDGE_BPS:
            continue
        for threshold in _near(edge):
            at = params.model_copy(update={"min_edge_bps": threshold})
            decided = _arb(market, venues, at)
            assert decided == _arb_exactly(market, venues, at)
            if isinstance(decided, tuple):
                unpaid = [r for s, r in decided[1] if s == symbol and "does not pay" in r]
                assert bool(unpaid) == (edge < threshold)


@hypothesis_settings(max_examples=300, deadline=None)
@given(markets(), funding_params)
def test_funding_arb_at_the_thresholds_a_pair_just_above_them_enters(
    drawn: tuple[Market, dict[str, Venue]], params: FundingArbParams
) -> None:
    """``min_edge_bps`` and ``min_daily_spread_bps`` set to the exact best pair's figures,
    a digit below and above: the same bodies and words as the exact path."""
    market, venues = drawn
    sizes = float_sizes(venues, params.notional_usd)
    for symbol in market.symbols():
        quotes = [q for q in _traded(market, venues, symbol) if q.funding_rate is not None]
        if len(quotes) < 2:
            continue
        best = funding_module._exact_best(quotes, venues, params, sizes, True)
        if best is None:
            continue
        edge, daily = best[0], best[3][4]
        updates: list[dict[str, Decimal]] = [{"min_edge_bps": t} for t in _near(edge)]
        updates += [{"min_daily_spread_bps": t, "min_edge_bps": Decimal(0)} for t in _near(daily)]
        for update in updates:
            at = params.model_copy(update=update)
            decided = _funding(market, venues, at)
            assert decided == _funding_exactly(market, venues, at)
            if isinstance(decided, tuple):
                below = [r for s, r in decided[1] if s == symbol and " < min_" in r]
                assert bool(below) == (daily < at.min_daily_spread_bps or edge < at.min_edge_bps)


# ---------------------------------------------------------------------------
# Every bound is above every exact figure


@hypothesis_settings(max_examples=400, deadline=None)
@given(markets(), arb_params)
def test_arb_bounds_are_above_every_pairs_exact_edge(
    drawn: tuple[Market, dict[str, Venue]], params: ArbParams
) -> None:
    market, venues = drawn
    sizes = float_sizes(venues, params.notional_usd)
    floor = venue_floor(venues, sizes)
    for symbol in market.symbols():
        quotes = _traded(market, venues, symbol)
        edges = [arb_module._best([pair], venues, params) for pair in permutations(quotes, 2)]
        top = max((float(e[0]) for e in edges if e is not None), default=None)
        if top is None:
            continue
        extremes = market.extremes[symbol]
        if extremes is not None and floor is not None:
            assert arb_module._ceiling(extremes, floor) >= top
        book = float_book(quotes, sizes)
        if book is not None:
            assert arb_module._float_ceiling(book) >= top


@hypothesis_settings(max_examples=400, deadline=None)
@given(markets(), funding_params)
def test_funding_arb_bounds_are_above_every_pairs_exact_figures(
    drawn: tuple[Market, dict[str, Venue]], params: FundingArbParams
) -> None:
    market, venues = drawn
    sizes = float_sizes(venues, params.notional_usd)
    floor = venue_floor(venues, sizes)
    hold = float(params.hold_h) / 24
    for symbol in market.symbols():
        quotes = [q for q in _traded(market, venues, symbol) if q.funding_rate is not None]
        valued = [funding_module._pair(a, b, venues, params) for a, b in permutations(quotes, 2)]
        pairs = [v for v in valued if v is not None]
        days = funding_module._days(quotes, sizes)
        if not pairs or days is None:
            continue
        buffer = float(params.exit_buffer_bps)
        top_edge = max(float(v[0]) for v in pairs) + buffer  # the bounds leave it out
        assert funding_module._spread_ceiling(days) >= max(float(v[4]) for v in pairs)
        extremes = market.extremes[symbol]
        if extremes is not None and floor is not None:
            assert funding_module._ceiling(extremes, floor, days, hold) >= top_edge
        book = float_book(quotes, sizes)
        if book is not None:
            assert funding_module._float_ceiling(book, days, hold) >= top_edge


# ---------------------------------------------------------------------------
# The screen decides where it should, and says nothing before it is read


def _calm_market(rates: list[Decimal | None]) -> tuple[Market, dict[str, Venue]]:
    quotes = [
        _quote(n, SYMBOLS[0], Decimal(97_000 + i), Decimal("97000.5") + i, rate)
        for i, (n, rate) in enumerate(zip(NAMES, rates, strict=False))
    ]
    venues = {n: Venue(name=n, taker_fee_bps=Decimal(5), equity_usd=Decimal(10**6)) for n in NAMES}
    return Market.of(quotes, NOW, 10), venues


def test_a_calm_book_is_screened_out_and_a_crossed_one_is_not() -> None:
    market, venues = _calm_market([Decimal("0.0001")] * 4)
    sizes = float_sizes(venues, Decimal(5000))
    quotes = _traded(market, venues, SYMBOLS[0])
    screen = (market.extremes[SYMBOLS[0]], venue_floor(venues, sizes))
    assert arb_module._cannot_pay(quotes, screen, sizes, 1.0)
    crossed = [*quotes[:3], _quote(NAMES[3], SYMBOLS[0], Decimal(98_000), Decimal(98_001), None)]
    wide = Market.of(crossed, NOW, 10)
    screen = (wide.extremes[SYMBOLS[0]], venue_floor(venues, sizes))
    assert not arb_module._cannot_pay(crossed, screen, sizes, 1.0)
    assert arb(wide, venues, ArbParams(), NOW).bodies


@pytest.mark.parametrize("min_daily", [Decimal(1), Decimal(0)])
def test_funding_equal_everywhere_is_said_as_before(min_daily: Decimal) -> None:
    market, venues = _calm_market([Decimal("0.0001")] * 4)
    params = FundingArbParams(min_daily_spread_bps=min_daily)
    sizes = float_sizes(venues, params.notional_usd)
    quotes = _traded(market, venues, SYMBOLS[0])
    screen = (market.extremes[SYMBOLS[0]], venue_floor(venues, sizes))
    assert funding_module._cannot_enter(quotes, screen, sizes, funding_module._Bars.of(params))
    out = funding_arb(market, venues, params, NOW)
    assert [(s.symbol, s.reason) for s in out.skips] == [
        (SYMBOLS[0], "funding is equal on every venue")
    ]


def test_a_skip_reason_is_worded_on_its_first_read_only() -> None:
    calls: list[int] = []

    def word() -> str:
        calls.append(1)
        return "worded"

    out = Output(Strategy.ARB)
    out.skip("X", word)
    out.skip("Y", "plain")
    pairs = out.skip_pairs()
    assert len(pairs) == 2 and calls == []
    assert pairs[1] == ("Y", "plain") and calls == []
    assert pairs[0] == ("X", "worded") and out.skips[0].reason == "worded"
    assert calls == [1]
    assert out.skips == [Skip(Strategy.ARB, "X", "worded"), Skip(Strategy.ARB, "Y", "plain")]
    assert pairs == [("X", "worded"), ("Y", "plain")]


@pytest.mark.parametrize(
    "run",
    [
        lambda m, v: arb(m, v, ArbParams(), NOW),
        lambda m, v: funding_arb(m, v, FundingArbParams(), NOW),
    ],
)
def test_a_lazy_reason_is_worded_in_the_decimal_context_of_its_pass(
    run: Callable[[Market, dict[str, Venue]], Output],
) -> None:
    """A report read in another thread, or after a library changed the thread's context,
    says what the pass would have said."""
    # funding 2.1 bps a day apart: the best pair's edge does not pay its round trip
    market, venues = _calm_market([Decimal("0.0001"), Decimal("0.00015"), Decimal("0.00008")])
    with (
        patch.object(arb_module, "_cannot_pay", return_value=False),
        patch.object(funding_module, "_cannot_enter", return_value=False),
    ):
        eager = [s.reason for s in run(market, venues).skips]
    lazy = run(market, venues)
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 6, ROUND_UP
        assert [s.reason for s in lazy.skips] == eager
    assert len(eager) == 1 and "bps" in eager[0]
