"""The dry run's market views (:class:`perpbot_db.services.tick.MarketViews`), made as
they are read: the same mapping as the tick's :func:`market_views`, whatever is read
first and however the market changed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpbot_db.domain import risk
from perpbot_db.domain.admission import market_key
from perpbot_db.services.tick import MarketViews, market_views
from perpbot_db.store.market import MarketSnapshot

AT = datetime(2026, 12, 2, 7, 30, tzinfo=UTC)
EXCHANGES = ("binance", "okx", "hyper", "a b")  # "a b" + "c" and "a" + "b c" share a name
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "c", "b c")
KEYS = [(e, s) for e in (*EXCHANGES, "a") for s in SYMBOLS]
INTERVALS = {"hyper": 1, "okx": 4}

numbers = st.decimals(min_value=-1, max_value=1000, places=6, allow_nan=False)


@st.composite
def snapshot(draw: st.DrawFn) -> MarketSnapshot:
    exchange, symbol = draw(st.sampled_from(KEYS))
    bid = draw(numbers)
    return MarketSnapshot(
        exchange,
        symbol,
        bid,
        bid + draw(st.decimals(min_value=0, max_value=5, places=6)),
        draw(numbers),
        draw(st.none() | st.decimals(min_value=-1, max_value=1, places=8)),
        draw(st.none() | numbers),
        draw(st.none() | numbers),
        AT - timedelta(seconds=draw(st.integers(0, 30))),
    )


# a read: ("get" | "item" | "in", key), keys the market may not hold included
reads = st.lists(st.tuples(st.sampled_from(["get", "item", "in"]), st.sampled_from(KEYS)))


def check(
    rows: list[MarketSnapshot], first: list[tuple[str, tuple[str, str]]]
) -> tuple[MarketViews, dict[tuple[str, str], risk.MarketView]]:
    """The lazy views of ``rows`` after the reads ``first`` (each checked as it is made),
    with the tick's fresh views beside them."""
    fresh = market_views(rows, INTERVALS)
    lazy = MarketViews(rows, INTERVALS)
    for how, key in first:  # some reads before the whole is looked at
        if how == "get":
            assert lazy.get(key) == fresh.get(key)
        elif how == "in":
            assert (key in lazy) == (key in fresh)
        elif key in fresh:
            assert lazy[key] == fresh[key]
        else:
            with pytest.raises(KeyError):
                lazy[key]
    assert len(lazy) == len(fresh)
    assert list(lazy) == list(fresh)  # the same keys in the same order
    assert list(lazy.items()) == list(fresh.items())
    assert dict(lazy) == fresh
    for key in fresh:
        assert lazy[key] is lazy[key]  # made once
    names = {market_key(*key) for _, key in first}
    named = lazy.named(names)
    assert dict(named.items()) == {k: v for k, v in fresh.items() if market_key(*k) in names}
    assert all(named[k] is lazy[k] for k in named)
    return lazy, fresh


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(snapshot(), max_size=20),
    first=reads,
    changes=st.lists(st.tuples(st.lists(snapshot(), max_size=6), reads), max_size=4),
)
def test_market_views_when_read_lazily_after_random_changes_then_the_fresh_views(
    rows: list[MarketSnapshot],
    first: list[tuple[str, tuple[str, str]]],
    changes: list[tuple[list[MarketSnapshot], list[tuple[str, tuple[str, str]]]]],
) -> None:
    lazy, fresh = check(rows, first)
    assert list(lazy.items()) == list(fresh.items())
    held = {(m.exchange, m.symbol): m for m in rows}
    for taken, then in changes:  # a step's snapshots replace those of their markets
        for m in taken:
            held[(m.exchange, m.symbol)] = m
        lazy, fresh = check([held[k] for k in sorted(held)], then)
        assert list(lazy.items()) == list(fresh.items())
        lazy, fresh = check(rows + taken, then)  # a key twice: the later snapshot wins
        assert list(lazy.items()) == list(fresh.items())
        assert all(lazy[(m.exchange, m.symbol)] == fresh[(m.exchange, m.symbol)] for m in taken)


def test_market_views_lazily_convert_funding_as_the_tick() -> None:
    snap = MarketSnapshot(
        "hyper",
        "BTC/USDT:USDT",
        Decimal(100),
        Decimal(101),
        Decimal(100),
        Decimal("0.0000125"),
        None,
        None,
        AT,
    )
    lazy = MarketViews([snap, replace(snap, exchange="binance")], INTERVALS)
    assert lazy[("hyper", "BTC/USDT:USDT")].funding_rate == Decimal("0.0001")
    assert lazy[("binance", "BTC/USDT:USDT")].funding_rate == Decimal("0.0000125")
    assert MarketViews([snap])[("hyper", "BTC/USDT:USDT")].funding_rate == Decimal("0.0000125")
