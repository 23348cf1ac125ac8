"""The ccxt market source for the feed service, against stubbed venue answers:
quotes, funding, measured latency, the rate limit (workers/venues/ccxt_feed.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from perpbot_db.settings import Settings
from tests.ccxt_fakes import MARKETS, Call, FakeSession
from workers.venues.ccxt_feed import CcxtFeedSource, ccxt_sources
from workers.venues.ccxt_venues import make_exchange

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
NOW_MS = 1_700_000_000_000
AT = datetime(2026, 12, 2, 12, tzinfo=UTC)


def quotes(ccxt_id: str) -> tuple[str, Any]:
    """BTC 50000.0/50000.1 (last 50000.05 where the venue reports one); ETH one-sided."""
    if ccxt_id == "binanceusdm":
        return r"GET /fapi/v1/ticker/bookTicker", [
            {"symbol": "BTCUSDT", "bidPrice": "50000.0", "bidQty": "1", "askPrice": "50000.1",
             "askQty": "2", "time": NOW_MS},
            {"symbol": "ETHUSDT", "bidPrice": "0", "bidQty": "0", "askPrice": "3000",
             "askQty": "2", "time": NOW_MS}]  # fmt: skip
    if ccxt_id == "okx":
        row = {"instType": "SWAP", "ts": str(NOW_MS), "bidSz": "1", "askSz": "1"}
        return r"GET /api/v5/market/tickers", {"code": "0", "msg": "", "data": [
            {**row, "instId": "BTC-USDT-SWAP", "last": "50000.05", "bidPx": "50000.0",
             "askPx": "50000.1"},
            {**row, "instId": "ETH-USDT-SWAP", "last": "3000", "bidPx": "",
             "askPx": "3000"}]}  # fmt: skip
    row = {"bid1Size": "1", "ask1Size": "1", "fundingRate": "0.0001",
           "nextFundingTime": str(NOW_MS), "fundingIntervalHour": "8"}  # fmt: skip
    return r"GET /v5/market/tickers", {"retCode": 0, "retMsg": "OK", "time": NOW_MS,
        "result": {"category": "linear", "list": [
            {**row, "symbol": "BTCUSDT", "lastPrice": "50000.05", "bid1Price": "50000.0",
             "ask1Price": "50000.1"},
            {**row, "symbol": "ETHUSDT", "lastPrice": "3000", "bid1Price": "",
             "ask1Price": "3000"}]}}  # fmt: skip


def funding(ccxt_id: str) -> list[tuple[str, Any]]:
    if ccxt_id == "binanceusdm":
        return [(r"GET /fapi/v1/premiumIndex", [
            {"symbol": s, "markPrice": "50000", "indexPrice": "50000", "lastFundingRate": "0.0001",
             "nextFundingTime": NOW_MS, "interestRate": "0.0001", "time": NOW_MS}
            for s in ("BTCUSDT", "ETHUSDT")]),
            (r"GET /fapi/v1/fundingInfo", [])]  # fmt: skip
    if ccxt_id == "okx":
        return [(r"GET /api/v5/public/funding-rate", {"code": "0", "msg": "", "data": [
            {"instType": "SWAP", "instId": i, "fundingRate": "0.0001", "nextFundingRate": "",
             "fundingTime": str(NOW_MS), "nextFundingTime": str(NOW_MS + 28_800_000),
             "ts": str(NOW_MS)} for i in ("BTC-USDT-SWAP", "ETH-USDT-SWAP")]})]  # fmt: skip
    return [quotes(ccxt_id)]  # bybit's tickers carry the funding rate


class Timer:
    """A timer that moves 12.5 ms during each quote request."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["binanceusdm", "okx", "bybit"])
def venue(request: pytest.FixtureRequest) -> Iterator[tuple[CcxtFeedSource, FakeSession]]:
    ccxt_id: str = request.param
    exchange = make_exchange(ccxt_id, "demo", None)
    exchange.set_markets(MARKETS[ccxt_id])
    session = FakeSession()
    exchange.session = session
    timer = Timer()
    pattern, body = quotes(ccxt_id)

    def answer(call: Call) -> tuple[int, Any]:
        timer.t += 0.0125
        return 200, body

    for fpattern, fbody in funding(ccxt_id):
        session.route(fpattern, lambda c, b=fbody: (200, b))
    session.route(pattern, answer)
    yield CcxtFeedSource("ex1", exchange, [BTC, ETH], timer=timer), session


def test_poll_gives_quotes_funding_and_latency(
    venue: tuple[CcxtFeedSource, FakeSession],
) -> None:
    source, _ = venue
    (snap,) = source.poll(AT)  # ETH has no bid: left out, never guessed
    assert (snap.exchange, snap.symbol, snap.observed_at) == ("ex1", BTC, AT)
    assert (snap.bid, snap.ask) == (Decimal("50000.0"), Decimal("50000.1"))
    assert snap.last == Decimal("50000.05")
    assert snap.funding_rate == Decimal("0.0001")
    assert snap.latency_ms == Decimal("12.5")


def test_polls_within_the_rate_limit_and_funding_is_reused(
    venue: tuple[CcxtFeedSource, FakeSession],
) -> None:
    source, session = venue
    assert source.poll(AT)
    first = len(session.calls)
    soon = AT + timedelta(seconds=source.min_interval_s / 2)
    assert source.poll(soon) == []  # sooner than the venue's rate limit: nothing asked
    assert len(session.calls) == first
    later = AT + timedelta(seconds=max(source.min_interval_s, 0.001) * 2)
    assert source.poll(later)
    assert len(session.calls) == first + 1  # only the quotes: funding is a minute old at most


def test_sources_for_ccxt_exchanges_only_without_keys() -> None:
    settings = Settings(  # type: ignore[call-arg]
        exchanges={
            "binance": {"equity_usd": 1, "venue": "ccxt"},
            "bybit": {"equity_usd": 1, "venue": "ccxt", "mode": "testnet"},
            "paper1": {"equity_usd": 1},
        }
    )
    sources = ccxt_sources(settings, [BTC])
    assert [(s.name, s.exchange.id) for s in sources] == [
        ("binance", "binanceusdm"), ("bybit", "bybit"),
    ]  # fmt: skip
    assert not sources[0].exchange.apiKey
