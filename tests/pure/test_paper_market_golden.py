"""The paper market's quotes are pinned: the same seeds and times give exactly the quotes
they gave when these digests were recorded (before the market's hot path was sped up).

The simulation's ledger digest depends on every snapshot (each Decimal's value and
exponent, ``observed_at``, the order), so a faster market must not move a single one.
Each case runs a market through :class:`~perpbot_db.services.feeds.PaperSource` (the
path ``perpbot feed`` and ``perpbot simulate`` take) and hashes the ``repr`` of every
snapshot and the fast symbols of every step; a second digest does the same through
:meth:`PaperMarket.step` (the ``Quote``\\ s, with their ``fast`` flag).

The cases reach every branch of the quoting: calm and stressed regimes (fast markets,
jumps, latency tails and timeouts, funding at its +-50 % clamp), uneven steps (zero,
half a second, a slow-state step, an outage longer than ``MAX_STEP_S``), forced
regimes, a tick that is not a power of ten, a tick larger than the price (the bid's
one-tick floor), generic symbols and a single venue (no gap between venues).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from perpbot_db.domain.paper_market import (
    MarketParams,
    PaperMarket,
    SymbolSpec,
    VenueSpec,
    default_symbols,
)
from perpbot_db.services.feeds import PaperSource
from perpbot_db.store.market import MarketSnapshot

START = datetime(2026, 12, 2, 6, 30, tzinfo=UTC)
STEPS = 500
SEEDS = (1, 7, 42)

CALM = MarketParams()
STRESSED = MarketParams(
    fast_per_hour=120.0,
    fast_mean_s=30.0,
    fast_volatility_x=6.0,
    fast_spread_x=(2.0, 30.0),
    fast_latency_x=(5.0, 40.0),
    calm_gap_bps=(1.0, 1.0),
    fast_gap_bps=(20.0, 80.0),
    jumps_per_hour=40.0,
    fast_jumps_x=20.0,
    jump_bps=300.0,
    funding_mean_8h=0.3,
    funding_sd_8h=0.4,
    funding_reversion_h=0.1,
    latency_sigma=0.9,
    latency_tail_p=0.05,
    timeout_ms=120.0,
)
PARAMS = {"calm": CALM, "stressed": STRESSED}

#: Seconds between steps, cycled: mostly one, some uneven, and one outage.
GAPS = (1.0, 1.0, 1.0, 0.0, 0.5, 1.0, 2.5, 1.0, 13.0, 1.0, 0.25, 1.0)
OUTAGE_AT, OUTAGE_S = 250, 2 * 3600.0 + 0.125
#: (step, symbol, fast): switches forced at those steps.
FORCED = ((40, "ETH/USDT:USDT", True), (90, "ETH/USDT:USDT", False), (300, "SOL/USDT:USDT", True))

SYMBOLS: list[SymbolSpec | str] = [
    *default_symbols(22),  # the twenty defaults and two generic ones
    SymbolSpec("QTR/USDT:USDT", 12.34, Decimal("0.25"), 0.015),
    SymbolSpec("COARSE/USDT:USDT", 0.3, Decimal("1"), 0.05),  # bid floored to one tick
    SymbolSpec("FINE/USDT:USDT", 0.000123, Decimal("1E-9"), 0.016),
]
VENUES: list[VenueSpec | str] = [
    VenueSpec("binance", 8, 21.0),
    VenueSpec("bybit", 4, 17.5),
    "gate",
    VenueSpec("hyper", 1, 28.25),
]


def times() -> Iterator[datetime]:
    now = START
    for i in range(STEPS):
        yield now
        now += timedelta(seconds=OUTAGE_S if i == OUTAGE_AT else GAPS[i % len(GAPS)])


def market(seed: int, params: MarketParams, venues: list[VenueSpec | str]) -> PaperMarket:
    return PaperMarket(SYMBOLS, venues, seed=seed, params=params)


def digest_source(seed: int, params: MarketParams, venues: list[VenueSpec | str]) -> str:
    source = PaperSource(market(seed, params, venues))
    h = hashlib.sha256()
    for i, now in enumerate(times()):
        for at, symbol, fast in FORCED:
            if at == i:
                source.market.force_regime(symbol, fast=fast)
        snaps = source.poll(now)
        assert source.last is snaps
        for snap in snaps:
            h.update(repr(snap).encode())
            h.update(b"\n")
        h.update(repr(source.market.fast_symbols()).encode())
    return h.hexdigest()


def digest_step(seed: int, params: MarketParams, venues: list[VenueSpec | str]) -> str:
    m = market(seed, params, venues)
    h = hashlib.sha256()
    for i, now in enumerate(times()):
        for at, symbol, fast in FORCED:
            if at == i:
                m.force_regime(symbol, fast=fast)
        for quote in m.step(now):
            h.update(repr(quote).encode())
            h.update(b"\n")
    return h.hexdigest()


#: Recorded on the market before its hot path was optimized (commit 77cc25e).
SOURCE_DIGESTS = {
    ("calm", 1): "1d9e48a02fd1d2d5804dabbb50dedeb293d7bc838f1dd54620ead739081a25d0",
    ("calm", 7): "8eb2eb04abd987856880754a2857125ca2b5ef2899192870d7305803bd86824e",
    ("calm", 42): "853b6181a22a2cac7c95e7f350a424d92a30fb8291e2f1bf025c623ff0a9a6f7",
    ("stressed", 1): "fddb2b382a0d49f641a0c004501ac15b10930260f967f321b85a4d3bf3c3d5ea",
    ("stressed", 7): "558173f32efe06d6f328b21afe5ec8393279bc369577beb787bb1f2cdaa65de0",
    ("stressed", 42): "94bd7b7fe6fb21724a7b98ca74fba03bd363f9febcefc9652c5ee120ce3c62d5",
}
STEP_DIGESTS = {
    ("calm", 1): "63c7411fbfa1219af665af058e2775afef2e6d1e19dd90b86cd7f46a26b73115",
    ("stressed", 7): "e90d32454ea2a5164e57e412320afa81be2d6a1275717d9218854a3fa3b7baee",
}
ONE_VENUE_DIGEST = "0d126b36ae1286055687bbf9990120bfa78438ed1d568d89b1791fafbcffa2aa"


@pytest.mark.parametrize(("params", "seed"), sorted(SOURCE_DIGESTS))
def test_the_paper_source_polls_the_recorded_snapshots(params: str, seed: int) -> None:
    assert digest_source(seed, PARAMS[params], VENUES) == SOURCE_DIGESTS[params, seed]


@pytest.mark.parametrize(("params", "seed"), sorted(STEP_DIGESTS))
def test_the_market_steps_to_the_recorded_quotes(params: str, seed: int) -> None:
    assert digest_step(seed, PARAMS[params], VENUES) == STEP_DIGESTS[params, seed]


def test_a_single_venue_market_quotes_the_recorded_snapshots() -> None:
    assert digest_source(3, STRESSED, [VenueSpec("solo", 2, 40.0)]) == ONE_VENUE_DIGEST


def test_the_cases_reach_the_edges() -> None:
    """The digests pin what they should: the stressed market does go fast, hit the
    timeout and the funding clamp, and the coarse symbol sits on its one-tick floor."""
    source = PaperSource(market(7, STRESSED, VENUES))
    snaps, fast_seen = [], set()
    for now in times():
        snaps += source.poll(now)
        fast_seen.update(source.market.fast_symbols())
    assert len(fast_seen) > len(SYMBOLS) // 2
    assert any(s.latency_ms == Decimal(120) for s in snaps)
    assert any(abs(s.funding_rate or 0) == Decimal("0.5") for s in snaps)
    assert any(s.symbol == "COARSE/USDT:USDT" and s.bid == 1 for s in snaps)
    assert len({s.observed_at for s in snaps}) < STEPS  # the zero-second steps


def test_the_paper_source_rows_are_plain_snapshots() -> None:
    """The source's rows are the very rows the constructor builds from the market's
    quotes (equal, hashable, frozen)."""
    source = PaperSource(market(5, STRESSED, VENUES))
    twin = market(5, STRESSED, VENUES)
    for now in itertools.islice(times(), 40):
        snaps = source.poll(now)
        built = [MarketSnapshot(*q[:9]) for q in twin.step(now)]
        assert snaps == built
        assert all(type(s) is MarketSnapshot for s in snaps)
        assert [hash(s) for s in snaps] == [hash(s) for s in built]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snaps[0].bid = Decimal(1)  # type: ignore[misc]
