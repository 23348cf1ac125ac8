"""The health verdict: each reading alone, and how they combine (no database, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from perpbot_db.domain.health import (
    SEVERITY,
    Exposure,
    MarketAge,
    Readings,
    ReasonCode,
    TickReading,
    Verdict,
    assess,
)
from perpbot_db.domain.lifecycle import SystemStatus

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def healthy(**overrides: object) -> Readings:
    base = Readings(
        status=SystemStatus.RUNNING,
        halt_reason=None,
        live_workers=2,
        leader="scheduler:host:1:abc",
        tick=TickReading(last_tick_at=NOW - 2 * S, interval=S, grace=5 * S),
        max_market_age=10 * S,
        markets=[
            MarketAge("binance", "BTC/USDT:USDT", NOW - S),
            MarketAge("okx", "BTC/USDT:USDT", NOW - 3 * S),
        ],
        exchanges=["binance", "okx"],
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def codes(readings: Readings) -> list[ReasonCode]:
    return [r.code for r in assess(readings, NOW).reasons]


def test_all_readings_fine_then_ok_with_no_reason() -> None:
    h = assess(healthy(), NOW)
    assert h.verdict is Verdict.OK and h.reasons == ()


def test_halted_then_down_naming_the_halt_reason() -> None:
    h = assess(
        healthy(status=SystemStatus.HALTED, halt_reason="daily loss limit: lost 1000 of 1000 USD"),
        NOW,
    )
    assert h.verdict is Verdict.DOWN
    assert [(r.code, r.text) for r in h.reasons] == [
        (ReasonCode.HALTED, "halted: daily loss limit: lost 1000 of 1000 USD")
    ]


def test_no_live_worker_then_down() -> None:
    h = assess(healthy(live_workers=0), NOW)
    assert h.verdict is Verdict.DOWN and codes(healthy(live_workers=0)) == [
        ReasonCode.NO_LIVE_WORKER
    ]


def test_no_scheduler_leader_then_down() -> None:
    assert assess(healthy(leader=None), NOW).verdict is Verdict.DOWN
    assert codes(healthy(leader=None)) == [ReasonCode.NO_SCHEDULER_LEADER]


def test_tick_older_than_n_intervals_plus_grace_then_down() -> None:
    tick = TickReading(last_tick_at=NOW - 16 * S, interval=2 * S, stale_ticks=5, grace=5 * S)
    h = assess(healthy(tick=tick), NOW)
    assert h.verdict is Verdict.DOWN
    [reason] = h.reasons
    assert reason.code is ReasonCode.TICK_STALE
    assert reason.text == "the last tick was 16.0 s ago (more than 5 intervals of 2.0 s + 5.0 s)"


def test_tick_exactly_at_the_bound_is_not_stale() -> None:
    tick = TickReading(last_tick_at=NOW - 15 * S, interval=2 * S, stale_ticks=5, grace=5 * S)
    assert assess(healthy(tick=tick), NOW).verdict is Verdict.OK


def test_no_tick_ever_recorded_then_tick_stale() -> None:
    tick = TickReading(last_tick_at=None, interval=S)
    assert codes(healthy(tick=tick)) == [ReasonCode.TICK_STALE]
    assert assess(healthy(tick=tick), NOW).reasons[0].text == (
        "no scheduler has ever ticked on this database"
    )


@pytest.mark.parametrize("status", [SystemStatus.PAUSED, SystemStatus.HALTED], ids=str)
def test_a_paused_or_halted_system_still_ticks_so_an_old_tick_is_judged(
    status: SystemStatus,
) -> None:
    tick = TickReading(last_tick_at=NOW - 3600 * S, interval=S)
    assert ReasonCode.TICK_STALE in codes(healthy(tick=tick, status=status, halt_reason="x"))


def test_stale_market_data_then_degraded_one_reason_per_exchange() -> None:
    markets = [
        MarketAge("binance", "BTC/USDT:USDT", NOW - 11 * S),
        MarketAge("binance", "ETH/USDT:USDT", NOW - 30 * S),
        MarketAge("okx", "BTC/USDT:USDT", NOW - S),
    ]
    h = assess(healthy(markets=markets), NOW)
    assert h.verdict is Verdict.DEGRADED
    [reason] = h.reasons
    assert reason.code is ReasonCode.MARKET_DATA_STALE
    assert reason.text == (
        "binance: market data older than 10.0 s: BTC/USDT:USDT (11.0 s), ETH/USDT:USDT (30.0 s)"
    )


def test_market_data_from_the_future_beyond_the_limit_is_stale_too() -> None:
    markets = [MarketAge("binance", "BTC/USDT:USDT", NOW + 60 * S)]
    assert codes(healthy(markets=markets, exchanges=["binance"])) == [ReasonCode.MARKET_DATA_STALE]


def test_an_exchange_with_no_market_data_then_degraded() -> None:
    h = assess(healthy(exchanges=["binance", "bybit", "okx"]), NOW)
    assert h.verdict is Verdict.DEGRADED
    assert [(r.code, r.text) for r in h.reasons] == [
        (ReasonCode.MARKET_DATA_MISSING, "no market data for bybit")
    ]


def test_unhedged_exposure_then_degraded_with_size_and_jobs() -> None:
    exposures = [Exposure("okx", Decimal("970.5"), "12"), Exposure("binance", None, "13")]
    h = assess(healthy(exposures=exposures), NOW)
    assert h.verdict is Verdict.DEGRADED
    [reason] = h.reasons
    assert reason.code is ReasonCode.UNHEDGED_EXPOSURE
    assert reason.text == (
        "unhedged exposure open: binance unknown size (job 13); okx 970.5 USD (job 12)"
    )


def test_safe_mode_paused_and_override_are_degraded() -> None:
    assert codes(healthy(safe_mode=[("okx", "API latency 900 ms")])) == [
        ReasonCode.EXCHANGE_SAFE_MODE
    ]
    assert codes(healthy(status=SystemStatus.PAUSED)) == [ReasonCode.PAUSED]
    assert codes(healthy(status=SystemStatus.MANUAL_OVERRIDE)) == [ReasonCode.MANUAL_OVERRIDE]
    for status in (SystemStatus.PAUSED, SystemStatus.MANUAL_OVERRIDE):
        assert assess(healthy(status=status), NOW).verdict is Verdict.DEGRADED


def test_verdict_is_the_worst_reason_and_reasons_come_worst_first() -> None:
    readings = healthy(
        live_workers=0,
        exposures=[Exposure("okx", Decimal(1))],
        markets=[MarketAge("binance", "BTC/USDT:USDT", NOW - 60 * S)],
        exchanges=["binance"],
        leader=None,
    )
    h = assess(readings, NOW)
    assert h.verdict is Verdict.DOWN
    assert [r.code for r in h.reasons] == [
        ReasonCode.NO_LIVE_WORKER,
        ReasonCode.NO_SCHEDULER_LEADER,
        ReasonCode.MARKET_DATA_STALE,
        ReasonCode.UNHEDGED_EXPOSURE,
    ]
    assert [r.severity for r in h.reasons] == [
        Verdict.DOWN,
        Verdict.DOWN,
        Verdict.DEGRADED,
        Verdict.DEGRADED,
    ]


def test_every_reason_code_has_a_severity() -> None:
    assert set(SEVERITY) == set(ReasonCode)
