"""Risk manager: pure decision tests, named by situation and outcome.

No database: :func:`perpbot_db.domain.risk.assess` is a function of plain values, so
every hard and soft limit of every mode is exercised directly, and hypothesis
proves the properties DESIGN.md asks for (hard limits hold whatever the
score, scores stay in 0-100, rise with edge and fall with risk).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpbot_db.domain import risk
from perpbot_db.domain.decisions import DecisionCode
from perpbot_db.domain.lifecycle import RiskMode, Side, Strategy
from perpbot_db.domain.risk import (
    COMPONENTS,
    HARD_CODE,
    LIMITS,
    SOFT_CODE,
    WEIGHTS,
    Assessment,
    Dimension,
    JobView,
    LegView,
    MarketView,
    ModeLimits,
    ScoreComponents,
    assess,
    is_fast_market,
    market_open,
)

D = Decimal
NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SYMBOL = "BTC/USDT:USDT"
PRICE = D(100_000)
MODES = tuple(RiskMode)
BIG_EQUITY = D(1_000_000_000)
Markets = dict[tuple[str, str], MarketView]


# ---------------------------------------------------------------------------
# Builders: a calm, liquid market and a small, well-hedged arb job


def book(spread_bps: Decimal) -> tuple[Decimal, Decimal]:
    """bid, ask around PRICE with exactly this spread (mid stays PRICE)."""
    half = spread_bps * PRICE / D(20_000)
    return PRICE - half, PRICE + half


def market(exchange: str, **changes: object) -> MarketView:
    bid, ask = book(D("0.1"))
    view = MarketView(
        exchange=exchange,
        symbol=SYMBOL,
        bid=bid,
        ask=ask,
        last=PRICE,
        funding_rate=D(0),
        volatility=D("0.001"),
        latency_ms=D(20),
        observed_at=NOW - timedelta(seconds=1),
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def markets(*views: MarketView) -> Markets:
    if not views:
        views = (market("binance"), market("okx"))
    return {(v.exchange, v.symbol): v for v in views}


def job(**changes: object) -> JobView:
    base = JobView(
        id=1,
        strategy=Strategy.ARB,
        symbol=SYMBOL,
        notional_usd=D(1000),
        expected_edge_bps=D(20),
        expected_pnl_usd=D(2),
        legs=(LegView("binance", Side.BUY, D("0.01")), LegView("okx", Side.SELL, D("0.01"))),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def all_given(**changes: object) -> JobView:
    """A job that gives every component it may: the score moves only by penalties."""
    return job(
        risk_score=D(0),
        latency_score=D(100),
        vol_score=D(100),
        funding_score=D(100),
        liquidity_score=D(100),
        **changes,
    )


EQUITY: Mapping[str, Decimal] = {"binance": BIG_EQUITY, "okx": BIG_EQUITY}


def run(
    j: JobView | None = None,
    m: Markets | None = None,
    equity: Mapping[str, Decimal] | None = None,
    mode: RiskMode = RiskMode.BALANCED,
    now: datetime = NOW,
    limits: Mapping[RiskMode, ModeLimits] = LIMITS,
) -> Assessment:
    return assess(
        j if j is not None else job(),
        m if m is not None else markets(),
        EQUITY if equity is None else equity,
        mode,
        now,
        limits,
    )


def soft_dimensions(a: Assessment) -> list[str]:
    return [note.context["soft_limit"] for note in a.soft]


# ---------------------------------------------------------------------------
# Scenarios that put one dimension at an exact value


SPREAD_CASES = {
    "spread_arb": Strategy.ARB,
    "spread_volume": Strategy.VOLUME,
    "spread_rebalance": Strategy.HEDGE_REBALANCE,
}
CASES = (*SPREAD_CASES, "funding", "latency", "volatility", "leverage")
CASE_DIMENSION = {
    **dict.fromkeys(SPREAD_CASES, Dimension.SPREAD),
    "funding": Dimension.FUNDING,
    "latency": Dimension.LATENCY,
    "volatility": Dimension.VOLATILITY,
    "leverage": Dimension.LEVERAGE,
}


def bounds(case: str, mode: RiskMode) -> tuple[Decimal, Decimal]:
    strategy = SPREAD_CASES.get(case, Strategy.ARB)
    return LIMITS[mode].bounds(CASE_DIMENSION[case], strategy)


def scenario(
    case: str, value: Decimal, base: JobView
) -> tuple[JobView, Markets, Mapping[str, Decimal]]:
    """``base`` with markets and equity that put ``case``'s reading at ``value``.

    Every other dimension stays calm.  For the spread cases the job's edge is
    kept and the crossing cost is set to ``value + edge`` (``value`` for a
    rebalance): a spread of ``s`` bps on both legs of ``n`` USD costs
    ``s * (1 + n / 50,000)`` bps in total.
    """
    j = base
    if case in SPREAD_CASES:
        j = replace(base, strategy=SPREAD_CASES[case])
        gross = value if case == "spread_rebalance" else value + j.expected_edge_bps
        # Crossing costs at least 0.51 bps here; below that the reading overshoots ``value``.
        gross = max(gross, D("0.51"))
        if gross <= 1000:
            spread, quantity = gross / D("1.02"), D("0.01")  # n = 1,000 USD
        else:  # wide books are at most ~20,000 bps: make up the rest with size
            spread, quantity = D(100), (gross / 100 - 1) * D(50_000) / PRICE
        bid, ask = book(spread)
        j = replace(j, legs=tuple(replace(leg, quantity=quantity) for leg in j.legs))
        m = markets(market("binance", bid=bid, ask=ask), market("okx", bid=bid, ask=ask))
        return j, m, EQUITY
    if case == "funding":  # the long leg pays the rate, the short leg is at 0
        return j, markets(market("binance", funding_rate=value / 10_000), market("okx")), EQUITY
    if case == "latency":
        return j, markets(market("binance"), market("okx", latency_ms=value)), EQUITY
    if case == "volatility":
        return j, markets(market("binance"), market("okx", volatility=value)), EQUITY
    assert case == "leverage"  # 0.01 BTC at 100,000 = 1,000 USD on each exchange
    return j, markets(), {"binance": D(1000) / value, "okx": BIG_EQUITY}


def reading_value(a: Assessment, dimension: Dimension) -> Decimal:
    return next(r.value for r in a.readings if r.dimension is dimension)


EPS = D("0.001")


@pytest.mark.parametrize("case", CASES)
def test_scenario_builder_puts_the_reading_where_asked(case: str) -> None:
    target = D("0.07") if case in ("volatility", "leverage") else D("75")
    j, m, eq = scenario(case, target, job())
    a = run(j, m, eq, mode=RiskMode.AGGRESSIVE)
    assert abs(reading_value(a, CASE_DIMENSION[case]) - target) < D("1e-20")


# ---------------------------------------------------------------------------
# Market-data gate: missing, unusable, stale or incomplete data fails closed


def test_assess_when_snapshot_missing_for_a_leg_then_hard_limit() -> None:
    a = run(m=markets(market("binance")))
    assert a.decision.code is DecisionCode.MARKET_DATA_MISSING
    assert a.decision.hard
    assert a.decision.context == {"exchange": "okx", "symbol": SYMBOL, "reason": "no_snapshot"}


def test_assess_when_snapshot_is_for_another_symbol_then_missing() -> None:
    other = replace(market("okx"), symbol="ETH/USDT:USDT")
    a = run(m=markets(market("binance"), other))
    assert a.decision.code is DecisionCode.MARKET_DATA_MISSING


def test_assess_when_job_has_no_legs_then_market_data_missing() -> None:
    a = run(job(legs=()))
    assert a.decision.code is DecisionCode.MARKET_DATA_MISSING
    assert a.decision.context["reason"] == "no_legs"


@pytest.mark.parametrize("mode", MODES)
def test_assess_when_market_data_stale_then_hard_limit_whatever_the_score(mode: RiskMode) -> None:
    max_age = LIMITS[mode].max_market_age
    old = market("okx", observed_at=NOW - max_age - timedelta(milliseconds=1))
    perfect = all_given(expected_edge_bps=D(5000), expected_pnl_usd=D(10**9))
    a = run(perfect, markets(market("binance"), old), mode=mode)
    assert a.decision.code is DecisionCode.MARKET_DATA_STALE
    assert a.decision.hard
    ctx = a.decision.context
    assert ctx["exchange"] == "okx" and ctx["symbol"] == SYMBOL
    assert D(ctx["value"]) > D(ctx["limit"]) == D(max_age.total_seconds())


@pytest.mark.parametrize("mode", MODES)
def test_assess_when_snapshot_exactly_max_age_then_not_stale(mode: RiskMode) -> None:
    edge = market("okx", observed_at=NOW - LIMITS[mode].max_market_age)
    a = run(m=markets(market("binance"), edge), mode=mode)
    assert a.decision.code is not DecisionCode.MARKET_DATA_STALE
    assert a.decision.admitted


def test_assess_when_snapshot_is_7s_old_then_stale_only_in_strict_modes() -> None:
    seven = market("okx", observed_at=NOW - timedelta(seconds=7))
    codes = {
        mode: run(m=markets(market("binance"), seven), mode=mode).decision.code for mode in MODES
    }
    assert codes == {
        RiskMode.CONSERVATIVE: DecisionCode.MARKET_DATA_STALE,
        RiskMode.BALANCED: DecisionCode.ADMITTED,
        RiskMode.AGGRESSIVE: DecisionCode.ADMITTED,
        RiskMode.VOLUME_FOCUSED: DecisionCode.MARKET_DATA_STALE,
    }


def test_assess_when_snapshot_from_the_future_beyond_max_age_then_stale() -> None:
    future = market("okx", observed_at=NOW + timedelta(seconds=30))
    assert run(m=markets(market("binance"), future)).decision.code is DecisionCode.MARKET_DATA_STALE


def test_assess_when_snapshot_time_is_naive_then_stale() -> None:
    naive = market("okx", observed_at=datetime(2026, 11, 21, 8, 0))
    a = run(m=markets(market("binance"), naive))
    assert a.decision.code is DecisionCode.MARKET_DATA_STALE
    assert a.decision.context["value"] == "naive_timestamp"


def test_assess_when_now_is_naive_then_refuses_to_guess() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run(now=datetime(2026, 11, 21, 8, 0))


def test_assess_when_missing_and_stale_legs_then_missing_reported_first() -> None:
    stale = market("binance", observed_at=NOW - timedelta(hours=1))
    assert run(m=markets(stale)).decision.code is DecisionCode.MARKET_DATA_MISSING


@pytest.mark.parametrize("field", ["funding_rate", "volatility", "latency_ms"])
@pytest.mark.parametrize("mode", MODES)
def test_assess_when_a_needed_field_is_none_then_hard_limit_whatever_the_score(
    field: str, mode: RiskMode
) -> None:
    perfect = all_given(expected_edge_bps=D(5000), expected_pnl_usd=D(10**9))
    a = run(perfect, markets(market("binance"), market("okx", **{field: None})), mode=mode)
    assert a.decision.code is DecisionCode.MARKET_DATA_MISSING
    assert a.decision.hard
    assert a.decision.context == {
        "exchange": "okx",
        "symbol": SYMBOL,
        "field": field,
        "reason": "missing",
    }


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"bid": D(101), "ask": D(100)}, "crossed_book"),
        ({"bid": D(0)}, "price_not_positive"),
        ({"last": D(-1)}, "price_not_positive"),
        ({"ask": D("NaN")}, "price_not_finite"),
        ({"last": D("Infinity")}, "price_not_finite"),
        ({"volatility": D("-0.01")}, "negative"),
        ({"latency_ms": D(-5)}, "negative"),
        ({"funding_rate": D("NaN")}, "not_finite"),
        ({"volatility": D("Infinity")}, "not_finite"),
    ],
)
def test_assess_when_snapshot_values_are_unusable_then_market_data_missing(
    changes: dict[str, Decimal], reason: str
) -> None:
    a = run(m=markets(market("binance"), market("okx", **changes)))
    assert a.decision.code is DecisionCode.MARKET_DATA_MISSING
    assert a.decision.context["reason"] == reason


def test_assess_when_market_data_missing_then_unmeasured_components_score_worst() -> None:
    a = run(job(vol_score=D(77)), markets(market("binance")))
    c = a.components
    assert (c.risk, c.latency, c.funding, c.liquidity) == (100, 0, 0, 0)
    assert c.volume == 77  # given components still count
    assert a.readings == ()


# ---------------------------------------------------------------------------
# Every hard and soft limit, in every mode


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_assess_when_dimension_just_above_hard_limit_then_hard_limit_with_context(
    mode: RiskMode, case: str
) -> None:
    _, hard = bounds(case, mode)
    a = run(*scenario(case, hard + EPS, all_given()), mode=mode)
    assert a.decision.code is HARD_CODE[CASE_DIMENSION[case]]
    assert a.decision.hard
    ctx = a.decision.context
    assert ctx["symbol"] == SYMBOL and ctx["exchange"] in ("binance", "okx")
    assert D(ctx["value"]) > D(ctx["limit"]) == hard
    # a hard breach is past the soft limit too, and pays its penalty
    assert soft_dimensions(a) == [CASE_DIMENSION[case].value]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_assess_when_dimension_between_soft_and_hard_then_admitted_with_one_penalty(
    mode: RiskMode, case: str
) -> None:
    soft, hard = bounds(case, mode)
    clean = run(*scenario(case, soft - EPS, all_given()), mode=mode)
    noted = run(*scenario(case, (soft + hard) / 2, all_given()), mode=mode)
    assert clean.decision.admitted and clean.soft == ()
    assert noted.decision.admitted
    assert soft_dimensions(noted) == [CASE_DIMENSION[case].value]
    note = noted.soft[0]
    assert note.code is SOFT_CODE[CASE_DIMENSION[case]] and not note.hard
    assert note.code.value == f"{CASE_DIMENSION[case].value}_soft_limit"
    assert D(note.context["limit"]) == soft
    assert D(note.context["penalty"]) == LIMITS[mode].soft_penalty
    assert noted.final_score == clean.final_score - LIMITS[mode].soft_penalty


@pytest.mark.parametrize("mode", MODES)
def test_assess_when_value_equals_limit_then_limit_holds_inclusively(mode: RiskMode) -> None:
    soft, hard = bounds("latency", mode)
    at_soft = run(*scenario("latency", soft, all_given()), mode=mode)
    at_hard = run(*scenario("latency", hard, all_given()), mode=mode)
    assert at_soft.soft == ()
    assert at_hard.decision.admitted and soft_dimensions(at_hard) == ["latency"]


def _outcomes(case: str, value: Decimal) -> dict[RiskMode, str]:
    out = {}
    for mode in MODES:
        a = run(*scenario(case, value, all_given()), mode=mode)
        out[mode] = "hard" if a.decision.hard else ("soft" if a.soft else "clean")
    return out


C, B, A, V = RiskMode.CONSERVATIVE, RiskMode.BALANCED, RiskMode.AGGRESSIVE, RiskMode.VOLUME_FOCUSED


def test_assess_when_latency_350ms_then_hard_only_in_volume_focused() -> None:
    assert _outcomes("latency", D(350)) == {C: "soft", B: "soft", A: "clean", V: "hard"}


def test_assess_when_volatility_3_5_percent_then_hard_in_conservative_clean_in_aggressive() -> None:
    assert _outcomes("volatility", D("0.035")) == {C: "hard", B: "soft", A: "clean", V: "soft"}


def test_assess_when_leverage_12_percent_then_hard_in_conservative_clean_in_aggressive() -> None:
    assert _outcomes("leverage", D("0.12")) == {C: "hard", B: "soft", A: "clean", V: "soft"}


def test_assess_when_adverse_funding_4_bps_then_hard_in_conservative_clean_in_aggressive() -> None:
    assert _outcomes("funding", D(4)) == {C: "hard", B: "soft", A: "clean", V: "soft"}


def test_assess_when_arb_costs_exceed_edge_by_1_bps_then_hard_only_in_conservative() -> None:
    assert _outcomes("spread_arb", D(1)) == {C: "hard", B: "soft", A: "clean", V: "soft"}


def test_assess_when_arb_keeps_1_bps_after_costs_then_penalised_only_in_conservative() -> None:
    assert _outcomes("spread_arb", D(-1)) == {C: "soft", B: "clean", A: "clean", V: "clean"}


def test_assess_when_volume_job_pays_12_bps_net_then_accepted_where_volume_is_welcome() -> None:
    assert _outcomes("spread_volume", D(12)) == {C: "hard", B: "hard", A: "soft", V: "soft"}
    # the same net cost on an arb job is a hard limit in every mode
    assert set(_outcomes("spread_arb", D(12)).values()) == {"hard"}


def test_assess_when_rebalance_has_no_edge_then_not_blocked_by_edge_or_score() -> None:
    rebalance = job(
        strategy=Strategy.HEDGE_REBALANCE,
        expected_edge_bps=D(-50),
        expected_pnl_usd=D(-100),
        risk_score=D(100),
    )
    j, m, eq = scenario("spread_rebalance", D(10), rebalance)
    for mode in MODES:
        a = run(j, m, eq, mode=mode)
        assert a.decision.admitted, (mode, a.decision)
        assert a.final_score < LIMITS[mode].min_score  # it would not pass as an arb
        assert a.decision.context["threshold"] == "exempt_rebalance"


def test_assess_when_rebalance_crosses_a_broken_book_then_hard_limit_in_every_mode() -> None:
    rebalance = job(strategy=Strategy.HEDGE_REBALANCE)
    assert set(_outcomes("spread_rebalance", D(120)).values()) == {"hard"}
    j, m, eq = scenario("spread_rebalance", D(120), rebalance)
    assert run(j, m, eq).decision.context["basis"] == "gross_cost"


def test_assess_when_rebalance_breaches_another_hard_limit_then_hard_limit() -> None:
    rebalance = job(strategy=Strategy.HEDGE_REBALANCE)
    a = run(*scenario("volatility", D("0.5"), rebalance))
    assert a.decision.code is DecisionCode.VOLATILITY_HARD_LIMIT


def test_assess_when_spread_above_hard_limit_then_hard_limit() -> None:
    bid, ask = book(D(30))  # 2 x 30 bps crossing, against a 20 bps edge
    a = run(m=markets(market("binance", bid=bid, ask=ask), market("okx", bid=bid, ask=ask)))
    assert a.decision.code is DecisionCode.SPREAD_HARD_LIMIT
    assert a.decision.context["basis"] == "cost_minus_edge"
    assert D(a.decision.context["cost_bps"]) > D(a.decision.context["edge_bps"]) + 2


def test_assess_when_size_is_large_then_slippage_counts_against_the_edge() -> None:
    small = run()
    large = run(job(legs=(LegView("binance", Side.BUY, D(100)), LegView("okx", Side.SELL, D(100)))))
    assert large.decision.code is DecisionCode.SPREAD_HARD_LIMIT  # 10 M USD vs 100 k per spread
    assert reading_value(large, Dimension.SPREAD) > reading_value(small, Dimension.SPREAD)


def test_assess_when_long_leg_on_positive_funding_then_it_pays() -> None:
    m = markets(market("binance", funding_rate=D("0.001")), market("okx"))
    a = run(m=m)
    assert a.decision.code is DecisionCode.FUNDING_HARD_LIMIT
    assert a.decision.context["exchange"] == "binance"
    assert D(a.decision.context["value"]) == 10


def test_assess_when_short_leg_on_positive_funding_then_it_receives() -> None:
    m = markets(market("binance"), market("okx", funding_rate=D("0.001")))
    a = run(m=m)
    assert a.decision.admitted
    assert reading_value(a, Dimension.FUNDING) == -10
    assert a.components.funding == 100


def test_assess_when_funding_arb_pays_on_one_leg_and_earns_more_on_the_other_then_net_counts() -> (
    None
):
    m = markets(
        market("binance", funding_rate=D("0.0004")), market("okx", funding_rate=D("0.0010"))
    )
    a = run(job(strategy=Strategy.FUNDING_ARB), m)
    assert reading_value(a, Dimension.FUNDING) == -6  # pays 4 bps, receives 10
    assert a.decision.admitted


@pytest.mark.parametrize("equity", [None, D(0), D(-5), D("NaN"), D("Infinity")])
def test_assess_when_exchange_equity_unknown_then_leverage_hard_limit(
    equity: Decimal | None,
) -> None:
    eq = {"binance": BIG_EQUITY} if equity is None else {"binance": BIG_EQUITY, "okx": equity}
    a = run(all_given(expected_edge_bps=D(9000)), equity=eq)
    assert a.decision.code is DecisionCode.LEVERAGE_HARD_LIMIT
    assert a.decision.context["exchange"] == "okx"


def test_assess_when_job_edge_is_nan_then_counted_as_no_edge_and_hard_limit() -> None:
    a = run(all_given(expected_edge_bps=D("NaN")))
    assert a.decision.code is DecisionCode.SPREAD_HARD_LIMIT
    assert a.components.edge == 0


@pytest.mark.parametrize("quantity", [D("NaN"), D("Infinity"), D("-Infinity")])
def test_assess_when_leg_quantity_is_not_finite_then_hard_limit_as_unbounded(
    quantity: Decimal,
) -> None:
    legs = (LegView("binance", Side.BUY, quantity), LegView("okx", Side.SELL, D("0.01")))
    a = run(all_given(legs=legs))
    assert a.decision.hard
    assert reading_value(a, Dimension.LEVERAGE) == D("Infinity")
    assert reading_value(a, Dimension.SPREAD) == D("Infinity")


def test_assess_when_two_hard_limits_then_first_in_check_order_wins() -> None:
    m = markets(market("binance", volatility=D("0.5"), latency_ms=D(10_000)), market("okx"))
    a = run(m=m, equity={"binance": D(1), "okx": D(1)})
    assert a.decision.code is DecisionCode.LATENCY_HARD_LIMIT
    assert soft_dimensions(a) == ["latency", "volatility", "leverage"]


def test_assess_when_two_soft_limits_then_each_costs_the_penalty() -> None:
    m = markets(market("binance", latency_ms=D(300), volatility=D("0.03")), market("okx"))
    clean = run(all_given())
    a = run(all_given(), m)
    assert soft_dimensions(a) == ["latency", "volatility"]
    assert a.final_score == clean.final_score - 2 * LIMITS[RiskMode.BALANCED].soft_penalty


def test_assess_decision_context_is_json_serializable() -> None:
    hard = run(*scenario("leverage", D(1), job()))
    noted = run(*scenario("latency", D(300), job()))
    for decision in (hard.decision, noted.decision, *noted.soft):
        json.dumps(decision.context)
        assert all(isinstance(v, str) for v in decision.context.values())


# ---------------------------------------------------------------------------
# Scores


def test_weights_sum_to_exactly_one_and_follow_the_design() -> None:
    for mode in MODES:
        assert set(WEIGHTS[mode]) == set(COMPONENTS)
        assert sum(WEIGHTS[mode].values()) == D(1)
    assert dict(WEIGHTS[RiskMode.BALANCED]) == {
        "edge": D("0.25"),
        "pnl": D("0.20"),
        "risk": D("0.20"),
        "latency": D("0.10"),
        "volume": D("0.10"),
        "funding": D("0.10"),
        "liquidity": D("0.05"),
    }
    assert WEIGHTS[RiskMode.CONSERVATIVE]["risk"] == D("0.40")
    aggressive = WEIGHTS[RiskMode.AGGRESSIVE]
    assert aggressive["edge"] + aggressive["pnl"] == D("0.65")
    assert WEIGHTS[RiskMode.VOLUME_FOCUSED]["volume"] == D("0.40")


def test_limits_when_compared_across_modes_then_conservative_tightest_aggressive_loosest() -> None:
    numeric = [
        f
        for f in ModeLimits.__dataclass_fields__
        if f not in ("max_market_age", "min_score", "soft_penalty")
        and not f.startswith("weight_")  # the weights: see the weight table's test
    ]
    for name in numeric:
        c, b, a = (getattr(LIMITS[m], name) for m in (C, B, A))
        assert c <= b <= a, name
    assert LIMITS[V].latency_hard_ms == min(LIMITS[m].latency_hard_ms for m in MODES)
    assert LIMITS[V].volume_cost_hard_bps == max(LIMITS[m].volume_cost_hard_bps for m in MODES)
    assert LIMITS[C].min_score > LIMITS[B].min_score > LIMITS[A].min_score
    assert all(LIMITS[m].max_market_age <= timedelta(seconds=10) for m in MODES)


@pytest.mark.parametrize(
    "changes",
    [
        {"latency_soft_ms": D(900)},  # soft above hard
        {"volatility_hard": D(0), "volatility_soft": D(0)},
        {"min_score": D(101)},
        {"soft_penalty": D(-1)},
        {"max_market_age": timedelta(0)},
        {"spread_hard_bps": D("NaN")},
    ],
)
def test_mode_limits_when_inconsistent_then_refused_at_start_up(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        replace(LIMITS[RiskMode.BALANCED], **changes)  # type: ignore[arg-type]


def test_score_when_job_gives_components_then_they_win_over_market_data() -> None:
    slow = markets(market("binance", latency_ms=D(700)), market("okx"))
    computed = run(job(), slow).components
    given = run(job(latency_score=D(90), risk_score=D(12)), slow).components
    assert computed.latency < 10
    assert (given.latency, given.risk) == (90, 12)


def test_score_when_risk_score_given_then_weighted_as_safety() -> None:
    c = ScoreComponents(*(D(0),) * 7)
    assert c.safety == 100
    riskiest = replace(c, risk=D(100))
    assert riskiest.weighted(WEIGHTS[RiskMode.CONSERVATIVE]) == 0
    assert c.weighted(WEIGHTS[RiskMode.CONSERVATIVE]) == 40


def test_score_when_given_scores_out_of_range_or_nan_then_clamped_to_worst() -> None:
    c = run(job(risk_score=D("NaN"), latency_score=D(250), funding_score=D("NaN"))).components
    assert (c.risk, c.latency, c.funding) == (100, 100, 0)


def test_score_components_when_computed_then_follow_the_documented_curves() -> None:
    # 10 bps of edge, 10 USD of PnL and 10,000 USD of volume each score 50
    c = run(job(expected_edge_bps=D(10), expected_pnl_usd=D(10), expected_volume_usd=D(10_000)))
    assert (c.components.edge, c.components.pnl, c.components.volume) == (50, 50, 50)
    # funding neutral scores 50; latency 20 of 750 ms; risk = worst of vol / leverage vs hard
    assert c.components.funding == 50
    assert c.components.latency == D("97.333")
    assert c.components.risk == D("2.000")  # volatility 0.001 of 0.05


def test_assess_when_score_below_min_then_denied_but_no_hard_limit() -> None:
    a = run(job(expected_edge_bps=D(0), expected_pnl_usd=D(0), risk_score=D(100)))
    assert a.decision.code is DecisionCode.SCORE_BELOW_THRESHOLD
    assert not a.decision.hard
    assert D(a.decision.context["score"]) == a.final_score < D(a.decision.context["min_score"])


def test_assess_when_score_exactly_min_score_then_admitted() -> None:
    score = run().final_score
    at = {**LIMITS, RiskMode.BALANCED: replace(LIMITS[RiskMode.BALANCED], min_score=score)}
    above = {
        **LIMITS,
        RiskMode.BALANCED: replace(LIMITS[RiskMode.BALANCED], min_score=score + D("0.001")),
    }
    assert run(limits=at).decision.admitted
    assert run(limits=above).decision.code is DecisionCode.SCORE_BELOW_THRESHOLD


def test_assess_when_penalties_exceed_the_score_then_final_score_is_zero() -> None:
    m = markets(market("binance", latency_ms=D(700), volatility=D("0.049")), market("okx"))
    strict = {**LIMITS, RiskMode.BALANCED: replace(LIMITS[RiskMode.BALANCED], soft_penalty=D(99))}
    assert run(m=m, limits=strict).final_score == 0


def test_final_score_is_quantized_to_a_thousandth() -> None:
    a = run(job(expected_edge_bps=D("13.37")))
    assert a.final_score == a.final_score.quantize(D("0.001"))
    assert a.final_score.as_tuple().exponent == -3


@pytest.mark.parametrize(
    ("volatility", "mode", "fast"),
    [
        (D("0.05"), C, True),
        (D("0.05"), B, False),  # exactly the hard limit: not yet fast
        (D("0.0501"), B, True),
        (D("0.05"), A, False),
        (D("0.05"), V, True),
        (None, A, True),  # unknown volatility: fail closed
        (D("NaN"), A, True),
    ],
)
def test_is_fast_market_when_volatility_above_hard_limit_then_true(
    volatility: Decimal | None, mode: RiskMode, fast: bool
) -> None:
    assert is_fast_market(market("okx", volatility=volatility), mode) is fast


# ---------------------------------------------------------------------------
# Properties (hypothesis)

HARD_SITUATIONS = (*CASES, "missing", "stale", "funding_none", "volatility_none", "latency_none")
HARD_SITUATION_CODE = {
    **{case: HARD_CODE[CASE_DIMENSION[case]] for case in CASES},
    "missing": DecisionCode.MARKET_DATA_MISSING,
    "stale": DecisionCode.MARKET_DATA_STALE,
    "funding_none": DecisionCode.MARKET_DATA_MISSING,
    "volatility_none": DecisionCode.MARKET_DATA_MISSING,
    "latency_none": DecisionCode.MARKET_DATA_MISSING,
}

score_values = st.builds(lambda n: D(n).scaleb(-3), st.integers(0, 100_000))
scores = st.one_of(st.none(), score_values)
huge_edges = st.builds(lambda n: D(n).scaleb(-4), st.integers(-(10**6), 10**10))
huge_money = st.builds(lambda n: D(n).scaleb(-2), st.integers(-(10**17), 10**17))


@settings(max_examples=200, deadline=None)
@given(
    situation=st.sampled_from(HARD_SITUATIONS),
    mode=st.sampled_from(MODES),
    edge=huge_edges,
    pnl=huge_money,
    given_scores=st.tuples(scores, scores, scores, scores, scores),
    overshoot=st.builds(lambda n: D(n).scaleb(-4), st.integers(1, 10**7)),
)
def test_assess_when_any_hard_limit_breached_then_hard_limit_whatever_scores_and_edge(
    situation: str,
    mode: RiskMode,
    edge: Decimal,
    pnl: Decimal,
    given_scores: tuple[Decimal | None, ...],
    overshoot: Decimal,
) -> None:
    risk, latency, vol, funding, liquidity = given_scores
    base = job(
        expected_edge_bps=edge,
        expected_pnl_usd=pnl,
        risk_score=risk,
        latency_score=latency,
        vol_score=vol,
        funding_score=funding,
        liquidity_score=liquidity,
    )
    if situation in CASES:
        _, hard = bounds(situation, mode)
        j, m, eq = scenario(situation, hard + overshoot, base)
    else:
        j, m, eq = base, markets(), EQUITY
        okx = m[("okx", SYMBOL)]
        if situation == "missing":
            del m[("okx", SYMBOL)]
        elif situation == "stale":
            age = LIMITS[mode].max_market_age + timedelta(seconds=float(overshoot))
            m[("okx", SYMBOL)] = replace(okx, observed_at=NOW - age)
        else:
            field = {"funding": "funding_rate", "volatility": "volatility"}.get(
                situation.removesuffix("_none"), "latency_ms"
            )
            m[("okx", SYMBOL)] = replace(okx, **{field: None})
    a = run(j, m, eq, mode=mode)
    assert a.decision.hard
    assert not a.decision.admitted
    if situation in CASES:
        # the breached dimension says so; a small edge may breach the spread first
        dimension = CASE_DIMENSION[situation]
        assert next(r for r in a.readings if r.dimension is dimension).hard_breach
        first = next(r for r in a.readings if r.hard_breach)
        assert a.decision.code is HARD_CODE[first.dimension]
    else:
        assert a.decision.code is HARD_SITUATION_CODE[situation]


def _scaled(mantissa: st.SearchStrategy[int], low: int, high: int) -> st.SearchStrategy[Decimal]:
    """Decimals ``m * 10**e``: cheap to draw, and reaching extreme magnitudes."""
    return st.builds(lambda m, e: D(m).scaleb(e), mantissa, st.integers(low, high))


finite = _scaled(st.integers(-(10**6), 10**6), -30, 24)
positive = _scaled(st.integers(1, 10**6), -18, 6)
special = st.sampled_from([D("NaN"), D("sNaN"), D("Infinity"), D("-Infinity"), D("-0")])
any_decimal = st.one_of(finite, special)
wild_scores = st.one_of(st.none(), any_decimal)


@st.composite
def market_views(draw: st.DrawFn, exchange: str, wild: bool) -> MarketView:
    price = draw(positive)
    spread = draw(_scaled(st.integers(0, 19), -6, -1))
    bid, ask = price, price * (1 + spread)
    if wild:
        bid, ask = (
            draw(st.one_of(st.just(bid), any_decimal)),
            draw(st.one_of(st.just(ask), any_decimal)),
        )
    optional = st.one_of(st.none(), any_decimal) if wild else st.just(D(0))
    return MarketView(
        exchange=exchange,
        symbol=SYMBOL,
        bid=bid,
        ask=ask,
        last=draw(st.one_of(st.just(price), positive, *([any_decimal] if wild else []))),
        funding_rate=draw(st.one_of(_scaled(st.integers(-100, 100), -6, -3), optional)),
        volatility=draw(st.one_of(_scaled(st.integers(0, 100), -4, -2), optional)),
        latency_ms=draw(st.one_of(_scaled(st.integers(0, 5000), -1, 0), optional)),
        observed_at=NOW - timedelta(milliseconds=draw(st.integers(-12_000, 12_000))),
    )


@st.composite
def situations(draw: st.DrawFn, wild: bool) -> tuple[JobView, Markets, dict[str, Decimal]]:
    number = any_decimal if wild else finite
    quantity = st.one_of(positive, number) if wild else positive
    j = JobView(
        id=1,
        strategy=draw(st.sampled_from(tuple(Strategy))),
        symbol=SYMBOL,
        notional_usd=draw(st.one_of(positive, number)),
        expected_edge_bps=draw(number),
        expected_pnl_usd=draw(number),
        expected_volume_usd=draw(st.one_of(st.none(), number)),
        legs=(
            LegView("binance", Side.BUY, draw(quantity)),
            LegView("okx", Side.SELL, draw(quantity)),
        ),
        risk_score=draw(wild_scores if wild else scores),
        latency_score=draw(wild_scores if wild else scores),
        vol_score=draw(wild_scores if wild else scores),
        funding_score=draw(wild_scores if wild else scores),
        liquidity_score=draw(wild_scores if wild else scores),
    )
    m = markets(draw(market_views("binance", wild)), draw(market_views("okx", wild)))
    equity = {ex: draw(st.one_of(positive, number)) for ex in ("binance", "okx")}
    return j, m, equity


@settings(max_examples=300, deadline=None)
@given(case=situations(wild=True), mode=st.sampled_from(MODES))
def test_final_score_when_any_inputs_then_within_0_and_100(
    case: tuple[JobView, Markets, dict[str, Decimal]], mode: RiskMode
) -> None:
    j, m, eq = case
    a = run(j, m, eq, mode=mode)
    assert D(0) <= a.final_score <= D(100)
    for name in ("edge", "pnl", "risk", "latency", "volume", "funding", "liquidity"):
        assert D(0) <= getattr(a.components, name) <= D(100), name
    assert a.decision.admitted == (not a.decision.hard and a.decision.code is DecisionCode.ADMITTED)
    json.dumps([a.decision.context, *(s.context for s in a.soft)])


@settings(max_examples=200, deadline=None)
@given(
    case=situations(wild=False),
    mode=st.sampled_from(MODES),
    edges=st.tuples(finite, finite),
)
def test_final_score_when_edge_rises_then_never_falls(
    case: tuple[JobView, Markets, dict[str, Decimal]],
    mode: RiskMode,
    edges: tuple[Decimal, Decimal],
) -> None:
    j, m, eq = case
    low, high = sorted(edges)
    s_low = run(replace(j, expected_edge_bps=low), m, eq, mode=mode).final_score
    s_high = run(replace(j, expected_edge_bps=high), m, eq, mode=mode).final_score
    assert s_low <= s_high


@settings(max_examples=200, deadline=None)
@given(
    case=situations(wild=False),
    mode=st.sampled_from(MODES),
    risks=st.tuples(score_values, score_values),
)
def test_final_score_when_risk_score_rises_then_never_rises(
    case: tuple[JobView, Markets, dict[str, Decimal]],
    mode: RiskMode,
    risks: tuple[Decimal, Decimal],
) -> None:
    j, m, eq = case
    low, high = sorted(risks)
    s_low = run(replace(j, risk_score=low), m, eq, mode=mode).final_score
    s_high = run(replace(j, risk_score=high), m, eq, mode=mode).final_score
    assert s_high <= s_low
    if low < high and WEIGHTS[mode]["risk"] > 0:
        # strictly lower unless clamped at 0 or swamped by rounding to 0.001
        assert s_high < s_low or s_high == 0 or (high - low) * WEIGHTS[mode]["risk"] < D("0.002")


# ---------------------------------------------------------------------------
# Values worked out once per snapshot, mode or job follow the object they belong to


def test_snapshot_checks_worked_out_once_follow_a_replaced_snapshot() -> None:
    calm = market("okx")
    assert (calm.quote_problem, calm.field_problem) == (None, None)
    assert calm.spread_bps == (calm.ask - calm.bid) / ((calm.bid + calm.ask) / 2) * 10_000
    crossed = replace(calm, bid=calm.ask + 1)
    assert crossed.quote_problem == "crossed_book"
    blind = replace(calm, volatility=None)
    assert blind.field_problem == ("volatility", "missing")
    wide = replace(calm, bid=PRICE - 50, ask=PRICE + 50)
    assert wide.spread_bps == D(10)
    assert calm.quote_problem is None and calm.spread_bps < wide.spread_bps  # unchanged


def test_mode_texts_worked_out_once_follow_a_replaced_mode() -> None:
    balanced = LIMITS[RiskMode.BALANCED]
    old = markets(market("binance"), market("okx", observed_at=NOW - timedelta(seconds=5)))
    assert run(m=old).decision.code is not DecisionCode.MARKET_DATA_STALE  # 10 s allowed
    strict = replace(balanced, max_market_age=timedelta(seconds=3), min_score=D("99.5"))
    a = run(m=old, limits={**LIMITS, RiskMode.BALANCED: strict})
    assert a.decision.code is DecisionCode.MARKET_DATA_STALE
    assert a.decision.context["limit"] == "3"
    fresh = run(limits={**LIMITS, RiskMode.BALANCED: strict})
    assert fresh.decision.context["min_score"] == "99.5"
    assert run().decision.context["min_score"] == "50"


def test_job_exchanges_are_its_leg_exchanges_once_each_in_name_order() -> None:
    legs = (
        LegView("okx", Side.SELL, D(1)),
        LegView("binance", Side.BUY, D(1)),
        LegView("okx", Side.BUY, D(2)),
    )
    assert job(legs=legs).exchanges == ("binance", "okx")
    assert job(legs=()).exchanges == ()


# ---------------------------------------------------------------------------
# Hold or reject: only what the job and the configuration make impossible rejects


@pytest.mark.parametrize(
    ("m", "equity", "code"),
    [
        (
            markets(market("binance", observed_at=NOW - timedelta(hours=1)), market("okx")),
            None,
            DecisionCode.MARKET_DATA_STALE,
        ),
        (markets(market("okx")), None, DecisionCode.MARKET_DATA_MISSING),
        (
            markets(market("binance", latency_ms=D(5000)), market("okx")),
            None,
            DecisionCode.LATENCY_HARD_LIMIT,
        ),
        (
            markets(market("binance", volatility=D("0.5")), market("okx")),
            None,
            DecisionCode.VOLATILITY_HARD_LIMIT,
        ),
        (
            markets(market("binance", funding_rate=D("0.01")), market("okx")),
            None,
            DecisionCode.FUNDING_HARD_LIMIT,
        ),
        (
            markets(market("binance", bid=PRICE * D("0.99")), market("okx")),
            None,
            DecisionCode.SPREAD_HARD_LIMIT,
        ),
    ],
    ids=["stale", "missing", "latency", "volatility", "funding", "spread"],
)
def test_assess_when_the_market_breaches_a_hard_limit_then_held_never_rejected(
    m: Markets, equity: Mapping[str, Decimal] | None, code: DecisionCode
) -> None:
    a = run(m=m, equity=equity)
    assert a.decision.code is code
    assert a.decision.hard and not a.decision.rejects  # the market may lift it: held


def test_assess_when_the_job_is_too_large_for_the_account_then_rejected() -> None:
    a = run(equity={"binance": D(1000), "okx": D(1000)})  # 1,000 USD legs on 1,000 equity
    assert a.decision.code is DecisionCode.LEVERAGE_HARD_LIMIT
    assert a.decision.hard and a.decision.rejects


MARKET_BREACHES = {
    "calm": {},
    "stale": {"observed_at": NOW - timedelta(seconds=11)},
    "from_the_future": {"observed_at": NOW + timedelta(seconds=11)},
    "naive_clock": {"observed_at": NOW.replace(tzinfo=None)},
    "crossed": {"bid": PRICE + 1, "ask": PRICE},
    "no_volatility": {"volatility": None},
    "no_latency": {"latency_ms": None},
    "no_funding": {"funding_rate": None},
    "slow": {"latency_ms": D(751)},
    "fast_market": {"volatility": D("0.051")},
}


@pytest.mark.parametrize("breach", sorted(MARKET_BREACHES))
@pytest.mark.parametrize("mode", MODES)
def test_market_open_is_false_exactly_when_every_job_on_it_is_held(
    breach: str, mode: RiskMode
) -> None:
    view = market("binance", **MARKET_BREACHES[breach])
    opened = market_open(view, LIMITS[mode], NOW)
    for strategy in Strategy:
        a = run(job(strategy=strategy), markets(view, market("okx")), mode=mode)
        if not opened:  # the tick may leave the job out of its window: it could only wait
            assert a.decision.hard, (breach, strategy, a.decision)
    assert opened is (
        breach == "calm" or (breach in ("slow", "fast_market") and mode in (RiskMode.AGGRESSIVE,))
    )


def test_funding_per_8h_scales_a_venues_rate_by_its_interval() -> None:
    assert risk.funding_per_8h(Decimal("0.0001"), 8) == Decimal("0.0001")
    assert risk.funding_per_8h(Decimal("0.0000125"), 1) == Decimal("0.0001")
    assert risk.funding_per_8h(Decimal("-0.0002"), 4) == Decimal("-0.0004")
    assert risk.funding_per_8h(None, 1) is None


def test_the_tick_judges_an_hourly_venues_funding_per_8h() -> None:
    from perpbot_db.services.tick import market_views
    from perpbot_db.store.market import MarketSnapshot

    at = datetime(2026, 1, 1, tzinfo=UTC)
    snaps = [
        MarketSnapshot(
            name, "BTC/USDT:USDT", Decimal(100), Decimal(101), Decimal(100), rate, None, None, at
        )
        for name, rate in (("binance", Decimal("0.0001")), ("hyper", Decimal("0.0000125")))
    ]
    views = market_views(snaps, {"hyper": 1})
    assert views[("binance", "BTC/USDT:USDT")].funding_rate == Decimal("0.0001")
    assert views[("hyper", "BTC/USDT:USDT")].funding_rate == Decimal("0.0001")
    unscaled = market_views(snaps)
    assert unscaled[("hyper", "BTC/USDT:USDT")].funding_rate == Decimal("0.0000125")
