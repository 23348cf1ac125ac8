"""Capital tiers and caps (issue 3, item 1), decided without a database.

The book under test is binance at 50,000 USD equity with the DESIGN.md
defaults: tier budgets 25,000 (volume) / 15,000 (arbitrage) / 10,000 (reserve),
5,000 for one job, 15,000 in flight.  Every limit is inclusive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from perpbot_db.domain.capital import (
    DEFAULT_TIER_FOR_STRATEGY,
    BookLimits,
    ExchangeBook,
    breaches,
    check_reservation,
    plan_job_reservations,
    release,
    reserve,
    with_equity,
)
from perpbot_db.domain.decisions import Decision, DecisionCode
from perpbot_db.domain.lifecycle import CapitalTier, Strategy

D = Decimal
V, A, R = CapitalTier.VOLUME, CapitalTier.ARBITRAGE, CapitalTier.RESERVE
VOL, ARB, FUND, HEDGE = (
    Strategy.VOLUME,
    Strategy.ARB,
    Strategy.FUNDING_ARB,
    Strategy.HEDGE_REBALANCE,
)
C = DecisionCode
CAP_CODES = {C.CAPITAL_SINGLE_JOB_CAP, C.CAPITAL_INFLIGHT_CAP, C.CAPITAL_TIER_BUDGET}


def book(
    equity: str = "50000",
    *,
    exchange: str = "binance",
    safe_mode: bool = False,
    reserved: Mapping[CapitalTier, str] | None = None,
    volume_share: str = "0.50",
    arbitrage_share: str = "0.30",
    reserve_share: str = "0.20",
    single_job_cap: str = "0.10",
    inflight_cap: str = "0.30",
) -> ExchangeBook:
    return ExchangeBook(
        exchange=exchange,
        equity_usd=D(equity),
        volume_share=D(volume_share),
        arbitrage_share=D(arbitrage_share),
        reserve_share=D(reserve_share),
        single_job_cap=D(single_job_cap),
        inflight_cap=D(inflight_cap),
        safe_mode=safe_mode,
        reserved={tier: D(amount) for tier, amount in (reserved or {}).items()},
    )


def denied(outcome: object) -> Decision:
    assert isinstance(outcome, Decision), f"expected a denial, got {outcome!r}"
    return outcome


def granted(outcome: ExchangeBook | Decision) -> ExchangeBook:
    assert isinstance(outcome, ExchangeBook), f"expected a grant, got {outcome}"
    return outcome


# --------------------------------------------------------------------------- #
# one check at a time: every denial code, and allowed exactly at each limit


SAFE = book(safe_mode=True)
DENIALS = [
    pytest.param(book(), V, D(0), VOL, False, C.CAPITAL_INVALID_AMOUNT, id="zero-amount"),
    pytest.param(book(), V, D("-1"), VOL, False, C.CAPITAL_INVALID_AMOUNT, id="negative-amount"),
    pytest.param(book(), V, D("NaN"), VOL, False, C.CAPITAL_INVALID_AMOUNT, id="nan-amount"),
    pytest.param(book(), V, D("sNaN"), VOL, False, C.CAPITAL_INVALID_AMOUNT, id="snan-amount"),
    pytest.param(book(), V, D("Infinity"), VOL, False, C.CAPITAL_INVALID_AMOUNT, id="inf-amount"),
    pytest.param(book(), V, 100.0, VOL, False, C.CAPITAL_INVALID_AMOUNT, id="float-amount"),
    pytest.param(book(safe_mode=True), V, D(100), VOL, False, C.EXCHANGE_SAFE_MODE, id="safe-vol"),
    pytest.param(book(safe_mode=True), A, D(100), ARB, False, C.EXCHANGE_SAFE_MODE, id="safe-arb"),
    pytest.param(
        book(safe_mode=True), A, D(100), FUND, False, C.EXCHANGE_SAFE_MODE, id="safe-fund"
    ),
    pytest.param(book(), R, D(100), VOL, False, C.CAPITAL_TIER_FORBIDDEN, id="reserve-volume"),
    pytest.param(book(), R, D(100), ARB, False, C.CAPITAL_TIER_FORBIDDEN, id="reserve-arb"),
    pytest.param(book(), R, D(100), FUND, False, C.CAPITAL_TIER_FORBIDDEN, id="reserve-fund"),
    pytest.param(book(), V, D("5000.01"), VOL, False, C.CAPITAL_SINGLE_JOB_CAP, id="single-cap"),
    pytest.param(
        book(reserved={V: "10000", A: "4000"}),
        A,
        D("1000.01"),
        ARB,
        False,
        C.CAPITAL_INFLIGHT_CAP,
        id="inflight-cap",
    ),
    pytest.param(
        book(reserved={R: "9000"}),
        R,
        D("1000.01"),
        HEDGE,
        False,
        C.CAPITAL_TIER_BUDGET,
        id="tier-budget",
    ),
    pytest.param(
        book(arbitrage_share="0.05", reserved={A: "2000"}),
        A,
        D("500.01"),
        FUND,
        False,
        C.CAPITAL_TIER_BUDGET,
        id="small-tier-budget",
    ),
    pytest.param(book("0"), V, D(1), VOL, False, C.EXCHANGE_DISABLED, id="zero-equity"),
    pytest.param(book("-500"), R, D(1), HEDGE, True, C.EXCHANGE_DISABLED, id="negative-equity"),
    pytest.param(book("NaN"), V, D(1), VOL, False, C.EXCHANGE_DISABLED, id="nan-equity"),
    pytest.param(
        book(volume_share="0.6", arbitrage_share="0.3", reserve_share="0.2"),
        V,
        D(1),
        VOL,
        False,
        C.EXCHANGE_DISABLED,
        id="shares-over-one",
    ),
    pytest.param(
        book(reserved={V: "-1"}), V, D(1), VOL, False, C.EXCHANGE_DISABLED, id="negative-reserved"
    ),
    pytest.param(book(inflight_cap="0"), V, D(1), VOL, False, C.EXCHANGE_DISABLED, id="zero-cap"),
    pytest.param(
        replace(book(), safe_mode=None), V, D(1), VOL, False, C.EXCHANGE_DISABLED, id="safe-unknown"
    ),
]


@pytest.mark.parametrize(
    ("exchange_book", "tier", "amount", "strategy", "emergency", "code"), DENIALS
)
def test_reservation_breaking_one_rule_is_denied_with_its_code(
    exchange_book: ExchangeBook,
    tier: CapitalTier,
    amount: Decimal,
    strategy: Strategy,
    emergency: bool,
    code: DecisionCode,
) -> None:
    decision = denied(
        check_reservation(exchange_book, tier, amount, strategy=strategy, emergency=emergency)
    )
    assert decision.code is code
    assert decision.context["exchange"] == "binance"
    assert denied(reserve(exchange_book, tier, amount, strategy=strategy, emergency=emergency)) == (
        decision
    )


ALLOWED = [
    pytest.param(book(), V, D("5000"), VOL, False, id="single-cap-exactly"),
    pytest.param(book(), V, D("0.01"), VOL, False, id="one-cent"),
    pytest.param(book(reserved={V: "10000"}), A, D("5000"), ARB, False, id="inflight-exactly"),
    pytest.param(book(reserved={R: "9000"}), R, D("1000"), HEDGE, False, id="tier-budget-exactly"),
    pytest.param(
        book(arbitrage_share="0.05", reserved={A: "2000"}),
        A,
        D("500"),
        FUND,
        False,
        id="small-tier-budget-exactly",
    ),
    pytest.param(book(safe_mode=True), A, D(100), HEDGE, False, id="safe-mode-hedge-rebalance"),
    pytest.param(book(safe_mode=True), R, D(100), HEDGE, False, id="safe-mode-hedge-in-reserve"),
    pytest.param(book(safe_mode=True), V, D(100), VOL, True, id="safe-mode-emergency"),
    pytest.param(book(), R, D(100), HEDGE, False, id="reserve-tier-hedge-rebalance"),
    pytest.param(book(), R, D(100), ARB, True, id="reserve-tier-emergency"),
]


@pytest.mark.parametrize(("exchange_book", "tier", "amount", "strategy", "emergency"), ALLOWED)
def test_reservation_within_every_limit_is_granted_and_booked_in_its_tier(
    exchange_book: ExchangeBook,
    tier: CapitalTier,
    amount: Decimal,
    strategy: Strategy,
    emergency: bool,
) -> None:
    assert (
        check_reservation(exchange_book, tier, amount, strategy=strategy, emergency=emergency)
        is None
    )
    after = granted(reserve(exchange_book, tier, amount, strategy=strategy, emergency=emergency))
    assert after.reserved[tier] == exchange_book.reserved[tier] + amount
    assert after.reserved_total == exchange_book.reserved_total + amount
    assert breaches(after) == []
    assert exchange_book.reserved[tier] == after.reserved[tier] - amount  # input untouched


def test_reserve_beyond_single_job_cap_is_denied_with_limit_in_context() -> None:
    decision = denied(reserve(book(), V, D("5000.01"), strategy=VOL))
    assert decision.code is C.CAPITAL_SINGLE_JOB_CAP
    assert decision.context["exchange"] == "binance"
    assert decision.context["tier"] == "volume"
    assert D(decision.context["amount_usd"]) == D("5000.01")
    assert D(decision.context["limit_usd"]) == D(5000)
    assert D(decision.context["equity_usd"]) == D(50000)
    assert D(decision.context["single_job_cap"]) == D("0.10")
    assert "limit_usd=5000.00" in str(decision)


def test_reserve_beyond_inflight_cap_is_denied_with_reserved_and_available_in_context() -> None:
    decision = denied(reserve(book(reserved={V: "12000"}), A, D("3500"), strategy=ARB))
    assert decision.code is C.CAPITAL_INFLIGHT_CAP
    ctx = decision.context
    assert (D(ctx["limit_usd"]), D(ctx["reserved_usd"])) == (D(15000), D(12000))
    assert D(ctx["available_usd"]) == D(3000)
    assert ctx["tier"] == "arbitrage"


def test_reserve_beyond_tier_budget_is_denied_with_budget_in_context() -> None:
    decision = denied(reserve(book(reserved={R: "9500"}), R, D(600), strategy=HEDGE))
    assert decision.code is C.CAPITAL_TIER_BUDGET
    ctx = decision.context
    assert (ctx["tier"], ctx["requested_tier"]) == ("reserve", "reserve")
    assert (D(ctx["limit_usd"]), D(ctx["reserved_usd"])) == (D(10000), D(9500))
    assert D(ctx["share"]) == D("0.20")


@pytest.mark.parametrize(
    ("exchange_book", "tier", "amount", "strategy", "code"),
    [
        pytest.param(book(safe_mode=True), V, D(0), VOL, C.CAPITAL_INVALID_AMOUNT, id="amount"),
        pytest.param(book("0", safe_mode=True), V, D(1), VOL, C.EXCHANGE_DISABLED, id="equity"),
        pytest.param(book(safe_mode=True), R, D(9e9), VOL, C.EXCHANGE_SAFE_MODE, id="safe-mode"),
        pytest.param(book(), R, D(9e9), VOL, C.CAPITAL_TIER_FORBIDDEN, id="tier-forbidden"),
        pytest.param(
            book(reserved={V: "14000"}), V, D(6000), VOL, C.CAPITAL_SINGLE_JOB_CAP, id="single"
        ),
        pytest.param(
            book(reserved={R: "9500", V: "5000"}),
            R,
            D(1000),
            HEDGE,
            C.CAPITAL_INFLIGHT_CAP,
            id="inflight",
        ),
    ],
)
def test_reservation_breaking_several_rules_reports_the_first_in_check_order(
    exchange_book: ExchangeBook,
    tier: CapitalTier,
    amount: Decimal,
    strategy: Strategy,
    code: DecisionCode,
) -> None:
    assert denied(check_reservation(exchange_book, tier, amount, strategy=strategy)).code is code


@pytest.mark.parametrize("strategy", [VOL, ARB, FUND])
def test_safe_mode_denies_risk_increasing_strategy_unless_emergency(strategy: Strategy) -> None:
    tier = DEFAULT_TIER_FOR_STRATEGY[strategy]
    safe = book(safe_mode=True)
    assert denied(reserve(safe, tier, D(100), strategy=strategy)).code is C.EXCHANGE_SAFE_MODE
    granted(reserve(safe, tier, D(100), strategy=strategy, emergency=True))
    granted(reserve(replace(safe, safe_mode=False), tier, D(100), strategy=strategy))


@pytest.mark.parametrize("strategy", [VOL, ARB, FUND])
def test_reserve_tier_for_non_hedging_strategy_is_forbidden(strategy: Strategy) -> None:
    decision = denied(reserve(book(), R, D(100), strategy=strategy))
    assert decision.code is C.CAPITAL_TIER_FORBIDDEN
    assert decision.rejects
    assert decision.context["strategy"] == strategy.value


def test_zero_equity_denies_without_dividing_and_offers_nothing() -> None:
    empty = book("0")
    assert denied(reserve(empty, V, D("0.01"), strategy=VOL)).context["reason"] == (
        "equity_not_positive"
    )
    assert all(empty.available(tier) == 0 for tier in CapitalTier)
    assert all(empty.budget(tier) == 0 for tier in CapitalTier)
    assert breaches(empty) == []


def test_tier_budgets_are_their_share_of_equity() -> None:
    assert [book().budget(tier) for tier in (V, A, R)] == [D(25000), D(15000), D(10000)]
    assert (book().single_job_limit_usd, book().inflight_limit_usd) == (D(5000), D(15000))


def test_negative_equity_leaves_no_budget_and_an_empty_book_in_no_breach() -> None:
    blown = book("-2000")
    assert [blown.budget(tier) for tier in CapitalTier] == [0, 0, 0]
    assert (blown.single_job_limit_usd, blown.inflight_limit_usd) == (0, 0)
    assert breaches(blown) == []
    assert blown.available(V) == 0
    held = with_equity(book(reserved={V: "100"}), D(-2000))
    assert len(breaches(held)) == 2  # in flight and the volume tier


def test_unknown_tier_key_in_reserved_is_refused_when_the_book_is_built() -> None:
    with pytest.raises(ValueError, match="unknown capital tier"):
        ExchangeBook(
            exchange="binance",
            equity_usd=D(1),
            volume_share=D("0.5"),
            arbitrage_share=D("0.3"),
            reserve_share=D("0.2"),
            single_job_cap=D("0.1"),
            inflight_cap=D("0.3"),
            safe_mode=False,
            reserved={"s4": D(1)},  # type: ignore[dict-item]
        )


def test_book_fills_missing_tiers_with_zero_and_cannot_be_changed_in_place() -> None:
    fresh = book(reserved={A: "10"})
    assert dict(fresh.reserved) == {V: 0, A: 10, R: 0}
    assert fresh == book(reserved={V: "0", A: "10.00"})
    with pytest.raises(TypeError):
        fresh.reserved[V] = D(1)  # type: ignore[index]


def test_book_limits_are_its_budgets_and_caps_and_follow_a_new_equity() -> None:
    limits = book().limits
    assert limits == BookLimits(
        defect=None,
        budgets={V: D(25000), A: D(15000), R: D(10000)},
        single_job_usd=D(5000),
        inflight_usd=D(15000),
    )
    assert with_equity(book(), D(10000)).limits.inflight_usd == D(3000)
    held = granted(reserve(book(), V, D(100), strategy=VOL))
    assert held.limits == limits  # reservations do not change what the account allows
    assert book(volume_share="0.9").limits.defect == "tier shares add up to 1.40, more than 1"


def test_available_is_the_least_of_tier_room_inflight_room_and_single_job_cap() -> None:
    assert book().available(V) == D(5000)  # single-job cap binds
    assert book(reserved={V: "12000"}).available(A) == D(3000)  # in-flight room binds
    assert book(reserved={R: "9200"}).available(R) == D(800)  # tier budget binds
    assert book(reserved={V: "15000"}).available(V) == 0


# --------------------------------------------------------------------------- #
# release, equity changes, breaches


def test_release_returns_capital_to_its_tier() -> None:
    held = granted(reserve(book(), A, D(4000), strategy=FUND))
    assert release(held, A, D(4000)) == book()
    assert release(held, A, D("1500.50")).reserved[A] == D("2499.50")


@pytest.mark.parametrize(
    ("tier", "amount"),
    [
        pytest.param(A, D("4000.01"), id="more-than-held"),
        pytest.param(V, D(1), id="other-tier"),
        pytest.param(A, D(0), id="zero"),
        pytest.param(A, D(-5), id="negative"),
        pytest.param(A, D("NaN"), id="nan"),
    ],
)
def test_release_below_zero_or_of_a_bad_amount_raises(tier: CapitalTier, amount: Decimal) -> None:
    held = granted(reserve(book(), A, D(4000), strategy=FUND))
    with pytest.raises(ValueError, match="binance"):
        release(held, tier, amount)


def test_equity_drop_below_reservations_is_a_breach_and_blocks_every_tier_until_released() -> None:
    full = book(reserved={V: "10000", A: "5000"})  # 15,000 of 15,000 in flight
    assert breaches(full) == []
    down = with_equity(full, D(40000))  # in-flight cap now 12,000; tiers 20,000 / 12,000
    found = breaches(down)
    assert len(found) == 1
    assert "binance" in found[0]
    assert "in-flight cap 12000" in found[0]
    for tier, strategy in [(V, VOL), (A, ARB), (R, HEDGE)]:
        assert denied(reserve(down, tier, D("0.01"), strategy=strategy)).code is (
            C.CAPITAL_INFLIGHT_CAP
        )
        assert down.available(tier) == 0
    at_limit = release(down, V, D(3000))
    assert breaches(at_limit) == []
    assert denied(reserve(at_limit, R, D("0.01"), strategy=HEDGE)).code is C.CAPITAL_INFLIGHT_CAP
    granted(reserve(release(at_limit, A, D(500)), R, D(500), strategy=HEDGE))


def test_tier_over_budget_after_drawdown_blocks_other_tiers_with_room() -> None:
    down = with_equity(book(reserved={R: "10000"}), D(45000))  # reserve budget 9,000
    assert [line for line in breaches(down) if "reserve reservations 10000" in line]
    decision = denied(reserve(down, V, D(100), strategy=VOL))
    assert decision.code is C.CAPITAL_TIER_BUDGET
    assert (decision.context["tier"], decision.context["requested_tier"]) == ("reserve", "volume")
    assert down.available(V) == 0
    assert breaches(release(down, R, D(1000))) == []


def test_book_with_bad_numbers_is_denied_as_invalid_with_the_field_named() -> None:
    decision = denied(reserve(book(reserve_share="-0.1"), V, D(1), strategy=VOL))
    assert (decision.code, decision.context["reason"]) == (C.EXCHANGE_DISABLED, "invalid_book")
    assert "reserve_share" in decision.context["detail"]


def test_breaches_of_a_book_with_bad_numbers_name_the_field() -> None:
    assert breaches(book("Infinity")) == [
        "binance: equity_usd=Decimal('Infinity') is not a finite Decimal"
    ]
    assert "single_job_cap" in breaches(book(single_job_cap="1.5"))[0]


def test_default_tier_mapping_covers_every_strategy_and_only_hedging_uses_reserve() -> None:
    assert set(DEFAULT_TIER_FOR_STRATEGY) == set(Strategy)
    assert {s for s, t in DEFAULT_TIER_FOR_STRATEGY.items() if t is R} == {HEDGE}
    assert DEFAULT_TIER_FOR_STRATEGY[VOL] is V
    assert DEFAULT_TIER_FOR_STRATEGY[ARB] is DEFAULT_TIER_FOR_STRATEGY[FUND] is A
    with pytest.raises(TypeError):
        DEFAULT_TIER_FOR_STRATEGY[VOL] = A  # type: ignore[index]


# --------------------------------------------------------------------------- #
# multi-exchange jobs: all or nothing


BOOKS = {
    "binance": book("50000"),
    "okx": book("40000", exchange="okx"),
    "bybit": book("30000", exchange="bybit"),
}


def test_job_within_limits_on_every_exchange_reserves_on_each_of_them() -> None:
    planned = plan_job_reservations(
        BOOKS, {"okx": D(4000), "binance": D(4000)}, strategy=Strategy.FUNDING_ARB
    )
    assert isinstance(planned, dict)
    assert list(planned) == ["binance", "okx"]
    assert planned["binance"].reserved[A] == planned["okx"].reserved[A] == D(4000)
    assert BOOKS["okx"].reserved_total == 0


def test_job_denied_on_one_exchange_reserves_nothing_and_names_that_exchange() -> None:
    outcome = plan_job_reservations(
        BOOKS, {"binance": D(4500), "okx": D(4500)}, strategy=Strategy.ARB
    )
    decision = denied(outcome)
    assert decision.code is C.CAPITAL_SINGLE_JOB_CAP
    assert decision.context["exchange"] == "okx"
    assert D(decision.context["limit_usd"]) == D(4000)
    assert all(b.reserved_total == 0 for b in BOOKS.values())


def test_job_on_exchange_in_safe_mode_is_denied_everywhere() -> None:
    books = {**BOOKS, "okx": replace(BOOKS["okx"], safe_mode=True)}
    decision = denied(
        plan_job_reservations(books, {"binance": D(100), "okx": D(100)}, strategy=VOL)
    )
    assert (decision.code, decision.context["exchange"]) == (C.EXCHANGE_SAFE_MODE, "okx")
    assert isinstance(
        plan_job_reservations(books, {"binance": D(100), "okx": D(100)}, strategy=HEDGE), dict
    )
    assert isinstance(
        plan_job_reservations(
            books, {"binance": D(100), "okx": D(100)}, strategy=VOL, emergency=True
        ),
        dict,
    )


def test_job_on_unknown_exchange_is_denied_as_exchange_disabled() -> None:
    decision = denied(plan_job_reservations(BOOKS, {"binance": D(1), "kraken": D(1)}, strategy=ARB))
    assert decision.code is C.EXCHANGE_DISABLED
    assert decision.context["exchange"] == "kraken"


def test_book_filed_under_another_name_is_denied() -> None:
    books = {"binance": BOOKS["okx"]}
    assert denied(plan_job_reservations(books, {"binance": D(1)}, strategy=ARB)).code is (
        C.EXCHANGE_DISABLED
    )


def test_job_denied_on_several_exchanges_reports_the_first_by_name() -> None:
    decision = denied(
        plan_job_reservations(BOOKS, {"okx": D(9000), "bybit": D(9000)}, strategy=ARB)
    )
    assert decision.context["exchange"] == "bybit"


def test_job_uses_the_tier_its_strategy_maps_to() -> None:
    planned = plan_job_reservations(BOOKS, {"binance": D(10), "okx": D(10)}, strategy=HEDGE)
    assert isinstance(planned, dict)
    assert all(b.reserved[R] == D(10) for b in planned.values())
    custom = {VOL: A}
    planned = plan_job_reservations(
        BOOKS, {"binance": D(10)}, strategy=VOL, tier_for_strategy=custom
    )
    assert isinstance(planned, dict)
    assert planned["binance"].reserved[A] == D(10)
    decision = denied(
        plan_job_reservations(BOOKS, {"binance": D(10)}, strategy=ARB, tier_for_strategy=custom)
    )
    assert (decision.code, decision.context["reason"]) == (
        C.CAPITAL_TIER_FORBIDDEN,
        "no_tier_for_strategy",
    )


def test_job_touching_no_exchange_is_invalid() -> None:
    assert denied(plan_job_reservations(BOOKS, {}, strategy=ARB)).code is (C.CAPITAL_INVALID_AMOUNT)


# --------------------------------------------------------------------------- #
# properties


percent = st.integers(min_value=0, max_value=100)
money = st.decimals(min_value=D("0.01"), max_value=D(20000), places=2)
# mostly a positive equity; one draw in ten is zero, one below zero (a blown account)
equity = st.tuples(
    st.integers(min_value=0, max_value=9),
    st.decimals(min_value=D(1), max_value=D(200000), places=2),
).map(lambda flag_amount: {8: -flag_amount[1], 9: D(0)}.get(flag_amount[0], flag_amount[1]))


@st.composite
def book_params(draw: st.DrawFn) -> dict[str, Any]:
    volume = draw(st.integers(min_value=0, max_value=100))
    arbitrage = draw(st.integers(min_value=0, max_value=100 - volume))
    reserve_ = draw(st.integers(min_value=0, max_value=100 - volume - arbitrage))
    inflight = draw(st.integers(min_value=1, max_value=100))
    single = draw(st.integers(min_value=1, max_value=inflight))
    return {
        "volume_share": D(volume) / 100,
        "arbitrage_share": D(arbitrage) / 100,
        "reserve_share": D(reserve_) / 100,
        "inflight_cap": D(inflight) / 100,
        "single_job_cap": D(single) / 100,
    }


@st.composite
def books(draw: st.DrawFn, name: str = "binance") -> ExchangeBook:
    return ExchangeBook(
        exchange=name,
        equity_usd=draw(equity),
        safe_mode=draw(st.booleans()),
        reserved=draw(st.dictionaries(st.sampled_from(CapitalTier), money)),
        **draw(book_params()),
    )


@settings(max_examples=300)
@given(
    exchange_book=books(),
    tier=st.sampled_from(CapitalTier),
    strategy=st.sampled_from(Strategy),
    emergency=st.booleans(),
    data=st.data(),
)
def test_reservation_is_granted_exactly_when_it_fits_what_is_available(
    exchange_book: ExchangeBook,
    tier: CapitalTier,
    strategy: Strategy,
    emergency: bool,
    data: st.DataObject,
) -> None:
    room = exchange_book.available(tier)
    near_the_edge = st.integers(min_value=-2, max_value=2).map(
        lambda cents: max(D("0.01"), room + D(cents) / 100)
    )
    amount = data.draw(st.one_of(money, near_the_edge), label="amount")
    ask: dict[str, Any] = {"strategy": strategy, "emergency": emergency}
    decision = check_reservation(exchange_book, tier, amount, **ask)
    may_use = strategy is HEDGE or emergency
    gated = (exchange_book.safe_mode or tier is R) and not may_use
    fits = amount <= room
    assert (decision is None) == (fits and not gated)
    if decision is not None and decision.code in CAP_CODES:
        ctx = decision.context
        # the context explains the denial in numbers
        assert D(ctx["reserved_usd"]) + D(ctx["amount_usd"]) > D(ctx["limit_usd"])
        assert D(ctx["equity_usd"]) == exchange_book.equity_usd
        assert ctx["exchange"] == "binance"
    if decision is None:
        after = granted(
            reserve(exchange_book, tier, amount, strategy=strategy, emergency=emergency)
        )
        assert breaches(after) == []
        assert amount <= exchange_book.single_job_limit_usd


@settings(max_examples=200)
@given(
    binance=books("binance"),
    okx=books("okx"),
    notional=st.dictionaries(st.sampled_from(["binance", "okx", "kraken"]), money, min_size=1),
    strategy=st.sampled_from(Strategy),
)
def test_multi_exchange_plan_is_every_single_reservation_or_the_first_denial_by_name(
    binance: ExchangeBook, okx: ExchangeBook, notional: dict[str, Decimal], strategy: Strategy
) -> None:
    exchange_books = {"binance": binance, "okx": okx}
    tier = DEFAULT_TIER_FOR_STRATEGY[strategy]
    outcome = plan_job_reservations(exchange_books, notional, strategy=strategy)
    singles: dict[str, ExchangeBook | Decision] = {}
    for name in sorted(notional):
        if name not in exchange_books:
            singles[name] = Decision(
                C.EXCHANGE_DISABLED,
                {"exchange": name, "strategy": strategy.value, "reason": "unknown_exchange"},
            )
            break
        singles[name] = reserve(exchange_books[name], tier, notional[name], strategy=strategy)
        if isinstance(singles[name], Decision):
            break
    first_denial = next((s for s in singles.values() if isinstance(s, Decision)), None)
    if first_denial is None:
        assert outcome == singles
    else:
        assert outcome == first_denial


class CapitalBookMachine(RuleBasedStateMachine):
    """Any sequence of reserve / release / equity changes on one exchange.

    A model list of live reservations is kept alongside the book.
    """

    def __init__(self) -> None:
        super().__init__()
        self.book = book()
        self.live: list[tuple[CapitalTier, Decimal]] = []
        self.equity_dropped = False

    @initialize(params=book_params(), start=st.decimals(min_value=100, max_value=10**6, places=2))
    def open_account(self, params: dict[str, Any], start: Decimal) -> None:
        self.book = ExchangeBook(
            exchange="binance", equity_usd=start, safe_mode=False, reserved={}, **params
        )

    @rule(
        tier=st.sampled_from(CapitalTier),
        basis_points=st.integers(min_value=1, max_value=4000),
        bad=st.integers(min_value=0, max_value=19),
        strategy=st.sampled_from(Strategy),
        emergency=st.booleans(),
    )
    def reserve_capital(
        self,
        tier: CapitalTier,
        basis_points: int,
        bad: int,
        strategy: Strategy,
        emergency: bool,
    ) -> None:
        # sized against the current equity, so every cap is reached often
        equity_now = self.book.equity_usd
        amount = max(D("0.01"), (equity_now * basis_points / 10000).quantize(D("0.01")))
        amount = {0: D(0), 1: D(-1)}.get(bad, amount)
        before = breaches(self.book)
        outcome = reserve(self.book, tier, amount, strategy=strategy, emergency=emergency)
        if isinstance(outcome, Decision):
            assert not outcome.admitted
            return
        assert before == [], "granted on a book that already breaches"
        assert breaches(outcome) == []
        assert 0 < amount <= outcome.single_job_limit_usd
        self.book = outcome
        self.live.append((tier, amount))

    @precondition(lambda self: bool(self.live))
    @rule(pick=st.integers(min_value=0, max_value=1000))
    def release_capital(self, pick: int) -> None:
        tier, amount = self.live.pop(pick % len(self.live))
        self.book = release(self.book, tier, amount)

    @rule(
        percent=st.integers(min_value=40, max_value=160),
        absolute=st.one_of(st.none(), st.none(), st.none(), equity),
    )
    def mark_equity(self, percent: int, absolute: Decimal | None) -> None:
        """Equity moves up or down by a percentage, or jumps (to zero, below, anywhere)."""
        if absolute is None:
            new_equity = (self.book.equity_usd * percent / 100).quantize(D("0.01"))
        else:
            new_equity = absolute
        if new_equity < self.book.equity_usd:
            self.equity_dropped = True
        self.book = with_equity(self.book, new_equity)

    @rule(on=st.booleans())
    def set_safe_mode(self, on: bool) -> None:
        self.book = replace(self.book, safe_mode=on)

    @invariant()
    def totals_equal_the_live_reservations(self) -> None:
        for tier in CapitalTier:
            assert self.book.reserved[tier] == sum(
                (amount for t, amount in self.live if t is tier), D(0)
            )
        assert self.book.reserved_total == sum((amount for _, amount in self.live), D(0))

    @invariant()
    def limits_handed_on_by_reserve_and_release_are_those_of_a_fresh_book(self) -> None:
        fresh = replace(self.book)  # a new object: works its limits out anew
        assert self.book.limits == BookLimits.of(fresh) == fresh.limits

    @invariant()
    def without_a_drawdown_the_book_never_breaches(self) -> None:
        if not self.equity_dropped:
            assert breaches(self.book) == []


CapitalBookMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30)
test_any_sequence_of_reserve_release_and_equity_changes_keeps_invariant_1 = (
    CapitalBookMachine.TestCase
)
