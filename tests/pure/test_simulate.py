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
from perpbot_db.services import simulate
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


def steps(market: simulate.SeededMarket, n: int) -> list[list[simulate.Snapshot]]:
    return [market.step(START + timedelta(seconds=i)) for i in range(n)]


def test_seeded_market_when_seeded_alike_then_identical_and_sane() -> None:
    one = steps(simulate.SeededMarket(5, EXCHANGES, symbols=3), 200)
    two = steps(simulate.SeededMarket(5, list(reversed(EXCHANGES)), symbols=3), 200)
    other = steps(simulate.SeededMarket(6, EXCHANGES, symbols=3), 200)
    assert one == two
    assert one != other
    for i, snaps in enumerate(one):
        assert len(snaps) == 9
        assert {s.observed_at for s in snaps} == {START + timedelta(seconds=i)}
        assert all(0 < s.bid < s.ask for s in snaps)
    btc = [s.last for snaps in one for s in snaps if s.symbol == "BTC/USDT:USDT"]
    assert len(set(btc)) > 100  # it moves


def test_seeded_market_when_too_many_symbols_then_names_the_field() -> None:
    with pytest.raises(ValueError, match="symbols"):
        simulate.SeededMarket(1, EXCHANGES, symbols=simulate.MAX_SYMBOLS + 1)


def test_seeded_jobs_when_run_then_hedged_pairs_across_venues_reproducibly() -> None:
    def run(seed: int) -> list[dict[str, object]]:
        market = simulate.SeededMarket(seed, EXCHANGES, symbols=2)
        source = simulate.SeededJobs(seed, per_minute=30)
        bodies = []
        for i in range(300):
            now = START + timedelta(seconds=i)
            latest = {(s.exchange, s.symbol): s for s in market.step(now)}
            bodies += source.step(now, latest)
        return bodies

    bodies = run(9)
    assert bodies == run(9)
    assert 100 < len(bodies) < 200  # about 30 a minute for 5 minutes
    assert len({b["idempotency_key"] for b in bodies}) == len(bodies)
    for body in bodies:
        buy, sell = body["legs"]  # type: ignore[misc]
        assert buy["exchange"] != sell["exchange"]
        assert (buy["side"], sell["side"]) == ("buy", "sell")
        assert buy["quantity"] == sell["quantity"]


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
    first = recorded.step(START + timedelta(seconds=1))
    assert [(s.exchange, s.observed_at) for s in first] == [("binance", START), ("okx", START)]
    assert recorded.step(START + timedelta(seconds=1)) == []
    assert len(recorded.step(START + timedelta(seconds=5))) == 2


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
