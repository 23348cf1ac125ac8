"""``[feed]`` and ``exchanges.NAME.funding_interval_h``: defaults, and bad values named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perpbot_db.domain.paper_market import MarketParams
from perpbot_db.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("PERPBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def problem(**overrides: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    return str(info.value)


def test_defaults_are_a_paper_feed_of_three_symbols_every_second() -> None:
    s = load_settings(exchanges={"okx": {"equity_usd": 1}})
    assert s.feed.kind == "paper" and s.feed.interval_s == 1.0
    assert s.feed.symbols == ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
    assert s.exchanges["okx"].funding_interval_h == 8
    assert s.feed.market_params() == MarketParams()  # the settings' defaults are the model's


def test_environment_sets_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERPBOT_FEED__KIND", "none")
    monkeypatch.setenv("PERPBOT_FEED__SYMBOLS", '["DOGE/USDT:USDT"]')
    s = load_settings()
    assert s.feed.kind == "none" and s.feed.symbols == ["DOGE/USDT:USDT"]


@pytest.mark.parametrize(
    ("feed", "named"),
    [
        ({"kind": "ccxtx"}, "setting feed.kind:"),
        ({"interval_s": 0}, "setting feed.interval_s:"),
        ({"symbols": ["BTCUSDT"]}, "setting feed.symbols: 'BTCUSDT' is not"),
        ({"symbols": []}, "setting feed.symbols:"),
        ({"fast_gap_bps_min": 60}, "setting feed.fast_gap_bps_min: is above fast_gap_bps_max"),
        ({"fast_volatility_x": 0.5}, "setting feed.fast_volatility_x:"),
        ({"surprise": 1}, "setting feed.surprise:"),
    ],
)
def test_a_bad_feed_setting_is_named(feed: dict[str, object], named: str) -> None:
    assert named in problem(feed=feed)


def test_a_bad_funding_interval_is_named() -> None:
    text = problem(exchanges={"okx": {"equity_usd": 1, "funding_interval_h": 0}})
    assert "setting exchanges.okx.funding_interval_h:" in text
