"""The simulation's inputs and ledger digest, and what keeps its clock virtual."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import migrations
import perpbot_db
import workers
from perpbot_db.domain.paper_market import default_symbols
from perpbot_db.services import feeds, simulate
from perpbot_db.settings import Settings
from tests.pure.test_layers import clock_reads

START = datetime.fromisoformat("2026-01-05T00:00:00+00:00")
EXCHANGES = ("binance", "okx", "bybit")

#: SQL's clock keywords: no search path overrides them, so the engine must not use them.
#: (A name in ``double backticks`` is documentation naming it, not SQL.)
CLOCK_KEYWORDS = re.compile(
    r"(?<!``)\b(current_timestamp|localtimestamp|current_time|localtime|current_date)\b",
    re.IGNORECASE,
)


def engine_sources() -> list[Path]:
    roots = [Path(m.__file__).parent for m in (perpbot_db, workers, migrations)]
    return sorted(p for root in roots for p in root.rglob("*.py"))


def test_clock_keyword_check_finds_one() -> None:
    assert CLOCK_KEYWORDS.search("SET updated_at = CURRENT_TIMESTAMP")
    assert CLOCK_KEYWORDS.search("server_default=func.current_timestamp()")
    assert not CLOCK_KEYWORDS.search("SET updated_at = now()")
    assert not CLOCK_KEYWORDS.search("no statement uses ``CURRENT_TIMESTAMP``")


def test_engine_sql_when_scanned_then_no_clock_keyword_the_simulation_cannot_override() -> None:
    found = [
        f"{path}:{n}: {line.strip()}"
        for path in engine_sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if CLOCK_KEYWORDS.search(line)
    ]
    assert len(engine_sources()) > 50
    assert found == []


def test_simulation_modules_when_scanned_then_read_no_wall_clock() -> None:
    package = Path(perpbot_db.__file__).parent
    for module in ("services/simulate.py", "store/simulate.py"):
        assert clock_reads((package / module).read_text()) == [], module


def steps(market: simulate.MarketInput, n: int) -> list[list[simulate.Snapshot]]:
    return [list(market.poll(START + timedelta(seconds=i))) for i in range(n)]


def test_paper_market_when_seeded_alike_then_the_live_feeds_market_identically() -> None:
    settings = Settings(exchanges={n: {"equity_usd": 1000} for n in EXCHANGES})  # type: ignore[misc]
    one = steps(simulate.paper_market(settings, EXCHANGES, seed=5, symbols=3), 200)
    two = steps(simulate.paper_market(settings, EXCHANGES[::-1], seed=5, symbols=3), 200)
    other = steps(simulate.paper_market(settings, EXCHANGES, seed=6, symbols=3), 200)
    live = feeds.paper_source(
        EXCHANGES, default_symbols(3), seed=5, params=settings.feed.market_params()
    )
    assert one == two == steps(live, 200)  # the live paper feed's model, not a stand-in
    assert one != other
    for i, snaps in enumerate(one):
        assert len(snaps) == 9
        assert {s.observed_at for s in snaps} == {START + timedelta(seconds=i)}
        assert all(0 < s.bid < s.ask for s in snaps)
    btc = [s.last for snaps in one for s in snaps if s.symbol == "BTC/USDT:USDT"]
    assert len(set(btc)) > 20  # it moves


def test_paper_market_when_no_count_then_the_feeds_symbols() -> None:
    settings = Settings(feed={"symbols": ["ETH/USDT:USDT", "DOGE/USDT:USDT"]})  # type: ignore[arg-type]
    assert simulate.sim_symbols(settings, None) == ["ETH/USDT:USDT", "DOGE/USDT:USDT"]
    assert simulate.sim_symbols(settings, 2) == ["BTC/USDT:USDT", "ETH/USDT:USDT"]
    with pytest.raises(ValueError, match="symbols"):
        simulate.sim_symbols(settings, simulate.MAX_SYMBOLS + 1)


def snap(ex: str, at: datetime, bid: str = "100") -> simulate.Snapshot:
    b = Decimal(bid)
    return simulate.Snapshot(ex, "BTC/USDT:USDT", b, b + 1, b, None, None, None, at)


def test_held_market_when_an_older_snapshot_comes_then_kept_out_as_the_table_would() -> None:
    held = simulate.HeldMarket(max_future_skew_s=5)
    later = START + timedelta(seconds=1)
    held.take([snap("okx", later, "101"), snap("binance", START)])
    held.take([snap("okx", START, "99")])  # older than the one held: the upsert drops it
    assert [(s.exchange, s.bid) for s in held.rows()] == [
        ("binance", Decimal(100)),
        ("okx", Decimal(101)),
    ]
    assert held.unwritten == {("okx", "BTC/USDT:USDT"), ("binance", "BTC/USDT:USDT")}


def test_recorded_market_when_stepped_then_each_snapshot_once_at_its_time(tmp_path: Path) -> None:
    path = tmp_path / "market.jsonl"
    lines = [
        {"exchange": ex, "symbol": "BTC/USDT:USDT", "bid": 100, "ask": 101, "last": 100}
        | {"observed_at": at}
        for at in ("2026-01-05T00:00:02Z", "2026-01-05T00:00:00Z")
        for ex in ("okx", "binance")
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    recorded = simulate.RecordedMarket.from_file(path)
    assert recorded.start == START
    first = recorded.poll(START + timedelta(seconds=1))
    assert [(s.exchange, s.observed_at) for s in first] == [("binance", START), ("okx", START)]
    assert recorded.poll(START + timedelta(seconds=1)) == []
    assert len(recorded.poll(START + timedelta(seconds=5))) == 2


def test_recorded_market_when_a_line_has_no_time_then_names_line_and_field(
    tmp_path: Path,
) -> None:
    path = tmp_path / "market.jsonl"
    line = {"exchange": "okx", "symbol": "BTC/USDT:USDT", "bid": 1, "ask": 2, "last": 1}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="line 1: observed_at is required"):
        simulate.RecordedMarket.from_file(path)
    path.write_text(json.dumps(line | {"symbol": "X"}) + "\n")
    with pytest.raises(ValueError, match="line 1: symbol: not a ccxt unified symbol"):
        simulate.RecordedMarket.from_file(path)


def test_ledger_digest_when_decimals_differ_only_in_zeros_then_equal() -> None:
    a = simulate.ledger_digest([(1, Decimal("1.50"), None, START)])
    b = simulate.ledger_digest([(1, Decimal("1.5"), None, START)])
    c = simulate.ledger_digest([(1, Decimal("1.51"), None, START)])
    assert a == b != c
