"""The market protections' pre-screen: the markets it leaves out could never lock, so
deciding over the rest decides exactly what deciding over every market does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpbot_db.domain import protections as p
from perpbot_db.domain import risk
from perpbot_db.domain.lifecycle import RiskMode, SystemStatus
from perpbot_db.services import protect
from perpbot_db.services.tick import QuietBasis, market_views
from perpbot_db.store.market import MarketSnapshot

NOW = datetime(2026, 12, 2, 7, 30, tzinfo=UTC)
MODES = list(RiskMode)
CONFIG = protect.ProtectConfig()
EXCHANGES = ("binance", "okx", "bybit")
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
#: Steps off a limit, in the columns' last stored digit (latency 3 places, volatility 8)
STEPS = (-1000, -1, 0, 1, 1000)
ODD = (Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0"))


def near(limit: Decimal, quantum: Decimal) -> st.SearchStrategy[Decimal | None]:
    """A value at a limit, one stored digit either side, far either side, or none or odd."""
    return st.one_of(
        st.none(),
        st.sampled_from(STEPS).map(lambda k: limit + k * quantum),
        st.sampled_from(ODD),
        st.decimals(min_value=-1, max_value=limit * 3, places=8, allow_nan=False),
    )


@st.composite
def market_set(draw: st.DrawFn, mode: RiskMode) -> list[MarketSnapshot]:
    """Snapshots whose latency and volatility sit around ``mode``'s hard limits; a key
    may come twice (the later one is the market's)."""
    limits = CONFIG.limits[mode]
    keys = st.tuples(st.sampled_from(EXCHANGES), st.sampled_from(SYMBOLS))
    out = []
    for exchange, symbol in draw(st.lists(keys, max_size=12)):
        latency = draw(near(limits.latency_hard_ms, Decimal("0.001")))
        vol = draw(near(limits.volatility_hard, Decimal("0.00000001")))
        out.append(
            MarketSnapshot(
                exchange,
                symbol,
                Decimal(100),
                Decimal(101),
                Decimal(100),
                Decimal("0.0001"),
                vol,
                latency,
                NOW,
            )
        )
    return out


def outcome(fn: Callable[[], object]) -> object:
    """What calling ``fn`` gives: its value, or the type of the exception it raises."""
    try:
        return fn()
    except InvalidOperation as exc:
        return type(exc)


def readings_of(snapshots: list[MarketSnapshot]) -> list[p.MarketReading]:
    return protect.market_readings(market_views(snapshots))


def test_screen_at_the_limits_then_only_a_value_beyond_one_is_kept() -> None:
    lat, vol = Decimal(750), Decimal("0.05")
    r = p.MarketReading
    calm = [r("okx", "A", lat, vol), r("okx", "B", None, None), r("okx", "C", Decimal(0), vol * 0)]
    beyond = [
        r("okx", "D", lat + Decimal("0.001"), vol),
        r("okx", "E", lat, vol + Decimal("0.00000001")),
        r("okx", "F", lat, Decimal("-0.00000001")),
        r("okx", "G", Decimal("NaN"), vol),
        r("okx", "H", lat, Decimal("Infinity")),
    ]
    assert p.markets_that_may_lock(calm + beyond, latency_ms=lat, volatility=vol) == beyond
    for m in calm:
        assert (
            p.api_latency(
                exchange=m.exchange,
                symbol=m.symbol,
                latency_ms=m.latency_ms,
                limit_ms=lat,
                now=NOW,
                cooldown=timedelta(1),
            )
            is None
        )
        assert (
            p.fast_market(
                exchange=m.exchange,
                symbol=m.symbol,
                volatility=m.volatility,
                limit=vol,
                now=NOW,
                cooldown=timedelta(1),
            )
            is None
        )


@pytest.mark.parametrize("limit", [Decimal("NaN"), Decimal("Infinity")])
def test_screen_when_a_limit_is_not_finite_then_every_market_is_kept(limit: Decimal) -> None:
    markets = [p.MarketReading("okx", "A", Decimal(1), Decimal("0.01"))]
    assert p.markets_that_may_lock(markets, latency_ms=limit, volatility=Decimal(1)) == markets
    assert p.markets_that_may_lock(markets, latency_ms=Decimal(1), volatility=limit) == markets


@settings(max_examples=400, deadline=None)
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_screen_when_markets_are_around_the_limits_then_decide_over_the_kept_ones_is_the_same(
    data: st.DataObject, mode: RiskMode
) -> None:
    snapshots = data.draw(market_set(mode))
    readings = p.Readings(
        system=p.SystemReading(Decimal(0), Decimal(1000), failures=0, max_failures=3),
        exchanges=[p.ExchangeReading("okx", Decimal(1000), Decimal(0), failures=0)],
    )
    every = readings_of(snapshots)
    kept = protect.markets_that_may_lock(CONFIG, mode, every)
    assert all(m in every for m in kept)

    def decide(markets: list[p.MarketReading]) -> object:
        return outcome(
            lambda: protect.decide(
                CONFIG,
                NOW,
                readings=replace(readings, markets=markets),
                mode=mode,
                status="running",
            )
        )

    full = decide(every)
    assert decide(kept) == full
    if not kept:  # the screen says no market can lock: none does
        assert full == decide([])
        assert isinstance(full, list)
        assert not any(lk.scope is p.Scope.SYMBOL for lk in full)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    mode=st.sampled_from(MODES),
    status=st.sampled_from([SystemStatus.RUNNING.value, SystemStatus.HALTED.value]),
    loss=st.sampled_from([Decimal(0), Decimal(1000)]),
    failures=st.sampled_from([0, 3]),
    in_force=st.sets(st.integers(0, 20)),
    ended=st.sets(st.integers(0, 20)),
)
def test_quiet_basis_when_markets_vary_then_it_calls_for_a_lock_as_the_ticks_protections(
    data: st.DataObject,
    mode: RiskMode,
    status: str,
    loss: Decimal,
    failures: int,
    in_force: set[int],
    ended: set[int],
) -> None:
    """:meth:`QuietBasis.would_act` (the dry run's protections, screened) against the
    tick's whole decision over every market's reading, with some locks in place (in
    force or past their ``until``)."""
    snapshots = data.draw(market_set(mode))
    readings = p.Readings(
        system=p.SystemReading(loss, Decimal(1000), failures=failures, max_failures=3),
        exchanges=[p.ExchangeReading("okx", Decimal(1000), Decimal(0), failures=failures)],
    )
    basis = QuietBasis(
        config=CONFIG,
        readings=readings,
        mode=mode,
        status=status,
        day=date(2026, 12, 2),
        funding_interval_h={},
        placed={},
    )
    full = outcome(
        lambda: protect.decide(
            CONFIG,
            NOW,
            readings=replace(readings, markets=readings_of(snapshots)),
            mode=mode,
            status=status,
        )
    )
    in_place: dict[tuple[str, str, str], datetime] = {}
    if isinstance(full, list):
        for i, lock in enumerate(full):
            if i in in_force:
                in_place[lock.key] = NOW + timedelta(seconds=1)
            elif i in ended:
                in_place[lock.key] = NOW
    expected = (
        full
        if not isinstance(full, list)
        else any((u := in_place.get(lk.key)) is None or u <= NOW for lk in full)
    )
    assert outcome(lambda: basis.would_act(snapshots, NOW, in_place)) == expected


def test_quiet_basis_when_a_market_is_fast_then_its_lock_is_called_for_unless_in_force() -> None:
    limits = risk.LIMITS[RiskMode.BALANCED]
    calm = MarketSnapshot(
        "okx", "ETH/USDT:USDT", Decimal(1), Decimal(1), Decimal(1), None, Decimal(0), None, NOW
    )
    fast = replace(calm, symbol="BTC/USDT:USDT", volatility=limits.volatility_hard * 2)
    basis = QuietBasis(
        config=CONFIG,
        readings=p.Readings(),
        mode=RiskMode.BALANCED,
        status="running",
        day=date(2026, 12, 2),
        funding_interval_h={},
        placed={},
    )
    key = ("symbol", "BTC/USDT:USDT", "fast_market")
    assert not basis.would_act([calm], NOW, {})
    assert basis.would_act([calm, fast], NOW, {})
    assert not basis.would_act([calm, fast], NOW, {key: NOW + timedelta(seconds=1)})
    assert basis.would_act([calm, fast], NOW, {key: NOW})
    # the later snapshot of a key is the market's: a calm one after a fast one locks nothing
    assert not basis.would_act([fast, replace(calm, symbol=fast.symbol)], NOW, {})
    assert basis.would_act([replace(calm, symbol=fast.symbol), fast], NOW, {})
