"""Protections as pure units: each a function of plain values and ``now``."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

import perpbot_db
import workers
from perpbot_db.domain import protections as p
from perpbot_db.domain.execution import EndCode, Fill, JobRun, LegRun, Settlement
from perpbot_db.domain.lifecycle import JobStatus, LegStatus, Side

NOW = datetime(2026, 12, 2, 7, 30, tzinfo=UTC)
COOL = timedelta(minutes=15)
LIMITS = p.Limits(
    cooldown=COOL,
    blacklist_cooldown=timedelta(minutes=5),
    drawdown=Decimal("0.05"),
    exchange_failures=3,
    latency_ms=Decimal(2000),
    volatility=Decimal("0.05"),
    unhedged_exposure_usd=Decimal(0),
    unhedged_lock=timedelta(days=1),
)


# -- daily loss -------------------------------------------------------------------------


def test_daily_loss_below_the_limit_then_no_lock() -> None:
    assert p.daily_loss(loss_used_usd=Decimal("999.99"), limit_usd=Decimal(1000), now=NOW) is None


def test_daily_loss_at_the_limit_then_system_locked_until_utc_midnight() -> None:
    lock = p.daily_loss(loss_used_usd=Decimal(1000), limit_usd=Decimal(1000), now=NOW)
    assert lock is not None
    assert (lock.scope, lock.target, lock.code) == (
        p.Scope.SYSTEM,
        "system",
        p.ProtectionCode.DAILY_LOSS,
    )
    assert lock.until == datetime(2026, 12, 3, tzinfo=UTC)
    assert lock.reason == "daily loss limit: lost 1000 of 1000 USD today"
    assert lock.context == {"loss_used_usd": "1000", "limit_usd": "1000"}


def test_daily_loss_midnight_is_utc_whatever_the_zone_of_now() -> None:
    # 04:30 on the 3rd in UTC+5, still the 2nd in UTC
    late = datetime(2026, 12, 2, 23, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    lock = p.daily_loss(loss_used_usd=Decimal(5), limit_usd=Decimal(1), now=late)
    assert lock is not None and lock.until == datetime(2026, 12, 3, tzinfo=UTC)


# -- failure streak ---------------------------------------------------------------------


def test_failure_streak_below_limit_then_no_lock() -> None:
    assert p.failure_streak(failures=2, limit=3, now=NOW, cooldown=COOL) is None


def test_global_failure_streak_at_limit_then_system_locked_for_the_cooldown() -> None:
    lock = p.failure_streak(failures=3, limit=3, now=NOW, cooldown=COOL)
    assert lock is not None and lock.scope is p.Scope.SYSTEM
    assert lock.until == NOW + COOL
    assert lock.reason == "consecutive failures: 3 (limit 3)"


def test_exchange_failure_streak_then_that_exchange_locked() -> None:
    lock = p.failure_streak(failures=4, limit=3, now=NOW, cooldown=COOL, exchange="okx")
    assert lock is not None
    assert (lock.scope, lock.target, lock.code) == (
        p.Scope.EXCHANGE,
        "okx",
        p.ProtectionCode.FAILURE_STREAK,
    )
    assert "4 consecutive failed jobs" in lock.reason and lock.context["limit"] == "3"


# -- drawdown ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("equity", "pnl", "locked"),
    [
        (Decimal(40_000), Decimal(-2000), False),  # exactly 5 %: not beyond
        (Decimal(40_000), Decimal("-2000.01"), True),
        (Decimal(40_000), Decimal(5000), False),  # a winning day
        (Decimal(0), Decimal(-1), False),  # no equity configured: no drawdown to speak of
    ],
)
def test_drawdown_since_start_of_day_beyond_fraction_of_equity(
    equity: Decimal, pnl: Decimal, locked: bool
) -> None:
    lock = p.drawdown(
        exchange="okx",
        equity_usd=equity,
        pnl_today_usd=pnl,
        limit=Decimal("0.05"),
        now=NOW,
        cooldown=COOL,
    )
    assert (lock is not None) is locked
    if lock is not None:
        assert lock.scope is p.Scope.EXCHANGE and lock.target == "okx"
        assert "intraday drawdown 2000.01 USD" in lock.reason
        assert lock.until == NOW + COOL


# -- API latency ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latency", "locked"),
    [(None, False), (Decimal(2000), False), (Decimal("2000.1"), True), (Decimal(5000), True)],
)
def test_api_latency_above_the_hard_limit_locks_the_exchange(
    latency: Decimal | None, locked: bool
) -> None:
    lock = p.api_latency(
        exchange="okx",
        symbol="BTC/USDT:USDT",
        latency_ms=latency,
        limit_ms=Decimal(2000),
        now=NOW,
        cooldown=COOL,
    )
    assert (lock is not None) is locked
    if lock is not None:
        assert (lock.scope, lock.target) == (p.Scope.EXCHANGE, "okx")
        assert f"API latency {latency} ms above hard limit 2000" == lock.reason


# -- fast market ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vol", "locked"),
    [
        (None, False),  # missing data: admission holds, no lock
        (Decimal("0.05"), False),
        (Decimal("0.5"), True),
        (Decimal("NaN"), True),  # unusable: fails closed
        (Decimal("-0.1"), True),
    ],
)
def test_fast_market_locks_the_symbol_for_the_blacklist_cooldown(
    vol: Decimal | None, locked: bool
) -> None:
    lock = p.fast_market(
        exchange="binance",
        symbol="BTC/USDT:USDT",
        volatility=vol,
        limit=Decimal("0.05"),
        now=NOW,
        cooldown=timedelta(minutes=5),
    )
    assert (lock is not None) is locked
    if lock is not None:
        assert (lock.scope, lock.target) == (p.Scope.SYMBOL, "BTC/USDT:USDT")
        assert lock.until == NOW + timedelta(minutes=5)
        assert lock.context["exchange"] == "binance"


# -- unhedged exposure ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exposure", "limit", "locked"),
    [
        (Decimal(970), Decimal(0), True),
        (Decimal(970), Decimal(1000), False),
        (Decimal(1000), Decimal(1000), False),
        (None, Decimal(1_000_000), True),  # size unknown: fails closed
    ],
)
def test_unhedged_exposure_beyond_the_limit_locks_the_exchange(
    exposure: Decimal | None, limit: Decimal, locked: bool
) -> None:
    lock = p.unhedged_exposure(
        exchange="okx",
        exposure_usd=exposure,
        job_ids=[7],
        limit_usd=limit,
        now=NOW,
        duration=timedelta(days=1),
    )
    assert (lock is not None) is locked
    if lock is not None:
        assert (lock.scope, lock.target, lock.code) == (
            p.Scope.EXCHANGE,
            "okx",
            p.ProtectionCode.UNHEDGED_EXPOSURE,
        )
        assert lock.reason.startswith("job 7 left unhedged")
        assert lock.until == NOW + timedelta(days=1)


def _leg(leg_id: int, exchange: str, side: Side, filled: str, price: str | None) -> LegRun:
    fill = Fill(
        LegStatus.FILLED if Decimal(filled) else LegStatus.REJECTED,
        Decimal(filled),
        None if price is None else Decimal(price),
    )
    return LegRun(
        leg_id, 7, leg_id, 1, exchange, "BTC/USDT:USDT", side, Decimal("0.01"), f"c{leg_id}",
        fill=fill,
    )  # fmt: skip


def test_exposure_of_an_unhedged_end_is_net_quantity_times_fill_price() -> None:
    job = JobRun(
        7,
        1,
        3,
        "BTC/USDT:USDT",
        (_leg(1, "binance", Side.BUY, "0", None), _leg(2, "okx", Side.SELL, "0.01", "97000")),
    )
    end = Settlement(7, JobStatus.FAILED, EndCode.UNHEDGED, True, Decimal("-0.01"), ("okx",))
    assert p.exposures(job, end) == [p.Exposure("okx", 7, Decimal("970.00"))]
    flat = Settlement(7, JobStatus.FAILED, EndCode.NOTHING_FILLED, False, Decimal(0))
    assert p.exposures(job, flat) == []


# -- the whole evaluation ---------------------------------------------------------------


def test_evaluate_orders_locks_and_keeps_one_per_scope_target_and_code() -> None:
    readings = p.Readings(
        system=p.SystemReading(Decimal(1000), Decimal(1000), failures=5, max_failures=5),
        exchanges=[
            p.ExchangeReading("okx", Decimal(40_000), Decimal(-2500), failures=3),
            p.ExchangeReading("binance", Decimal(60_000), Decimal(10), failures=0),
        ],
        markets=[
            p.MarketReading("okx", "ETH/USDT:USDT", Decimal(5000), Decimal("0.01")),
            p.MarketReading("okx", "BTC/USDT:USDT", Decimal(3000), Decimal("0.5")),
            p.MarketReading("binance", "BTC/USDT:USDT", Decimal(30), Decimal("0.6")),
        ],
        exposures=[p.Exposure("binance", 9, Decimal(10)), p.Exposure("binance", 8, Decimal(5))],
    )
    locks = p.evaluate(readings, LIMITS, NOW)
    assert [(lk.scope.value, lk.target, lk.code.value) for lk in locks] == [
        ("system", "system", "daily_loss"),
        ("system", "system", "failure_streak"),
        ("exchange", "binance", "unhedged_exposure"),
        ("exchange", "okx", "api_latency"),
        ("exchange", "okx", "drawdown"),
        ("exchange", "okx", "failure_streak"),
        ("symbol", "BTC/USDT:USDT", "fast_market"),
    ]
    latency = next(lk for lk in locks if lk.code is p.ProtectionCode.API_LATENCY)
    assert latency.context["symbol"] == "BTC/USDT:USDT"  # the first reading that tripped
    fast = next(lk for lk in locks if lk.code is p.ProtectionCode.FAST_MARKET)
    assert fast.context["exchange"] == "binance"
    unhedged = next(lk for lk in locks if lk.code is p.ProtectionCode.UNHEDGED_EXPOSURE)
    assert unhedged.context == {"jobs": "8, 9", "exposure_usd": "15", "limit_usd": "0"}


def test_evaluate_an_unchanged_streak_cannot_trip() -> None:
    readings = p.Readings(system=p.SystemReading(Decimal(0), Decimal(1000), None, 0))
    assert p.evaluate(readings, LIMITS, NOW) == []


def test_evaluate_calm_readings_lock_nothing() -> None:
    readings = p.Readings(
        system=p.SystemReading(Decimal(10), Decimal(1000), failures=1, max_failures=5),
        exchanges=[p.ExchangeReading("okx", Decimal(40_000), Decimal(-100), failures=2)],
        markets=[p.MarketReading("okx", "BTC/USDT:USDT", Decimal(30), Decimal("0.005"))],
    )
    assert p.evaluate(readings, LIMITS, NOW) == []


# -- one place ------------------------------------------------------------------------------

ROOTS = [Path(perpbot_db.__file__).parent, Path(workers.__file__).parent]
#: The statements that apply a protection's effect or end a lock, and who may call them.
ONE_PLACE = {
    "locks.protection_lock_insert": {"services/protect.py"},
    "locks.protection_lock_release_expired": {"services/protect.py"},
    "exchanges.leave_expired_safe_mode": {"services/protect.py"},
    "exchanges.enter_safe_mode": {"services/protect.py"},
    "locks.exchange_extend_safe_mode": {"services/protect.py"},
    "blacklist.insert": {"services/protect.py"},
    # an operator's halt (control.halt) and the protections' (protect.run_once)
    "halt_in": {"services/protect.py", "services/control.py"},
}


def callers() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {name: set() for name in ONE_PLACE}
    for root in ROOTS:
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    if isinstance(func, ast.Attribute):  # module.statement(...)
                        owner = func.value.id if isinstance(func.value, ast.Name) else ""
                        name = f"{owner}.{func.attr}"
                        if name not in found and func.attr in found:  # control.halt_in(...)
                            name = func.attr
                    else:
                        name = getattr(func, "id", "")
                    if name in found:
                        found[name].add(path.relative_to(root).as_posix())
    return found


def test_protections_are_applied_and_their_locks_ended_in_one_place() -> None:
    assert callers() == ONE_PLACE
