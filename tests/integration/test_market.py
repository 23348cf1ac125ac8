"""Market data in (`perpbot market load`): all or nothing, bounded, no feed from the future."""

from __future__ import annotations

import io
import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.services import market
from perpbot_db.services.market import SnapshotIn, load_lines, parse_snapshot, upsert_snapshots
from perpbot_db.store import system

EXCHANGES = frozenset({"binance", "okx", "bybit"})
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def snap(exchange: str = "binance", symbol: str = "BTC/USDT:USDT", **fields: Any) -> str:
    body: dict[str, Any] = {
        "exchange": exchange,
        "symbol": symbol,
        "bid": "97000",
        "ask": "97001",
        "last": "97000.5",
        "funding_rate": "0.0001",
        "volatility": "0.005",
        "latency_ms": 40,
    }
    body.update(fields)
    return json.dumps(body) + "\n"


def stored(engine: Engine) -> dict[tuple[str, str], tuple[str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT exchange, symbol, bid::text, observed_at FROM market_snapshots")
        ).all()
    return {(r.exchange, r.symbol): (r.bid, r.observed_at) for r in rows}


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return system.db_now(conn)


# -- the clock-skewed feed (issue 10, item 3) --------------------------------------------


def test_snapshot_from_2099_is_refused_naming_observed_at_and_later_snapshots_still_load(
    engine: Engine,
) -> None:
    poisoned = snap(bid="1.00", ask="1.01", last="1.00", observed_at="2099-01-01T00:00:00Z")
    refused = load_lines(engine, [poisoned])
    assert not refused.written
    assert [(p.line, p.field) for p in refused.problems] == [(1, "observed_at")]
    assert "ahead of the database clock" in refused.problems[0].message
    assert stored(engine) == {}
    fresh = db_now(engine).isoformat()
    loaded = load_lines(engine, [snap(observed_at=fresh)])
    assert (loaded.written, loaded.upserted) == (True, 1)
    assert stored(engine)[("binance", "BTC/USDT:USDT")][0] == "97000.000000000000"


def test_observed_at_within_the_allowed_skew_is_accepted_and_beyond_it_refused(
    engine: Engine,
) -> None:
    now = db_now(engine)
    assert load_lines(engine, [snap(observed_at=(now + timedelta(seconds=2)).isoformat())]).written
    late = (now + timedelta(seconds=60)).isoformat()
    assert load_lines(engine, [snap(observed_at=late)], max_future_skew_s=120).written
    tight = load_lines(
        engine, [snap(observed_at=(db_now(engine) + timedelta(seconds=30)).isoformat())]
    )
    assert [p.field for p in tight.problems] == ["observed_at"]


def test_skew_is_judged_against_the_given_clock_in_the_pure_parser() -> None:
    ahead = snap(observed_at=(NOW + timedelta(seconds=6)).isoformat())
    within = snap(observed_at=(NOW + timedelta(seconds=5)).isoformat())
    assert isinstance(parse_snapshot(within, EXCHANGES, NOW), SnapshotIn)
    problems = parse_snapshot(ahead, EXCHANGES, NOW)
    assert isinstance(problems, list) and [p.field for p in problems] == ["observed_at"]
    assert isinstance(parse_snapshot(ahead, EXCHANGES, NOW, max_future_skew_s=10), SnapshotIn)


def test_row_already_poisoned_from_the_future_is_healed_by_a_valid_snapshot(
    engine: Engine,
) -> None:
    with engine.begin() as conn:  # stored before the check existed
        conn.execute(
            text(
                "INSERT INTO market_snapshots (exchange, symbol, bid, ask, last, observed_at) "
                "VALUES ('binance', 'BTC/USDT:USDT', 1.00, 1.01, 1.00, '2099-01-01Z')"
            )
        )
    result = load_lines(engine, [snap()])
    assert (result.written, result.upserted, result.stale_skipped) == (True, 1, 0)
    bid, observed = stored(engine)[("binance", "BTC/USDT:USDT")]
    assert bid == "97000.000000000000"
    assert observed <= db_now(engine)


def test_an_older_observation_still_never_replaces_a_newer_one(engine: Engine) -> None:
    now = db_now(engine)
    assert load_lines(engine, [snap(bid="96000", observed_at=now.isoformat())]).upserted == 1
    older = (now - timedelta(seconds=30)).isoformat()
    result = load_lines(engine, [snap(bid="95000", observed_at=older)])
    assert (result.upserted, result.stale_skipped) == (0, 1)
    assert stored(engine)[("binance", "BTC/USDT:USDT")][0] == "96000.000000000000"


def test_upsert_snapshots_heals_a_future_row_for_every_caller(engine: Engine) -> None:
    future = datetime.now(UTC) + timedelta(days=365)
    row = SnapshotIn.model_validate(json.loads(snap()))
    with engine.begin() as conn:
        assert upsert_snapshots(conn, [row], future) == 1
    with engine.begin() as conn:
        assert upsert_snapshots(conn, [row], datetime.now(UTC)) == 1
    assert stored(engine)[("binance", "BTC/USDT:USDT")][1] < future


# -- all or nothing, bounded -------------------------------------------------------------


def test_default_observed_at_is_the_database_clock(engine: Engine) -> None:
    before = db_now(engine)
    assert load_lines(engine, [snap()]).written
    after = db_now(engine)
    observed = stored(engine)[("binance", "BTC/USDT:USDT")][1]
    assert before <= observed <= after


def test_bad_line_after_full_batches_writes_nothing(engine: Engine) -> None:
    good = [snap(exchange, symbol) for exchange in EXCHANGES for symbol in ("A/USDT", "B/USDT")]
    result = load_lines(engine, [*good, snap(bid="2", ask="1")], batch_size=2)
    assert not result.written
    assert [(p.line, p.field) for p in result.problems] == [(7, "bid")]
    assert stored(engine) == {}


def test_database_error_mid_load_rolls_back_every_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.symbol = 'BAD/USDT' THEN RAISE EXCEPTION 'test trigger'; END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER test_refuse BEFORE INSERT ON market_snapshots
                FOR EACH ROW EXECUTE FUNCTION test_refuse();
                """
            )
        )
    good = [snap(exchange, f"S{i}/USDT") for exchange in EXCHANGES for i in range(3)]
    with pytest.raises(market.LoadError, match="test trigger"):
        load_lines(engine, [*good, snap(symbol="BAD/USDT")], batch_size=2)
    assert stored(engine) == {}


def test_newest_observation_of_a_key_wins_inside_a_batch_and_across_batches(
    engine: Engine,
) -> None:
    now = db_now(engine)
    at = [(now - timedelta(seconds=s)).isoformat() for s in (30, 10, 20)]
    raw = [snap(bid="1", observed_at=at[0]), snap(bid="2", observed_at=at[1])]
    raw += [snap("okx"), snap(bid="3", observed_at=at[2])]
    result = load_lines(engine, raw, batch_size=2)
    assert result.written
    assert stored(engine)[("binance", "BTC/USDT:USDT")][0] == "2.000000000000"


def test_price_that_would_round_to_zero_in_the_column_is_refused(engine: Engine) -> None:
    result = load_lines(engine, [snap(bid="0.0000000000001")])
    assert [p.field for p in result.problems] == ["bid"]
    assert stored(engine) == {}


def test_deep_nesting_is_a_problem_on_its_line_not_a_crash(engine: Engine) -> None:
    deep = '{"exchange": ' + "[" * 10_000 + "]" * 10_000 + "}\n"
    result = load_lines(engine, [snap(), deep])
    assert not result.written
    assert [(p.line, p.field) for p in result.problems] == [(2, "snapshot")]


def test_report_keeps_the_first_100_problems_and_counts_the_rest(engine: Engine) -> None:
    result = load_lines(engine, [snap(bid="-1")] * 250)
    assert not result.written
    assert len(result.problems) == 100
    assert (result.report.total, result.report.bad_lines, result.lines) == (250, 250, 250)


def test_line_longer_than_the_limit_is_one_problem_and_never_held_whole(engine: Engine) -> None:
    huge = b'{"exchange": "' + b"x" * 30_000_000 + b'"}\n'
    source = io.BufferedReader(io.BytesIO(snap().encode() + huge + snap("okx").encode()))
    tracemalloc.start()
    try:
        result = load_lines(engine, source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(p.line, p.field) for p in result.problems] == [(2, "snapshot")]
    assert "longer than the limit" in result.problems[0].message
    assert peak < 5_000_000, f"{peak:,} bytes traced for a 30 MB line"
