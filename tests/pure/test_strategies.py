"""The strategies: pure decision tests, named by situation and outcome.

Every body a strategy emits must be a job ``perpbot submit`` accepts as it is
(parsed with :func:`perpbot_db.domain.jobspec.parse_job` against the rules), signed
the right way round, scored as the risk manager would score it, keyed
deterministically, and absent when the edge does not pay the fees.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from perpbot_db.domain.decisions import DecisionCode
from perpbot_db.domain.jobspec import JobSpec, SubmissionRules, parse_job
from perpbot_db.domain.lifecycle import RiskMode, Side, Strategy
from perpbot_db.domain.risk import JobView, LegView, MarketView, assess
from perpbot_db.domain.strategies.arb import ArbParams, arb, closing_cost_bps
from perpbot_db.domain.strategies.base import (
    Entry,
    Market,
    OpenPair,
    Quote,
    Venue,
    window_start,
)
from perpbot_db.domain.strategies.funding_arb import (
    FundingArbParams,
    funding_arb,
    position_pnl_bps,
)
from perpbot_db.domain.strategies.hedge_rebalance import (
    RebalanceParams,
    RebalanceState,
    Residual,
    hedge_rebalance,
)
from perpbot_db.domain.strategies.volume import (
    VenueDay,
    VolumeParams,
    VolumeState,
    cost_per_volume_bps,
    volume,
)

NOW = datetime(2026, 12, 2, 14, 0, 1, tzinfo=UTC)
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
NAMES = ("binance", "bybit", "okx")
RULES = SubmissionRules(exchanges=frozenset(NAMES))


def quote(exchange: str, bid: str, spread: str = "1", symbol: str = BTC, **kw: Any) -> Quote:
    fields: dict[str, Any] = {
        "exchange": exchange,
        "symbol": symbol,
        "bid": Decimal(bid),
        "ask": Decimal(bid) + Decimal(spread),
        "last": Decimal(bid),
        "funding_rate": Decimal("0.0001"),
        "volatility": Decimal("0.005"),
        "latency_ms": Decimal(40),
        "observed_at": NOW - timedelta(seconds=1),
    }
    fields.update(kw)
    return Quote(**fields)


def market(*quotes: Quote) -> Market:
    return Market.of(quotes, NOW, 10)


def venues(**overrides: dict[str, Any]) -> dict[str, Venue]:
    out = {}
    for name in NAMES:
        fields: dict[str, Any] = {
            "name": name,
            "taker_fee_bps": Decimal(5),
            "equity_usd": Decimal(500_000),
        }
        fields.update(overrides.get(name, {}))
        out[name] = Venue(**fields)
    return out


def parsed(body: dict[str, Any]) -> JobSpec:
    result = parse_job(json.dumps(body), RULES, NOW)
    assert not isinstance(result, list), result
    return result


def sides(spec: JobSpec) -> dict[str, Side]:
    return {leg.exchange: leg.side for leg in spec.legs}


def assessed(spec: JobSpec, quotes: list[Quote], given: bool) -> Any:
    """The risk manager's view of ``spec`` (with or without its own components)."""
    scores = {
        name: getattr(spec, name) if given else None
        for name in ("risk_score", "latency_score", "vol_score", "funding_score", "liquidity_score")
    }
    job = JobView(
        id=1,
        strategy=spec.strategy,
        symbol=spec.symbol,
        notional_usd=spec.notional_usd,
        expected_edge_bps=spec.expected_edge_bps,
        expected_pnl_usd=spec.expected_pnl_usd,
        expected_volume_usd=spec.expected_volume_usd,
        legs=tuple(LegView(leg.exchange, leg.side, leg.quantity) for leg in spec.legs),
        closes_position=(spec.metadata or {}).get("phase") == "close",  # as the tick reads it
        **scores,
    )
    markets = {
        (q.exchange, q.symbol): MarketView(
            exchange=q.exchange,
            symbol=q.symbol,
            bid=q.bid,
            ask=q.ask,
            last=q.last,
            funding_rate=q.funding_rate,
            volatility=q.volatility,
            latency_ms=q.latency_ms,
            observed_at=q.observed_at,
        )
        for q in quotes
    }
    equity = {name: Decimal(500_000) for name in NAMES}
    return assess(job, markets, equity, RiskMode.BALANCED, NOW)


# -- funding-rate arbitrage ----------------------------------------------------------


FUNDING_QUOTES = [
    quote("binance", "97000", funding_rate=Decimal("0.0001")),
    quote("okx", "97000", funding_rate=Decimal("0.0009")),
    quote("bybit", "97000", funding_rate=Decimal("0.0002")),
]


def test_funding_arb_when_okx_pays_more_then_long_binance_short_okx() -> None:
    out = funding_arb(market(*FUNDING_QUOTES), venues(), FundingArbParams(), NOW)
    (body,) = out.bodies
    spec = parsed(body)
    assert spec.strategy is Strategy.FUNDING_ARB
    assert sides(spec) == {"binance": Side.BUY, "okx": Side.SELL}
    # 8 bps per 8 h = 24 bps a day, 72 h held = 72 bps, less the gap (1 USD of 97000 is
    # ~0.1 bps), 4 taker fees (20), the exit buffer (2) and slippage
    assert Decimal(49) < spec.expected_edge_bps < Decimal(50)
    assert spec.expected_pnl_usd == pytest.approx(
        spec.expected_edge_bps * spec.notional_usd / 10_000, rel=Decimal("1e-3")
    )
    assert spec.deadline == NOW + timedelta(seconds=30)


def test_funding_arb_normalises_rates_per_day_by_each_venues_interval() -> None:
    # bybit pays 0.0003 per hour = 72 bps a day: more than okx's 0.0009 per 8 h (27 a day)
    quotes = [*FUNDING_QUOTES[:2], replace(FUNDING_QUOTES[2], funding_rate=Decimal("0.0003"))]
    hourly = venues(bybit={"funding_interval_h": Decimal(1)})
    (body,) = funding_arb(market(*quotes), hourly, FundingArbParams(), NOW).bodies
    assert sides(parsed(body)) == {"binance": Side.BUY, "bybit": Side.SELL}
    # the same rates, all per 8 h: okx is the dearest again
    (body,) = funding_arb(market(*quotes), venues(), FundingArbParams(), NOW).bodies
    assert sides(parsed(body)) == {"binance": Side.BUY, "okx": Side.SELL}


def test_funding_arb_when_the_spread_does_not_pay_round_trip_fees_then_nothing() -> None:
    # 1 bps per 8 h apart: 9 bps over 72 h, against 20 bps of taker fees and the buffer
    quotes = [
        quote("binance", "97000", funding_rate=Decimal("0.0001")),
        quote("okx", "97000", funding_rate=Decimal("0.0002")),
    ]
    out = funding_arb(market(*quotes), venues(), FundingArbParams(), NOW)
    assert out.bodies == []
    ((symbol, reason),) = [(s.symbol, s.reason) for s in out.skips]
    assert symbol == BTC and "min_edge_bps" in reason


def test_funding_arb_fees_decide_the_same_spread() -> None:
    quotes = [
        quote("binance", "97000", funding_rate=Decimal("0.0001")),
        quote("okx", "97000", funding_rate=Decimal("0.0004")),
    ]  # 9 bps a day apart: 27 bps over 72 h
    cheap = venues(**{n: {"taker_fee_bps": Decimal(2)} for n in NAMES})
    assert len(funding_arb(market(*quotes), cheap, FundingArbParams(), NOW).bodies) == 1
    dear = venues(**{n: {"taker_fee_bps": Decimal(7)} for n in NAMES})
    assert funding_arb(market(*quotes), dear, FundingArbParams(), NOW).bodies == []


def test_funding_arb_scores_match_the_risk_managers_and_it_is_admitted_in_balanced_mode() -> None:
    (body,) = funding_arb(market(*FUNDING_QUOTES), venues(), FundingArbParams(), NOW).bodies
    spec = parsed(body)
    mine = assessed(spec, FUNDING_QUOTES, given=True)
    theirs = assessed(spec, FUNDING_QUOTES, given=False)
    for name in ("risk", "latency", "volume", "funding", "liquidity"):
        assert getattr(mine.components, name) == pytest.approx(
            getattr(theirs.components, name), abs=Decimal("0.01")
        ), name
    assert mine.decision.code is DecisionCode.ADMITTED, mine.decision


def test_funding_arb_enters_a_symbol_once_while_its_position_is_open_or_opening() -> None:
    out = funding_arb(market(*FUNDING_QUOTES), venues(), FundingArbParams(), NOW, held={BTC})
    assert out.bodies == []
    assert out.skips[0].reason == "a funding position is open or opening (one per symbol)"


FUNDING_PAIR = OpenPair(
    key="fra:BTC-USDT:binance>okx:20261202T000000Z",
    symbol=BTC,
    long_exchange="binance",
    short_exchange="okx",
    quantity=Decimal("0.05"),
    close_after=NOW + timedelta(hours=1),
    strategy=Strategy.FUNDING_ARB,
)


def _funding_closes(pair: OpenPair, quotes: list[Quote], **params: Any) -> list[JobSpec]:
    out = funding_arb(
        market(*quotes), venues(), FundingArbParams(**params), NOW, {BTC}, open_pairs=[pair]
    )
    return [parsed(b) for b in out.bodies]


def test_funding_arb_opening_records_its_hold_for_the_close() -> None:
    (body,) = funding_arb(market(*FUNDING_QUOTES), venues(), FundingArbParams(), NOW).bodies
    assert body["metadata"]["phase"] == "open"
    assert datetime.fromisoformat(body["metadata"]["close_after"]) == NOW + timedelta(hours=72)


def test_funding_arb_closes_a_position_past_its_hold_once_with_the_mirror_legs() -> None:
    due = replace(FUNDING_PAIR, close_after=NOW - timedelta(seconds=1))
    # the spread still earns (okx pays more): only the hold closes it
    (spec,) = _funding_closes(due, FUNDING_QUOTES)
    assert spec.strategy is Strategy.FUNDING_ARB
    assert spec.idempotency_key == "fra:BTC-USDT:binance>okx:20261202T000000Z:close"
    assert sides(spec) == {"binance": Side.SELL, "okx": Side.BUY}
    assert {leg.quantity for leg in spec.legs} == {Decimal("0.05")}
    assert spec.metadata["opens"] == due.key and spec.metadata["why"] == "hold_passed"
    assert spec.deadline == NOW + timedelta(seconds=300)
    assert _funding_closes(due, FUNDING_QUOTES) == [spec]  # the same pass again: the same key


def test_funding_arb_closes_before_the_hold_when_the_spread_flipped() -> None:
    # binance (long) now pays 9 bps per 8 h, okx (short) 1: 24 bps a day against the pair
    flipped = [
        quote("binance", "97000", funding_rate=Decimal("0.0009")),
        quote("okx", "97000", funding_rate=Decimal("0.0001")),
    ]
    (spec,) = _funding_closes(FUNDING_PAIR, flipped)
    assert spec.metadata["why"] == "funding_flipped"
    assert sides(spec) == {"binance": Side.SELL, "okx": Side.BUY}
    # within the threshold it is held
    assert _funding_closes(FUNDING_PAIR, flipped, exit_spread_bps_per_day=Decimal(25)) == []


def test_funding_arb_keeps_a_fresh_position_whose_spread_still_earns() -> None:
    assert _funding_closes(FUNDING_PAIR, FUNDING_QUOTES) == []
    # equal funding is not against it either (threshold 0 is "more than 0")
    equal = [quote("binance", "97000"), quote("okx", "97000")]
    assert _funding_closes(FUNDING_PAIR, equal) == []


def test_a_lost_close_is_sent_again_under_the_next_key() -> None:
    due = replace(FUNDING_PAIR, close_after=NOW - timedelta(seconds=1), failed_closes=2)
    (spec,) = _funding_closes(due, FUNDING_QUOTES)
    assert spec.idempotency_key == f"{due.key}:close:2"
    assert replace(due, failed_closes=1).close_key == f"{due.key}:close:1"
    assert replace(due, failed_closes=0).close_key == f"{due.key}:close"


# bought 0.05 at 97001 on binance, sold 0.05 at 97000 on okx a day ago, 4.85 USD of fees
HELD = replace(
    FUNDING_PAIR,
    entry=Entry(
        long_price=Decimal(97001),
        short_price=Decimal(97000),
        fees_usd=Decimal("4.85"),
        opened_at=NOW - timedelta(days=1),
        daily_spread_bps=Decimal(24),
    ),
)


def test_funding_arb_takes_profit_once_the_positions_pnl_reaches_it() -> None:
    # binance's bid rose to 98000, funding is now equal (nothing more earned: the lower
    # of the entry's 24 bps a day and today's 0 counts): the long leg sells 999 USD a
    # unit above its entry, the short buys back 1 USD above; less the opening's fees
    # and the close's taker fees (5 bps of each leg at the closing prices)
    up = [quote("binance", "98000"), quote("okx", "97000")]
    notional = Decimal("0.05") * Decimal("97000.5")
    close_fees = Decimal("0.05") * (Decimal(98000) + Decimal(97001)) * 5 / 10_000
    expected = (Decimal("0.05") * (999 - 1) - Decimal("4.85") - close_fees) / notional * 10_000
    pnl = position_pnl_bps(HELD, market(*up), venues(), NOW)
    assert pnl == pytest.approx(expected) and Decimal(82) < expected < Decimal(83)

    (spec,) = _funding_closes(HELD, up, take_profit_bps=Decimal(80))
    assert spec.metadata["why"] == "take_profit"
    assert Decimal(spec.metadata["pnl_bps"]) == pytest.approx(expected, abs=Decimal("0.01"))
    assert spec.idempotency_key == f"{HELD.key}:close"
    assert sides(spec) == {"binance": Side.SELL, "okx": Side.BUY}
    # below the take-profit, without one (the default), or without the entry's prices: held
    assert _funding_closes(HELD, up, take_profit_bps=Decimal(83)) == []
    assert _funding_closes(HELD, up) == []
    assert _funding_closes(FUNDING_PAIR, up, take_profit_bps=Decimal(1)) == []


def test_funding_arb_take_profit_counts_the_funding_held_at_the_lower_rate() -> None:
    # prices where they were at entry; two days at 24 bps a day (FUNDING_QUOTES still
    # pay 24): 48 bps of funding, less a 1 USD spread on each leg and four taker fees
    two_days = replace(HELD, entry=replace(HELD.entry, opened_at=NOW - timedelta(days=2)))
    pnl = position_pnl_bps(two_days, market(*FUNDING_QUOTES), venues(), NOW)
    assert pnl is not None and Decimal(27) < pnl < Decimal(28)
    (spec,) = _funding_closes(two_days, FUNDING_QUOTES, take_profit_bps=Decimal(25))
    assert spec.metadata["why"] == "take_profit"
    # today's spread fell to 6 bps a day: the estimate counts 6 a day, not 24
    lower = [
        quote("binance", "97000", funding_rate=Decimal("0.0001")),
        quote("okx", "97000", funding_rate=Decimal("0.0003")),
    ]
    pnl = position_pnl_bps(two_days, market(*lower), venues(), NOW)
    assert pnl is not None and pnl < Decimal(0)
    assert _funding_closes(two_days, lower, take_profit_bps=Decimal(25)) == []


def test_funding_arb_take_profit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="take_profit_bps"):
        FundingArbParams(take_profit_bps=Decimal(0))


def test_funding_arb_closes_even_when_disabled() -> None:
    due = replace(FUNDING_PAIR, close_after=NOW - timedelta(seconds=1))
    assert len(_funding_closes(due, FUNDING_QUOTES, enabled=False)) == 1


def test_a_funding_close_is_admitted_by_the_risk_manager_in_balanced_mode() -> None:
    due = replace(FUNDING_PAIR, close_after=NOW - timedelta(seconds=1))
    (spec,) = _funding_closes(due, FUNDING_QUOTES)
    verdict = assessed(spec, FUNDING_QUOTES, given=True)
    assert verdict.decision.code is DecisionCode.ADMITTED, verdict.decision
    # judged as what it is, a flattening: gross cost, not a negative edge against the spread
    (spread,) = [r for r in verdict.readings if r.dimension.value == "spread"]
    assert dict(spread.context)["basis"] == "gross_cost"
    # the same legs as an entry would pay the spread and fees against no edge: refused
    entry = spec.model_copy(update={"metadata": {"source": "funding_arb"}})
    refused = assessed(entry, FUNDING_QUOTES, given=True)
    assert refused.decision.code is not DecisionCode.ADMITTED


# -- price-spread arbitrage ----------------------------------------------------------


def test_arb_when_okx_ask_is_below_bybit_bid_then_buy_okx_sell_bybit() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97200"), quote("binance", "97100")]
    out = arb(market(*quotes), venues(), ArbParams(), NOW)
    (body,) = out.bodies
    spec = parsed(body)
    assert sides(spec) == {"okx": Side.BUY, "bybit": Side.SELL}
    # gap (97200 - 97001) / 97100 = 20.5 bps, less 10 bps of fees and slippage
    assert Decimal(10) < spec.expected_edge_bps < Decimal("10.5")
    assert spec.deadline == NOW + timedelta(seconds=5)
    assert assessed(spec, quotes, given=True).decision.code is DecisionCode.ADMITTED


def test_arb_takes_no_second_job_on_a_symbol_while_one_is_on_its_way() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97200")]
    out = arb(market(*quotes), venues(), ArbParams(), NOW, busy={BTC})
    assert out.bodies == [] and out.skips[0].reason == "an arb job for it is on its way"


ARB_PAIR = OpenPair(
    key="arb:BTC-USDT:okx>bybit:20261202T135955Z",
    symbol=BTC,
    long_exchange="okx",
    short_exchange="bybit",
    quantity=Decimal("0.05"),
    close_after=NOW + timedelta(seconds=290),
    strategy=Strategy.ARB,
)


def _arb_closes(pair: OpenPair, quotes: list[Quote], **params: Any) -> list[JobSpec]:
    out = arb(market(*quotes), venues(), ArbParams(**params), NOW, {BTC}, open_pairs=[pair])
    return [parsed(b) for b in out.bodies]


def test_arb_opening_records_when_its_pair_must_be_closed() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97200")]
    (body,) = arb(market(*quotes), venues(), ArbParams(), NOW).bodies
    assert body["metadata"]["phase"] == "open"
    assert datetime.fromisoformat(body["metadata"]["close_after"]) == NOW + timedelta(seconds=300)


def test_arb_closes_a_pair_once_the_prices_converged() -> None:
    converged = [quote("okx", "97100"), quote("bybit", "97100")]  # a 1 USD spread: ~0.1 bps
    assert closing_cost_bps(ARB_PAIR, market(*converged)) < 1
    (spec,) = _arb_closes(ARB_PAIR, converged)
    assert spec.idempotency_key == f"{ARB_PAIR.key}:close"
    assert sides(spec) == {"okx": Side.SELL, "bybit": Side.BUY}
    assert {leg.quantity for leg in spec.legs} == {Decimal("0.05")}
    assert spec.metadata["why"] == "converged" and spec.strategy is Strategy.ARB
    assert spec.deadline == NOW + timedelta(seconds=300)
    verdict = assessed(spec, converged, given=True)
    assert verdict.decision.code is DecisionCode.ADMITTED, verdict.decision


def test_arb_holds_a_pair_still_apart_until_its_time_is_up() -> None:
    apart = [quote("okx", "97000"), quote("bybit", "97200")]  # selling okx, buying bybit: 20 bps
    assert _arb_closes(ARB_PAIR, apart) == []
    (spec,) = _arb_closes(replace(ARB_PAIR, close_after=NOW), apart)
    assert spec.metadata["why"] == "time_up"
    assert replace(ARB_PAIR, failed_closes=3).close_key == f"{ARB_PAIR.key}:close:3"


def test_arb_when_the_gap_does_not_pay_both_taker_fees_then_nothing() -> None:
    # 9.3 bps between okx's ask and bybit's bid: below 5 + 5 bps of taker fees
    quotes = [quote("okx", "97000"), quote("bybit", "97091")]
    out = arb(market(*quotes), venues(), ArbParams(min_edge_bps=Decimal(0)), NOW)
    assert out.bodies == []
    assert "does not pay costs" in out.skips[0].reason


def test_arb_slippage_at_size_can_eat_the_edge() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97110")]  # 11.2 bps: pays fees alone
    small = arb(market(*quotes), venues(), ArbParams(notional_usd=Decimal(1000)), NOW)
    assert len(small.bodies) == 1
    big = venues(**{n: {"equity_usd": Decimal(10**9)} for n in NAMES})
    large = arb(market(*quotes), big, ArbParams(notional_usd=Decimal(5_000_000)), NOW)
    assert large.bodies == []


def test_arb_idempotency_key_is_the_same_within_its_window_and_new_after() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97200")]
    first = arb(market(*quotes), venues(), ArbParams(), NOW).bodies
    again = arb(market(*quotes), venues(), ArbParams(), NOW + timedelta(seconds=1)).bodies
    later = arb(market(*quotes), venues(), ArbParams(), NOW + timedelta(seconds=5)).bodies
    assert first[0]["idempotency_key"] == again[0]["idempotency_key"]
    assert later[0]["idempotency_key"] != first[0]["idempotency_key"]
    assert first[0]["idempotency_key"] == "arb:BTC-USDT:okx>bybit:20261202T140000Z"


def test_a_job_stays_within_the_smallest_venues_single_job_cap() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97200")]
    small = venues(bybit={"equity_usd": Decimal(20_000)})  # cap 2,000 USD
    (body,) = arb(market(*quotes), small, ArbParams(notional_usd=Decimal(5000)), NOW).bodies
    spec = parsed(body)
    for leg in spec.legs:
        assert leg.quantity * Decimal(97200) <= Decimal(2000)
    assert spec.notional_usd <= Decimal(2000)


def test_stale_or_crossed_quotes_are_not_traded() -> None:
    stale = quote("bybit", "97200", observed_at=NOW - timedelta(seconds=30))
    crossed = quote("binance", "97300", spread="-5")
    out = arb(market(quote("okx", "97000"), stale, crossed), venues(), ArbParams(), NOW)
    assert out.bodies == []
    assert out.skips[0].reason == "fewer than two venues quote it"


def test_a_venue_in_safe_mode_gets_no_arbitrage() -> None:
    quotes = [quote("okx", "97000"), quote("bybit", "97200")]
    locked = venues(bybit={"safe_mode": True})
    assert arb(market(*quotes), locked, ArbParams(), NOW).bodies == []


# -- hedged volume -------------------------------------------------------------------

CALM = [quote(n, "97000", funding_rate=Decimal(f"0.000{i + 1}")) for i, n in enumerate(NAMES)]


def test_volume_opens_a_delta_neutral_pair_long_where_funding_is_lower() -> None:
    out = volume(market(*CALM), venues(), VolumeParams(), VolumeState(), NOW, random.Random(3))
    (body,) = out.bodies
    spec = parsed(body)
    legs = {leg.exchange: leg for leg in spec.legs}
    assert len(legs) == 2
    (buy,) = [leg for leg in spec.legs if leg.side is Side.BUY]
    (sell,) = [leg for leg in spec.legs if leg.side is Side.SELL]
    assert buy.quantity == sell.quantity
    funding = {q.exchange: q.funding_rate for q in CALM}
    assert funding[buy.exchange] < funding[sell.exchange]  # type: ignore[operator]
    assert Decimal(1000) <= spec.notional_usd <= Decimal(5000)
    assert spec.expected_edge_bps < 0  # volume pays its fees
    assert spec.metadata["phase"] == "open"
    assert 5 <= spec.metadata["hold_s"] <= 20
    assert spec.vol_score == 100  # nothing done today yet


def test_volume_is_reproducible_for_a_seed_and_random_across_seeds() -> None:
    def run(seed: int) -> dict[str, Any]:
        out = volume(
            market(*CALM), venues(), VolumeParams(), VolumeState(), NOW, random.Random(seed)
        )
        return out.bodies[0]

    assert run(1) == run(1)
    drawn = {(run(s)["notional_usd"], run(s)["metadata"]["hold_s"]) for s in range(8)}
    assert len(drawn) == 8


def test_volume_closes_a_pair_whose_hold_has_passed_once_keyed_by_its_opening() -> None:
    pair = OpenPair(
        key="vol:open:20261202T135950Z",
        symbol=BTC,
        long_exchange="okx",
        short_exchange="binance",
        quantity=Decimal("0.03"),
        close_after=NOW - timedelta(seconds=1),
    )
    waiting = replace(pair, key="vol:open:20261202T135955Z", close_after=NOW + timedelta(seconds=9))
    state = VolumeState(open_pairs=[pair, waiting])
    params = VolumeParams(max_open_pairs=1)  # the waiting pair fills the one slot
    out = volume(market(*CALM), venues(), params, state, NOW, random.Random(3))
    (body,) = out.bodies
    spec = parsed(body)
    assert spec.idempotency_key == "vol:open:20261202T135950Z:close"
    assert sides(spec) == {"okx": Side.SELL, "binance": Side.BUY}
    assert {leg.quantity for leg in spec.legs} == {Decimal("0.03")}
    assert spec.metadata == {"source": "volume", "phase": "close", "opens": pair.key}
    assert "max_open_pairs" in out.skips[0].reason


def test_volume_stops_opening_past_its_cost_budget_but_still_closes() -> None:
    # 12 bps of fees per volume today: over the 8 bps budget
    days = {
        "okx": VenueDay("okx", Decimal(100_000), Decimal(120), Decimal(-120)),
        "binance": VenueDay("binance", Decimal(100_000), Decimal(120), Decimal(-120)),
    }
    assert cost_per_volume_bps(days) == Decimal(12)
    due = OpenPair("vol:open:x", BTC, "okx", "binance", Decimal("0.01"), NOW)
    over = VolumeState(days=days, open_pairs=[due])
    out = volume(market(*CALM), venues(), VolumeParams(), over, NOW, random.Random(1))
    assert [b["metadata"]["phase"] for b in out.bodies] == ["close"]
    assert "max_cost_bps" in out.skips[0].reason
    # within budget (4 bps) it opens again
    cheap = {
        k: replace(d, fees_usd=Decimal(40), realized_pnl_usd=Decimal(-40)) for k, d in days.items()
    }
    out = volume(
        market(*CALM), venues(), VolumeParams(), VolumeState(days=cheap), NOW, random.Random(1)
    )
    assert [b["metadata"]["phase"] for b in out.bodies] == ["open"]


def test_volume_counts_trading_losses_beyond_fees_against_its_budget() -> None:
    # 5 bps of fees, and 5 bps lost crossing spreads (PnL is booked net of fees)
    days = {"okx": VenueDay("okx", Decimal(100_000), Decimal(50), Decimal(-100))}
    assert cost_per_volume_bps(days) == Decimal(10)


def test_volume_trades_where_the_daily_target_is_still_far() -> None:
    days = {"binance": VenueDay("binance", Decimal(2_000_000), Decimal(0), Decimal(0))}
    out = volume(
        market(*CALM), venues(), VolumeParams(max_cost_bps=Decimal(100)), VolumeState(days=days),
        NOW, random.Random(5),
    )  # fmt: skip
    (body,) = out.bodies
    assert set(sides(parsed(body))) == {"bybit", "okx"}  # binance met its target


def test_volume_key_is_one_per_window() -> None:
    a = volume(market(*CALM), venues(), VolumeParams(), VolumeState(), NOW, random.Random(1))
    b = volume(market(*CALM), venues(), VolumeParams(), VolumeState(), NOW, random.Random(2))
    assert a.bodies[0]["idempotency_key"] == b.bodies[0]["idempotency_key"]
    assert a.bodies[0]["idempotency_key"] == (
        f"vol:open:{window_start(NOW, 5).strftime('%Y%m%dT%H%M%SZ')}"
    )


# -- hedge rebalancer ----------------------------------------------------------------


def test_rebalance_closes_a_residual_long_on_one_exchange_across_two() -> None:
    state = RebalanceState(residuals=[Residual("binance", BTC, Decimal("0.02"))])
    out = hedge_rebalance(market(*CALM), venues(), RebalanceParams(), state, NOW)
    (body,) = out.bodies
    spec = parsed(body)
    assert spec.strategy is Strategy.HEDGE_REBALANCE
    assert all(leg.side is Side.SELL for leg in spec.legs)
    assert sum(leg.quantity for leg in spec.legs) == Decimal("0.02")  # net back to zero
    assert "binance" in sides(spec) and len(spec.legs) == 2
    assert spec.idempotency_key == "rebal:BTC-USDT:0"
    assert assessed(spec, CALM, given=True).decision.code is DecisionCode.ADMITTED


def test_rebalance_reduces_each_holder_of_a_split_residual() -> None:
    state = RebalanceState(
        residuals=[
            Residual("binance", BTC, Decimal("-0.01")),
            Residual("okx", BTC, Decimal("-0.03")),
            Residual("bybit", BTC, Decimal("0.01")),
        ]
    )
    (body,) = hedge_rebalance(market(*CALM), venues(), RebalanceParams(), state, NOW).bodies
    legs = {leg.exchange: (leg.side, leg.quantity) for leg in parsed(body).legs}
    # net short 0.03: bought back on the two short venues, 3:1 as they hold it
    assert legs == {"okx": (Side.BUY, Decimal("0.0225")), "binance": (Side.BUY, Decimal("0.0075"))}


def test_rebalance_waits_for_the_one_on_its_way_and_starts_a_new_round_after() -> None:
    residual = [Residual("okx", BTC, Decimal("0.02"))]
    busy = RebalanceState(residuals=residual, rounds={BTC: 1}, in_flight=frozenset({BTC}))
    out = hedge_rebalance(market(*CALM), venues(), RebalanceParams(), busy, NOW)
    assert out.bodies == [] and "on its way" in out.skips[0].reason
    done = RebalanceState(residuals=residual, rounds={BTC: 1})
    (body,) = hedge_rebalance(market(*CALM), venues(), RebalanceParams(), done, NOW).bodies
    assert body["idempotency_key"] == "rebal:BTC-USDT:1"


def test_rebalance_ignores_a_flat_symbol_and_dust() -> None:
    state = RebalanceState(
        residuals=[
            Residual("okx", BTC, Decimal("0.02")),
            Residual("binance", BTC, Decimal("-0.02")),  # hedged across venues: delta zero
            Residual("okx", ETH, Decimal("0.000001")),
        ]
    )
    quotes = [*CALM, quote("okx", "3100", symbol=ETH), quote("bybit", "3100", symbol=ETH)]
    out = hedge_rebalance(market(*quotes), venues(), RebalanceParams(), state, NOW)
    assert out.bodies == []
    assert [(s.symbol, s.reason) for s in out.skips] == [
        (ETH, "net residual 0.000001 is worth less than min_usd 10")
    ]


def test_rebalance_may_use_a_venue_in_safe_mode() -> None:
    state = RebalanceState(residuals=[Residual("okx", BTC, Decimal("0.02"))])
    locked = venues(okx={"safe_mode": True})
    (body,) = hedge_rebalance(market(*CALM), locked, RebalanceParams(), state, NOW).bodies
    assert "okx" in sides(parsed(body))


# -- every strategy, any market --------------------------------------------------------

_price = st.decimals(min_value=Decimal(90_000), max_value=Decimal(100_000), places=1)
_rate = st.decimals(min_value=Decimal("-0.003"), max_value=Decimal("0.003"), places=6)


@st.composite
def markets(draw: st.DrawFn) -> list[Quote]:
    return [
        quote(
            name,
            str(draw(_price)),
            spread=str(
                draw(st.decimals(min_value=Decimal("0.1"), max_value=Decimal(50), places=1))
            ),
            funding_rate=draw(_rate),
            volatility=draw(st.decimals(min_value=Decimal(0), max_value=Decimal("0.1"), places=4)),
        )
        for name in draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=3, unique=True))
    ]


def _all_bodies(quotes: list[Quote], seed: int) -> list[dict[str, Any]]:
    m, v = market(*quotes), venues(bybit={"funding_interval_h": Decimal(1)})
    residual = RebalanceState(residuals=[Residual(quotes[0].exchange, BTC, Decimal("0.05"))])
    outputs = [
        funding_arb(m, v, FundingArbParams(hold_h=Decimal(24 * 30)), NOW),
        arb(m, v, ArbParams(), NOW),
        volume(m, v, VolumeParams(), VolumeState(), NOW, random.Random(seed)),
        hedge_rebalance(m, v, RebalanceParams(), residual, NOW),
    ]
    return [b for out in outputs for b in out.bodies]


@hypothesis_settings(max_examples=150, deadline=None)
@given(markets(), st.integers(0, 1000))
def test_every_body_is_a_valid_job_on_distinct_exchanges_with_scores_in_range(
    quotes: list[Quote], seed: int
) -> None:
    bodies = _all_bodies(quotes, seed)
    assert _all_bodies(quotes, seed) == bodies  # same inputs, same jobs and keys
    for body in bodies:
        spec = parsed(body)
        assert len({leg.exchange for leg in spec.legs}) == len(spec.legs)
        for name in (
            "risk_score",
            "latency_score",
            "vol_score",
            "funding_score",
            "liquidity_score",
        ):
            value = getattr(spec, name)
            assert value is not None and 0 <= value <= 100
        if spec.strategy in (Strategy.ARB, Strategy.FUNDING_ARB):
            assert spec.expected_edge_bps >= 0  # nothing that does not pay its fees
        assert spec.deadline is not None and spec.deadline > NOW


def test_without_a_fresh_quote_each_strategy_says_so() -> None:
    stale = market(quote("okx", "97000", observed_at=NOW - timedelta(minutes=5)))
    outputs = [
        funding_arb(stale, venues(), FundingArbParams(), NOW),
        arb(stale, venues(), ArbParams(), NOW),
        volume(stale, venues(), VolumeParams(), VolumeState(), NOW, random.Random(1)),
    ]
    for out in outputs:
        assert out.bodies == []
        assert [s.reason for s in out.skips] == [
            "no fresh, usable quote (none stored, or older than max_quote_age_s)"
        ]
