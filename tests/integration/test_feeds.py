"""The market data feed (services/feeds.py) on a real PostgreSQL: rows for every exchange and
symbol, data the risk manager admits on, failing sources and lost connections survived."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, create_engine, text

from perpbot_db.domain.clock import VirtualClock, WallClock
from perpbot_db.domain.paper_market import PaperMarket
from perpbot_db.services import feeds, tick
from perpbot_db.settings import FeedSettings, Settings
from perpbot_db.store.market import MarketSnapshot, snapshots_all
from perpbot_db.store.reconnect import Backoff, Outage
from tests.builders import EXCHANGES, config, free_port, job, submit, wait_for

SYMBOLS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "DOGE/USDT:USDT"]


def paper(settings: Settings, **changes: object) -> Settings:
    feed = FeedSettings.model_validate({"symbols": SYMBOLS, **changes})
    return settings.model_copy(update={"feed": feed})


def key(snap: MarketSnapshot) -> tuple[str, str]:
    return snap.exchange, snap.symbol


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return now


def test_run_once_writes_a_snapshot_for_every_exchange_and_symbol(
    engine: Engine, settings: Settings
) -> None:
    now = db_now(engine)
    service = feeds.from_settings(engine, paper(settings), clock=VirtualClock(now))
    report = service.run_once()
    assert report.written == len(EXCHANGES) * len(SYMBOLS) and not report.failed
    with engine.connect() as conn:
        rows = snapshots_all(conn)
    assert {(r.exchange, r.symbol) for r in rows} == {(e, s) for e in EXCHANGES for s in SYMBOLS}
    assert all(r.observed_at == now and r.bid < r.ask for r in rows)
    assert all(None not in (r.funding_rate, r.volatility, r.latency_ms) for r in rows)


def test_the_same_seed_writes_the_same_rows_and_later_rounds_replace_them(
    engine: Engine, settings: Settings
) -> None:
    clock = VirtualClock(db_now(engine))
    service = feeds.from_settings(engine, paper(settings, seed=3), clock=clock)
    service.run_once()
    with engine.connect() as conn:
        first = sorted(snapshots_all(conn), key=key)
    again = feeds.from_settings(engine, paper(settings, seed=3), clock=clock)
    assert sorted(again.sources[0].poll(clock.now()), key=key) == first
    clock.advance(1)
    assert service.run_once().written == len(first)
    with engine.connect() as conn:
        assert {r.observed_at for r in snapshots_all(conn)} == {clock.now()}


def test_hourly_funding_venue_stores_the_rate_per_hour(engine: Engine, settings: Settings) -> None:
    hourly = settings.exchanges["okx"].model_copy(update={"funding_interval_h": 1})
    changed = paper(settings).model_copy(
        update={"exchanges": {**settings.exchanges, "okx": hourly}}
    )
    source = feeds.from_settings(engine, changed, clock=WallClock()).sources[0]
    assert isinstance(source, feeds.PaperSource)
    assert [v.funding_interval_h for v in source.market.venues] == [8, 8, 1]  # name order


def test_calm_paper_data_lets_the_tick_admit_a_job(engine: Engine, settings: Settings) -> None:
    service = feeds.from_settings(engine, paper(settings), clock=WallClock())
    service.run_once()
    ids = submit(engine, settings, [job(1)])
    report = tick.run_tick(engine, config())
    assert report.admitted == ids, report.summary()


class Broken:
    name = "broken"

    def poll(self, now: datetime) -> Sequence[MarketSnapshot]:
        raise RuntimeError("venue down")


def test_a_failing_source_is_skipped_and_the_others_still_write(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    market = PaperMarket(["BTC/USDT:USDT"], ["binance"], seed=1)
    service = feeds.FeedService(
        engine, [Broken(), feeds.PaperSource(market)], clock=VirtualClock(db_now(engine))
    )
    report = service.run_once()
    assert report.failed == ["broken"] and report.written == 1
    assert report.polled == {"paper": 1}
    assert "feed source broken failed" in caplog.text


def test_the_feed_thread_waits_out_a_database_outage_and_writes_when_it_is_back(
    engine: Engine, settings: Settings
) -> None:
    dead = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    outage = Outage()
    service = feeds.from_settings(engine, paper(settings), clock=WallClock(), outage=outage)
    service.engine = dead
    service.guard.backoff = Backoff(initial_s=0.05, cap_s=0.1)
    service.interval_s = 0.05
    service.start()
    try:
        assert wait_for(lambda: outage.down and outage.count == 1)
        assert service.running and service.rounds == 0
        service.engine = engine  # the database is back
        assert wait_for(lambda: service.rounds >= 2 and not outage.down)
    finally:
        service.stop()
        dead.dispose()
    assert not service.running
    with engine.connect() as conn:
        latest = max(r.observed_at for r in snapshots_all(conn))
    assert latest > datetime.now(UTC) - timedelta(minutes=5)


def test_feed_kind_none_builds_no_feed(engine: Engine, settings: Settings) -> None:
    with pytest.raises(ValueError, match=r'feed\.kind is "none"'):
        feeds.from_settings(engine, paper(settings, kind="none"), clock=WallClock())


def _with_ccxt_okx(settings: Settings, kind: str) -> Settings:
    okx = settings.exchanges["okx"].model_copy(update={"venue": "ccxt", "mode": "demo"})
    exchanges = {**settings.exchanges, "okx": okx}
    return paper(settings, kind=kind).model_copy(update={"exchanges": exchanges})


def test_paper_quotes_never_feed_a_ccxt_venue(engine: Engine, settings: Settings) -> None:
    mixed = _with_ccxt_okx(settings, "paper")
    problem = feeds.kind_problem(mixed)
    assert problem is not None and "feed.kind" in problem and "okx" in problem
    with pytest.raises(ValueError, match=r"feed\.kind"):
        feeds.from_settings(engine, mixed, clock=WallClock())
    assert feeds.kind_problem(paper(settings)) is None


def test_feed_kind_ccxt_quotes_ccxt_venues_through_ccxt_and_the_rest_on_paper(
    engine: Engine, settings: Settings
) -> None:
    from workers.venues.ccxt_feed import CcxtFeedSource

    service = feeds.from_settings(engine, _with_ccxt_okx(settings, "ccxt"), clock=WallClock())
    kinds = {type(s).__name__: s for s in service.sources}
    assert set(kinds) == {"PaperSource", "CcxtFeedSource"}
    real = kinds["CcxtFeedSource"]
    assert isinstance(real, CcxtFeedSource) and real.name == "okx"
    paper_source = kinds["PaperSource"]
    assert isinstance(paper_source, feeds.PaperSource)
    assert {v.exchange for v in paper_source.market.venues} == set(EXCHANGES) - {"okx"}
