"""``perpbot produce --once``: one pass of the strategies from the command line."""

from __future__ import annotations

import json

from sqlalchemy import Engine, text

from tests.builders import Cli


def _snapshots() -> str:
    """BTC on three venues: okx pays 9 bps of funding per 8 h, bybit bids 20 bps above."""
    lines = []
    for exchange, bid, funding in (
        ("binance", 97000, "0.0001"),
        ("okx", 97000, "0.0009"),
        ("bybit", 97200, "0.0001"),
    ):
        lines.append(
            json.dumps(
                {
                    "exchange": exchange,
                    "symbol": "BTC/USDT:USDT",
                    "bid": bid,
                    "ask": bid + 1,
                    "last": bid,
                    "funding_rate": funding,
                    "volatility": "0.005",
                    "latency_ms": 40,
                }
            )
        )
    return "\n".join(lines) + "\n"


def test_produce_once_submits_each_strategys_jobs_and_says_why_it_skipped(
    cli: Cli, engine: Engine
) -> None:
    assert cli("market", "load", "-", stdin=_snapshots()).returncode == 0
    done = cli("produce", "--once", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by = report["strategies"]
    assert {name: part["submitted"] for name, part in by.items()} == {
        "hedge_rebalance": 0,
        "arb": 1,
        "funding_arb": 1,
        "volume": 1,
    }
    assert by["arb"]["keys"][0].startswith("arb:BTC-USDT:binance>bybit:")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT strategy, status FROM hedge_jobs ORDER BY 1")).all()
    assert [tuple(r) for r in rows] == [
        ("arb", "pending"),
        ("funding_arb", "pending"),
        ("volume", "pending"),
    ]
    assert cli("market", "load", "-", stdin=_snapshots()).returncode == 0  # fresh again
    text_report = cli("produce", "--once")
    assert text_report.returncode == 0, text_report.stderr
    # the second pass, in plain text: the funding position is opening, the arb on its way
    assert "skip BTC/USDT:USDT: a funding position is open or opening" in text_report.stdout
    assert "skip BTC/USDT:USDT: an arb job for it is on its way" in text_report.stdout


def test_a_wrong_strategy_setting_is_refused_naming_it(cli: Cli) -> None:
    done = cli("produce", "--once", env={"PERPBOT_STRATEGIES__ARB__MIN_EDGE_BPS": "-1"})
    assert done.returncode == 2
    assert "setting strategies.arb.min_edge_bps" in done.stderr
    assert "Traceback" not in done.stderr
