"""Validation of submitted hedge jobs (issue 2, section 5), without a database.

Every bad job must be refused with the offending field named; every good job
must parse to exactly what was submitted.  ``parse_job`` is the path both
``perpbot submit`` and ``POST /api/jobs`` take.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from perpbot_db.domain.execution import client_order_id
from perpbot_db.domain.jobspec import (
    FieldProblem,
    JobSpec,
    SubmissionRules,
    check_job,
    parse_job,
)
from perpbot_db.domain.lifecycle import Side, Strategy

NOW = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
EXCHANGES = ("binance", "okx", "bybit")
RULES = SubmissionRules(exchanges=frozenset(EXCHANGES))

VALID_JOB: dict[str, Any] = {
    "strategy": "funding_arb",
    "symbol": "BTC/USDT:USDT",
    "notional_usd": 5000,
    "expected_edge_bps": 12.5,
    "expected_pnl_usd": 6.25,
    "legs": [
        {"exchange": "binance", "side": "buy", "quantity": 0.05},
        {"exchange": "okx", "side": "sell", "quantity": 0.05},
    ],
    "idempotency_key": "fra-btc-2026-06-01T00",
    "deadline": "2026-06-01T00:05:00Z",
    "metadata": {"source": "funding_scanner"},
}


def job(**changes: Any) -> dict[str, Any]:
    """A copy of the valid job with top-level fields replaced."""
    out = copy.deepcopy(VALID_JOB)
    out.update(changes)
    return out


def parse(
    raw: dict[str, Any] | str, rules: SubmissionRules = RULES
) -> JobSpec | list[FieldProblem]:
    return parse_job(raw if isinstance(raw, str) else json.dumps(raw), rules, NOW)


def problems_of(result: JobSpec | list[FieldProblem]) -> dict[str, str]:
    assert isinstance(result, list), f"expected the job to be rejected, it parsed: {result!r}"
    assert result, "a rejection must name at least one problem"
    return {p.field: p.message for p in result}


def parsed(result: JobSpec | list[FieldProblem]) -> JobSpec:
    assert isinstance(result, JobSpec), f"expected the job to parse, got {result!r}"
    return result


# -- mutations of the valid job, for the table ----------------------------------------

Mutation = Callable[[dict[str, Any]], dict[str, Any] | str]


def set_field(name: str, value: Any) -> Mutation:
    def mutate(j: dict[str, Any]) -> dict[str, Any]:
        j[name] = value
        return j

    return mutate


def drop_field(name: str) -> Mutation:
    def mutate(j: dict[str, Any]) -> dict[str, Any]:
        del j[name]
        return j

    return mutate


def set_leg(index: int, name: str, value: Any) -> Mutation:
    def mutate(j: dict[str, Any]) -> dict[str, Any]:
        j["legs"][index][name] = value
        return j

    return mutate


def drop_leg_field(index: int, name: str) -> Mutation:
    def mutate(j: dict[str, Any]) -> dict[str, Any]:
        del j["legs"][index][name]
        return j

    return mutate


def with_legs(*legs: tuple[str, str, Any]) -> Mutation:
    def mutate(j: dict[str, Any]) -> dict[str, Any]:
        j["legs"] = [{"exchange": e, "side": s, "quantity": q} for e, s, q in legs]
        return j

    return mutate


def raw_json_number(name: str, literal: str) -> Mutation:
    """Write a bare JSON token (NaN, Infinity) that json.dumps would never produce."""

    def mutate(j: dict[str, Any]) -> str:
        j[name] = "__TOKEN__"
        return json.dumps(j).replace('"__TOKEN__"', literal)

    return mutate


def raw_text(text: str) -> Mutation:
    return lambda _j: text


SCORES = ("risk_score", "latency_score", "vol_score", "funding_score", "liquidity_score")

REJECTED = [
    # notional: non-positive and non-finite, as number, bare token and string
    pytest.param(
        set_field("notional_usd", 0), {"notional_usd": "greater than 0"}, id="notional-zero"
    ),
    pytest.param(
        set_field("notional_usd", -5000), {"notional_usd": "greater than 0"}, id="notional-negative"
    ),
    pytest.param(
        raw_json_number("notional_usd", "NaN"), {"notional_usd": "finite"}, id="notional-NaN-token"
    ),
    pytest.param(
        raw_json_number("notional_usd", "Infinity"),
        {"notional_usd": "finite"},
        id="notional-Infinity-token",
    ),
    pytest.param(
        raw_json_number("notional_usd", "-Infinity"),
        {"notional_usd": "finite"},
        id="notional-minus-Infinity-token",
    ),
    pytest.param(
        set_field("notional_usd", "nan"), {"notional_usd": "finite"}, id="notional-nan-string"
    ),
    pytest.param(
        set_field("notional_usd", "Infinity"), {"notional_usd": "finite"}, id="notional-inf-string"
    ),
    pytest.param(
        set_field("notional_usd", "5000.123456789"),
        {"notional_usd": "8 decimal places"},
        id="notional-too-many-decimals",
    ),
    pytest.param(
        set_field("notional_usd", 1e15), {"notional_usd": "less than"}, id="notional-too-big"
    ),
    # quantity
    pytest.param(
        set_leg(0, "quantity", 0), {"legs[0].quantity": "greater than 0"}, id="quantity-zero"
    ),
    pytest.param(
        set_leg(1, "quantity", -0.05),
        {"legs[1].quantity": "greater than 0"},
        id="quantity-negative",
    ),
    pytest.param(set_leg(0, "quantity", "NaN"), {"legs[0].quantity": "finite"}, id="quantity-nan"),
    pytest.param(
        set_leg(1, "quantity", "-Infinity"), {"legs[1].quantity": "finite"}, id="quantity-infinite"
    ),
    pytest.param(
        set_leg(0, "quantity", "0.0500000000001"),
        {"legs[0].quantity": "12 decimal places"},
        id="quantity-too-many-decimals",
    ),
    # leg count and exchanges
    pytest.param(with_legs(("binance", "buy", 0.05)), {"legs": "at least 2"}, id="one-leg"),
    pytest.param(with_legs(), {"legs": "at least 2"}, id="zero-legs"),
    pytest.param(
        set_leg(1, "exchange", "kraken"),
        {"legs[1].exchange": "unknown exchange 'kraken'"},
        id="unconfigured-exchange",
    ),
    pytest.param(
        set_leg(0, "exchange", "Binance"),
        {"legs[0].exchange": "not an exchange id"},
        id="exchange-not-an-id",
    ),
    pytest.param(
        with_legs(("okx", "buy", 0.05), ("okx", "buy", 0.05), ("okx", "sell", 0.1)),
        {
            "legs[1]": "one leg per exchange",
            "legs[2]": "never trades against itself",
            "legs": "a hedge needs two exchanges",
        },
        id="all-legs-on-one-exchange",
    ),
    pytest.param(
        with_legs(("binance", "buy", 0.05), ("binance", "sell", 0.05)),
        {"legs[1]": "never trades against itself", "legs": "a hedge needs two exchanges"},
        id="two-legs-self-match",
    ),
    pytest.param(
        with_legs(("binance", "buy", 0.1), ("okx", "sell", 0.05), ("binance", "sell", 0.05)),
        {"legs[2]": "buys and sells BTC/USDT:USDT on binance (with legs[0])"},
        id="self-match-on-one-of-two-exchanges",
    ),
    pytest.param(
        with_legs(("binance", "buy", 0.05), ("okx", "sell", 0.1), ("binance", "buy", 0.05)),
        {"legs[2]": "repeats legs[0]"},
        id="duplicate-leg-same-exchange-and-side",
    ),
    pytest.param(
        set_leg(1, "quantity", 0.06), {"legs": "unbalanced hedge"}, id="unbalanced-beyond-tolerance"
    ),
    pytest.param(set_leg(1, "side", "buy"), {"legs": "no sell leg"}, id="all-buy-legs"),
    pytest.param(set_leg(0, "side", "sell"), {"legs": "no buy leg"}, id="all-sell-legs"),
    pytest.param(set_leg(0, "side", "long"), {"legs[0].side": "buy"}, id="side-not-buy-or-sell"),
    # score components, each below 0 and above 100
    *(
        pytest.param(set_field(name, value), {name: fragment}, id=f"{name}-{label}")
        for name in SCORES
        for value, label, fragment in (
            (-0.001, "below-0", "greater than or equal to 0"),
            (100.001, "above-100", "less than or equal to 100"),
        )
    ),
    # deadline
    pytest.param(
        set_field("deadline", "2026-05-31T23:59:59Z"),
        {"deadline": "in the past"},
        id="deadline-past",
    ),
    pytest.param(
        set_field("deadline", "2026-06-01T00:00:00Z"),
        {"deadline": "in the past"},
        id="deadline-now",
    ),
    pytest.param(
        set_field("deadline", "2026-06-01T00:05:00"),
        {"deadline": "timezone"},
        id="deadline-without-timezone",
    ),
    pytest.param(set_field("deadline", "soon"), {"deadline": "datetime"}, id="deadline-not-a-date"),
    # strategy, metadata, unknown fields
    pytest.param(
        set_field("strategy", "scalp"), {"strategy": "funding_arb"}, id="unknown-strategy"
    ),
    pytest.param(
        set_field("metadata", {"note": "x" * 5000}),
        {"metadata": "more than the limit of 4096"},
        id="oversized-metadata",
    ),
    pytest.param(set_field("metadata", ["a"]), {"metadata": "object"}, id="metadata-not-object"),
    pytest.param(set_field("price", 1), {"price": "unknown field"}, id="unknown-top-level-field"),
    pytest.param(
        set_leg(1, "price", 1), {"legs[1].price": "unknown field"}, id="unknown-leg-field"
    ),
    # metadata PostgreSQL would refuse (jsonb): named by its path, never a database error
    pytest.param(
        set_field("metadata", {"notes": ["a", "b", "c\u0000d"]}),
        {"metadata.notes[2]": "NUL character"},
        id="metadata-NUL-in-a-string",
    ),
    pytest.param(
        set_field("metadata", {"a": {"b\u0000": 1}}),
        {"metadata.a.b\\x00": "NUL character"},
        id="metadata-NUL-in-a-key",
    ),
    pytest.param(
        set_field("metadata", {"note": "\ud800"}),
        {"metadata.note": "lone surrogate"},
        id="metadata-lone-surrogate",
    ),
    pytest.param(
        raw_text(json.dumps(VALID_JOB).replace('"funding_scanner"', "NaN")),
        {"metadata.source": "NaN is not a number"},
        id="metadata-NaN",
    ),
    pytest.param(
        raw_text(json.dumps(VALID_JOB).replace('"funding_scanner"', "-Infinity")),
        {"metadata.source": "-Infinity is not a number"},
        id="metadata-minus-Infinity",
    ),
    pytest.param(
        raw_text(json.dumps(VALID_JOB).replace('"funding_scanner"', "1e131072")),
        {"metadata.source": "number too large"},
        id="metadata-number-beyond-numeric",
    ),
    pytest.param(
        raw_text(json.dumps(VALID_JOB).replace('"funding_scanner"', "1e-16384")),
        {"metadata.source": "too many decimal places"},
        id="metadata-number-below-numeric-scale",
    ),
    pytest.param(
        raw_text(json.dumps(VALID_JOB).replace('"funding_scanner"', "[" * 10_000 + "]" * 10_000)),
        {"job": "nested deeper than"},
        id="nesting-deep-enough-for-RecursionError",
    ),
    # not a job at all
    pytest.param(raw_text('{"strategy": "arb",'), {"job": "not valid JSON"}, id="invalid-json"),
    pytest.param(raw_text(""), {"job": "not valid JSON"}, id="empty-line"),
    pytest.param(raw_text("[]"), {"job": "must be a JSON object"}, id="json-array"),
    pytest.param(raw_text('"job"'), {"job": "must be a JSON object"}, id="json-string"),
    # idempotency key
    pytest.param(
        set_field("idempotency_key", "k" * 201),
        {"idempotency_key": "1 to 200 characters"},
        id="idempotency-key-too-long",
    ),
    pytest.param(
        set_field("idempotency_key", ""),
        {"idempotency_key": "1 to 200 characters"},
        id="idempotency-key-empty",
    ),
    pytest.param(
        set_field("idempotency_key", "fra\nbtc"),
        {"idempotency_key": "without control characters"},
        id="idempotency-key-newline",
    ),
    pytest.param(
        set_field("idempotency_key", "fra\x7fbtc"),
        {"idempotency_key": "without control characters"},
        id="idempotency-key-DEL",
    ),
    # missing required fields
    *(
        pytest.param(drop_field(name), {name: "required field is missing"}, id=f"missing-{name}")
        for name in ("strategy", "symbol", "notional_usd", "legs")
    ),
    pytest.param(
        drop_leg_field(0, "exchange"),
        {"legs[0].exchange": "required field is missing"},
        id="missing-leg-exchange",
    ),
    pytest.param(
        drop_leg_field(1, "side"),
        {"legs[1].side": "required field is missing"},
        id="missing-leg-side",
    ),
    pytest.param(
        drop_leg_field(1, "quantity"),
        {"legs[1].quantity": "required field is missing"},
        id="missing-leg-quantity",
    ),
]


def test_the_valid_job_of_the_table_parses_to_what_was_submitted() -> None:
    spec = parsed(parse(VALID_JOB))
    assert spec.strategy is Strategy.FUNDING_ARB
    assert spec.symbol == "BTC/USDT:USDT"
    assert spec.notional_usd == Decimal("5000")
    assert [(leg.exchange, leg.side, leg.quantity) for leg in spec.legs] == [
        ("binance", Side.BUY, Decimal("0.05")),
        ("okx", Side.SELL, Decimal("0.05")),
    ]
    assert spec.deadline == NOW + timedelta(minutes=5)
    assert spec.metadata == {"source": "funding_scanner"}
    assert spec.volume_usd == Decimal("10000")


@pytest.mark.parametrize(("mutate", "expected"), REJECTED)
def test_bad_job_is_rejected_naming_exactly_the_bad_fields(
    mutate: Mutation, expected: dict[str, str]
) -> None:
    problems = problems_of(parse(mutate(copy.deepcopy(VALID_JOB))))
    assert set(problems) == set(expected), problems
    for field, fragment in expected.items():
        assert fragment.lower() in problems[field].lower(), (field, problems[field])


@pytest.mark.parametrize(
    "symbol",
    [
        "BTCUSDT",
        "BTC-USDT",
        "btc/usdt",
        "BTC/usdt",
        "BTC_USDT",
        "",
        "/USDT",
        "BTC/",
        "BTC/USDT:",
        "BTC/USDT:USDT-2612",
        "BTC/USDT\n",
        " BTC/USDT",
        "BTC/USDT:USDT/ETH",
    ],
)
def test_job_with_non_ccxt_symbol_is_rejected_naming_the_symbol(symbol: str) -> None:
    problems = problems_of(parse(job(symbol=symbol)))
    assert set(problems) == {"symbol"}
    assert "ccxt unified symbol" in problems["symbol"]


@pytest.mark.parametrize(
    "symbol",
    [
        "BTC/USDT:USDT",
        "1000PEPE/USDT:USDT",
        "BTC/USD:BTC-261225",
        "ETH/USDT",
        "BTC/USD:BTC-261225-60000-C",
        "ETH/USDC:USDC-261225-3500.5-P",
    ],
)
def test_job_with_ccxt_unified_symbol_is_accepted(symbol: str) -> None:
    assert parsed(parse(job(symbol=symbol))).symbol == symbol


def test_unbalanced_hedge_rebalance_job_is_accepted() -> None:
    raw = job(strategy="hedge_rebalance")
    raw["legs"][1]["quantity"] = 0.5
    spec = parsed(parse(raw))
    assert spec.strategy is Strategy.HEDGE_REBALANCE
    assert [leg.quantity for leg in spec.legs] == [Decimal("0.05"), Decimal("0.5")]


def test_hedge_rebalance_job_still_may_not_buy_and_sell_on_one_exchange() -> None:
    raw = job(strategy="hedge_rebalance")
    raw["legs"][1]["exchange"] = "binance"
    problems = problems_of(parse(raw))
    assert "never trades against itself" in problems["legs[1]"]


def test_hedge_within_tolerance_is_accepted_and_just_beyond_is_rejected() -> None:
    rules = SubmissionRules(exchanges=frozenset(EXCHANGES), hedge_tolerance=Decimal("0.01"))
    inside = job()
    inside["legs"] = [
        {"exchange": "binance", "side": "buy", "quantity": "100"},
        {"exchange": "okx", "side": "sell", "quantity": "99"},  # exactly 1%
    ]
    parsed(parse(inside, rules))
    outside = copy.deepcopy(inside)
    outside["legs"][1]["quantity"] = "98.999999999999"
    assert set(problems_of(parse(outside, rules))) == {"legs"}


def test_metadata_at_the_byte_limit_is_accepted_and_one_byte_more_is_rejected() -> None:
    # {"n":"..."} is 8 bytes of JSON around the value
    parsed(parse(job(metadata={"n": "x" * 4088})))
    problems = problems_of(parse(job(metadata={"n": "x" * 4089})))
    assert problems == {"metadata": "4097 bytes, more than the limit of 4096"}


def test_metadata_limit_counts_utf8_bytes_not_characters() -> None:
    # 2045 two-byte characters: 2053 characters of JSON, but 4098 bytes
    problems = problems_of(parse(job(metadata={"n": "é" * 2045})))
    assert problems == {"metadata": "4098 bytes, more than the limit of 4096"}


def test_metadata_limit_follows_the_configured_rule() -> None:
    rules = SubmissionRules(exchanges=frozenset(EXCHANGES), max_metadata_bytes=16)
    assert set(problems_of(parse(job(), rules))) == {"metadata"}


def test_metadata_with_decimal_numbers_is_written_digit_for_digit_as_jsonb_holds_it() -> None:
    raw = json.dumps(job(metadata={"px": "P", "n": "N", "deep": [{"e": "E"}], "ok": True}))
    raw = raw.replace('"P"', "97000.1250").replace('"N"', "123456789012345678901234567890")
    raw = raw.replace('"E"', "1.5e3")
    spec = parsed(parse(raw))
    assert spec.metadata_json == (
        '{"px":97000.1250,"n":123456789012345678901234567890,"deep":[{"e":1500}],"ok":true}'
    )


def test_metadata_nested_32_deep_is_accepted_and_33_deep_is_refused_naming_the_path() -> None:
    def nested(depth: int) -> dict[str, Any]:
        value: Any = 1
        for _ in range(depth - 1):
            value = [value]
        return {"x": value}

    parsed(parse(job(metadata=nested(32))))
    problems = problems_of(parse(job(metadata=nested(33))))
    assert [(field.startswith("metadata.x[0][0]"), msg) for field, msg in problems.items()] == [
        (True, "nested deeper than 32 levels")
    ]


def test_unknown_field_with_control_characters_is_named_escaped_never_raw() -> None:
    raw = job()
    raw["\x1b[31mred\x00" + "k" * 200] = 1
    [field] = problems_of(parse(raw))
    assert field.isprintable() and "\x1b" not in field and "\x00" not in field
    assert field.startswith("\\x1b[31mred\\x00k") and len(field) <= 80


def test_notional_whose_volume_on_every_leg_overflows_the_column_is_refused() -> None:
    venues = [f"venue{i}" for i in range(16)]  # one leg per exchange
    rules = SubmissionRules(exchanges=frozenset(venues), max_legs=16)
    legs = [
        {"exchange": venue, "side": "buy" if i % 2 else "sell", "quantity": 1}
        for i, venue in enumerate(venues)
    ]
    raw = job(notional_usd=900_000_000_000_000, legs=legs)
    problems = problems_of(parse(raw, rules))
    assert "notional_usd" in problems and "expected volume" in problems["notional_usd"]
    parsed(parse({**raw, "expected_volume_usd": 1}, rules))


def test_idempotency_key_of_200_printable_characters_is_accepted() -> None:
    key = "é" * 200
    assert parsed(parse(job(idempotency_key=key))).idempotency_key == key


def test_score_components_at_0_and_100_are_accepted() -> None:
    spec = parsed(parse(job(**{name: 0 for name in SCORES[:3]}, **{n: 100 for n in SCORES[3:]})))
    assert [getattr(spec, name) for name in SCORES] == [0, 0, 0, 100, 100]


def test_optional_fields_may_be_left_out() -> None:
    raw = {k: VALID_JOB[k] for k in ("strategy", "symbol", "notional_usd", "legs")}
    spec = parsed(parse(raw))
    assert spec.deadline is None
    assert spec.idempotency_key is None
    assert spec.metadata == {}
    assert all(getattr(spec, name) is None for name in SCORES)


def test_every_problem_of_a_job_is_reported_not_only_the_first() -> None:
    raw = job(notional_usd=-1, symbol="BTCUSDT", risk_score=101, colour="red")
    raw["legs"][0]["quantity"] = 0
    problems = problems_of(parse(raw))
    assert set(problems) == {"notional_usd", "symbol", "risk_score", "colour", "legs[0].quantity"}


def test_problem_prints_as_field_colon_message() -> None:
    assert str(FieldProblem("legs[1].exchange", "unknown exchange")) == (
        "legs[1].exchange: unknown exchange"
    )


def test_job_with_more_legs_than_configured_is_rejected_naming_legs() -> None:
    rules = SubmissionRules(exchanges=frozenset(EXCHANGES), max_legs=2)
    raw = job()
    raw["legs"] = [
        {"exchange": "binance", "side": "buy", "quantity": 0.1},
        {"exchange": "okx", "side": "sell", "quantity": 0.05},
        {"exchange": "bybit", "side": "sell", "quantity": 0.05},
    ]
    problems = problems_of(parse(raw, rules))
    assert problems == {"legs": "3 legs, at most 2"}
    parsed(parse(raw))  # the default allows eight


def test_check_job_on_a_valid_spec_finds_nothing_until_the_clock_passes_its_deadline() -> None:
    spec = JobSpec.model_validate_json(json.dumps(VALID_JOB))
    assert check_job(spec, RULES, NOW) == []
    late = check_job(spec, RULES, NOW + timedelta(minutes=5))
    assert [p.field for p in late] == ["deadline"]


def test_check_job_names_an_exchange_that_is_no_longer_configured() -> None:
    spec = JobSpec.model_validate_json(json.dumps(VALID_JOB))
    rules = SubmissionRules(exchanges=frozenset({"binance"}))
    problems = check_job(spec, rules, NOW)
    assert [p.field for p in problems] == ["legs[1].exchange"]
    assert "configured: binance" in problems[0].message


# -- property tests ----------------------------------------------------------------


def decimals(
    max_significant: int, max_places: int, min_value: int = 1
) -> st.SearchStrategy[Decimal]:
    """Positive decimals with at most ``max_significant`` digits and ``max_places`` places."""
    return st.builds(
        lambda n, places: Decimal(n).scaleb(-places),
        st.integers(min_value, 10**max_significant - 1),
        st.integers(0, max_places),
    )


def column_decimals(digits: int, places: int) -> st.SearchStrategy[Decimal]:
    """Every positive value a ``numeric(digits, places)`` column holds exactly."""
    return st.integers(0, places).flatmap(
        lambda p: st.integers(1, 10 ** (digits - places + p) - 1).map(
            lambda n: Decimal(n).scaleb(-p)
        )
    )


def to_json(obj: Any) -> str:
    """JSON with Decimals written as bare number literals, digit for digit."""
    literals: dict[str, str] = {}

    def encode(o: Any) -> Any:
        if isinstance(o, Decimal):
            token = f"__DECIMAL_{len(literals)}__"
            literals[token] = format(o, "f")
            return token
        if isinstance(o, dict):
            return {k: encode(v) for k, v in o.items()}
        if isinstance(o, list):
            return [encode(v) for v in o]
        return o

    text = json.dumps(encode(obj))
    for token, literal in literals.items():
        text = text.replace(f'"{token}"', literal)
    return text


exchange_pairs = st.permutations(EXCHANGES).map(lambda p: p[:2])
sides = st.sampled_from([("buy", "sell"), ("sell", "buy")])


# Quantities use the column's full 28 digits / 12 places: JSON numbers are parsed
# digit for digit.  Notional stays below its 1e15 bound.
@settings(max_examples=300, deadline=None)
@given(
    strategy=st.sampled_from(list(Strategy)),
    exchanges=exchange_pairs,
    side_pair=sides,
    quantity=column_decimals(28, 12),
    notional=decimals(15, 8),
)
def test_generated_valid_job_always_parses_to_exactly_what_was_submitted(
    strategy: Strategy,
    exchanges: tuple[str, str],
    side_pair: tuple[str, str],
    quantity: Decimal,
    notional: Decimal,
) -> None:
    raw = {
        "strategy": strategy.value,
        "symbol": "ETH/USDT:USDT",
        "notional_usd": notional,
        "legs": [
            {"exchange": exchanges[0], "side": side_pair[0], "quantity": quantity},
            {"exchange": exchanges[1], "side": side_pair[1], "quantity": quantity},
        ],
    }
    spec = parsed(parse_job(to_json(raw), RULES, NOW))
    assert spec.notional_usd == notional
    assert [leg.quantity for leg in spec.legs] == [quantity, quantity]
    assert [leg.exchange for leg in spec.legs] == list(exchanges)


@pytest.mark.parametrize(
    ("notional", "quantity"),
    [
        pytest.param("1234567890123.12345678", "0.05", id="notional-24-digits"),
        pytest.param("5000", "1234567890123456.123456789012", id="quantity-28-digits"),
        pytest.param("5000", "9999999999999999.999999999999", id="quantity-largest"),
    ],
)
def test_full_precision_decimals_survive_parsing(notional: str, quantity: str) -> None:
    raw = {
        "strategy": "arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": Decimal(notional),
        "legs": [
            {"exchange": "binance", "side": "buy", "quantity": Decimal(quantity)},
            {"exchange": "okx", "side": "sell", "quantity": Decimal(quantity)},
        ],
    }
    spec = parsed(parse_job(to_json(raw), RULES, NOW))
    assert spec.notional_usd == Decimal(notional)
    assert spec.legs[0].quantity == Decimal(quantity)


@settings(max_examples=500, deadline=None)
@given(
    strategy=st.sampled_from([s for s in Strategy if s is not Strategy.HEDGE_REBALANCE]),
    bought=decimals(9, 6),
    sold=decimals(9, 6) | st.just(None),
    nudge=st.integers(-3, 3),
    tolerance=st.sampled_from([Decimal(0), Decimal("0.001"), Decimal("0.01"), Decimal("0.05")]),
)
def test_non_rebalance_job_is_rejected_on_legs_iff_imbalance_exceeds_tolerance(
    strategy: Strategy,
    bought: Decimal,
    sold: Decimal | None,
    nudge: int,
    tolerance: Decimal,
) -> None:
    if sold is None:
        # right at the tolerance boundary, give or take a few millionths
        sold = (bought * (1 - tolerance)).quantize(Decimal("0.000001")) + Decimal(nudge) / 10**6
        assume(sold > 0)
    rules = SubmissionRules(exchanges=frozenset(EXCHANGES), hedge_tolerance=tolerance)
    raw = {
        "strategy": strategy.value,
        "symbol": "BTC/USDT:USDT",
        "notional_usd": 1000,
        "legs": [
            {"exchange": "binance", "side": "buy", "quantity": bought},
            {"exchange": "okx", "side": "sell", "quantity": sold},
        ],
    }
    result = parse_job(to_json(raw), rules, NOW)
    b, s = Fraction(bought), Fraction(sold)
    unbalanced = abs(b - s) / max(b, s) > Fraction(tolerance)
    if unbalanced:
        assert problems_of(result).keys() == {"legs"}
        assert "unbalanced hedge" in problems_of(result)["legs"]
    else:
        parsed(result)


COID = re.compile(r"^([a-z]{1,6})(0|[1-9][0-9]*)L(0|[1-9][0-9]?)A([1-9][0-9]{0,2})$")

coid_inputs = st.tuples(
    st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    st.integers(1, 2**63 - 1),
    st.integers(0, 15),
    st.integers(1, 999),
)


@settings(max_examples=1000, deadline=None)
@given(coid_inputs)
def test_client_order_id_fits_every_exchange_and_parses_back_to_its_inputs(
    inputs: tuple[str, int, int, int],
) -> None:
    coid = client_order_id(*inputs)
    assert len(coid) <= 32
    assert re.fullmatch(r"[A-Za-z0-9-]{1,32}", coid)
    match = COID.fullmatch(coid)
    assert match is not None, coid
    prefix, job_id, leg, attempt = match.groups()
    # the id determines its inputs, so distinct inputs can never share an id
    assert (prefix, int(job_id), int(leg), int(attempt)) == inputs
    assert client_order_id(*inputs) == coid


@settings(max_examples=1000, deadline=None)
@given(coid_inputs, coid_inputs)
def test_client_order_ids_of_distinct_inputs_differ(
    a: tuple[str, int, int, int], b: tuple[str, int, int, int]
) -> None:
    assume(a != b)
    assert client_order_id(*a) != client_order_id(*b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(("pb", 1, 11, 1), ("pb", 11, 1, 1), id="job-vs-leg-digits"),
        pytest.param(("pb", 12, 1, 1), ("pb", 1, 21, 1), id="leg-digits-shift"),
        pytest.param(("pb", 1, 1, 11), ("pb", 11, 1, 1), id="job-vs-attempt-digits"),
    ],
)
def test_client_order_ids_that_could_collide_by_concatenation_differ(
    a: tuple[str, int, int, int], b: tuple[str, int, int, int]
) -> None:
    assert client_order_id(*a) != client_order_id(*b)


def test_longest_client_order_id_is_exactly_32_characters() -> None:
    coid = client_order_id("abcdef", 2**63 - 1, 15, 999)
    assert coid == "abcdef9223372036854775807L15A999"
    assert len(coid) == 32


def test_client_order_id_refuses_a_prefix_an_exchange_would_reject() -> None:
    with pytest.raises(ValueError, match="client order id"):
        client_order_id("pb_", 1, 0, 1)
    with pytest.raises(ValueError, match="client order id"):
        client_order_id("abcdefg", 2**63 - 1, 15, 999)  # 33 characters
