"""Seeded random producers' passes, and a digest of what each decided.

A case is a whole pass (:meth:`ProducerService._inputs` then ``_decide``, as
``plan`` runs them when the simulation hands over the snapshots and the state) on a
paper market drawn from a seed: 1-20 symbols on 2-4 venues (funding intervals of 1,
4 or 8 h), calm, as the feed runs it, stressed (fast markets forced) or wide (calm
gaps of up to 60 bps: crossed venues); some snapshots stale, crossed, without a
funding rate or rounded to their columns' scales; taker fees with ties, small and
large equities, venues in safe mode; strategy parameters drawn; open pairs due or
not, arbitrage on its way, residuals to rebalance.

The digests in ``data/producer_digests.json`` were recorded with the code as it was
before the producers' pass was made cheaper (``python -m tests.pure.producer_cases``
writes them again): the pass must still decide the same, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Engine

from perpbot_db.domain.clock import VirtualClock
from perpbot_db.domain.paper_market import MarketParams, PaperMarket, default_symbols, venue_spec
from perpbot_db.domain.strategies.base import Output
from perpbot_db.services.producers import ProducerService, ProducerState
from perpbot_db.settings import ExchangeSettings, Settings, StrategiesSettings
from perpbot_db.store import producers as store
from perpbot_db.store.market import MarketSnapshot

DIGESTS = Path(__file__).parent / "data" / "producer_digests.json"
CASES = 400
EXCHANGES = ("binance", "bybit", "gate", "okx")
START = datetime(2026, 1, 5, 23, 59, 30, tzinfo=UTC)
KINDS = ("calm", "feed", "stressed", "wide")


def _market(rng: random.Random, kind: str, names: list[str], intervals: dict[str, int]) -> Any:
    symbols = default_symbols(rng.randint(1, 20))
    if kind == "calm":
        params = MarketParams(fast_per_hour=0)
    elif kind == "wide":
        params = MarketParams(fast_per_hour=0, calm_gap_bps=(0.0, 60.0))
    else:
        params = MarketParams()
    venues = [venue_spec(n, intervals[n]) for n in names]
    paper = PaperMarket(symbols, venues, seed=rng.randint(0, 10**6), params=params)
    if kind == "stressed":
        for symbol in symbols:
            if rng.random() < 0.6:
                paper.force_regime(symbol, fast=True)
    return paper


def _snapshots(rng: random.Random, paper: PaperMarket, now: datetime) -> list[MarketSnapshot]:
    latest: dict[tuple[str, str], MarketSnapshot] = {}
    at = now - timedelta(seconds=rng.randint(0, 4))
    for _ in range(rng.randint(1, 3)):
        for q in paper.step(at):
            latest[(q.exchange, q.symbol)] = MarketSnapshot(*q[:9])
        at += timedelta(seconds=rng.choice((0.5, 1, 1, 2)))
    rows: list[MarketSnapshot] = []
    for key in sorted(latest):
        snap = latest[key]
        roll = rng.random()
        if roll < 0.03:
            continue  # not quoted
        if roll < 0.06:
            snap = replace(snap, observed_at=now - timedelta(seconds=rng.choice((11, 60))))
        elif roll < 0.08:
            snap = replace(snap, bid=snap.ask + snap.ask / 1000)  # crossed
        elif roll < 0.12:
            snap = replace(snap, funding_rate=None)
        elif roll < 0.14:
            snap = replace(snap, funding_rate=Decimal(0))
        elif roll < 0.20:
            scale = Decimal("1e-12")
            snap = replace(
                snap,
                bid=snap.bid.quantize(scale, ROUND_HALF_UP),
                ask=snap.ask.quantize(scale, ROUND_HALF_UP),
            )
        elif roll < 0.22 and rows:
            # the same prices and funding as the previous row's venue: ties
            prev = rows[-1]
            if prev.symbol == snap.symbol:
                snap = replace(
                    snap, bid=prev.bid, ask=prev.ask, last=prev.last, funding_rate=prev.funding_rate
                )
        rows.append(snap)
    return rows


def _pick(rng: random.Random, *values: Any) -> Any:
    return rng.choice(values)


def _strategies(rng: random.Random, names: list[str]) -> StrategiesSettings:
    fees = {n: Decimal(_pick(rng, "0", "1", "2", "2.5", "5", "5", "5")) for n in names}
    return StrategiesSettings(
        seed=rng.randint(0, 1000),
        taker_fee_bps={n: f for n, f in fees.items() if rng.random() < 0.8},
        arb={
            "enabled": rng.random() < 0.9,
            "min_edge_bps": _pick(rng, "0", "1", "1", "3"),
            "notional_usd": _pick(rng, "1000", "5000", "5000", "60000"),
            "window_s": _pick(rng, 5.0, 60.0),
        },
        funding_arb={
            "enabled": rng.random() < 0.9,
            "hold_h": _pick(rng, "8", "72", "72", "720"),
            "min_edge_bps": _pick(rng, "0", "0", "2"),
            "min_daily_spread_bps": _pick(rng, "0", "1", "1", "5"),
            "exit_buffer_bps": _pick(rng, "0", "2", "2"),
            "notional_usd": _pick(rng, "1000", "5000", "5000", "60000"),
            "exit_spread_bps_per_day": _pick(rng, "0", "3"),
        },
        volume={
            "enabled": rng.random() < 0.9,
            "daily_target_usd": _pick(rng, "2000000", "50000"),
            "max_open_pairs": _pick(rng, 1, 3),
        },
        hedge_rebalance={"enabled": rng.random() < 0.9, "min_usd": _pick(rng, "0", "10")},
    )


def _state(
    rng: random.Random, names: list[str], symbols: list[str], now: datetime
) -> ProducerState:
    accounts = [
        store.Account(
            name,
            Decimal(_pick(rng, "10000", "100000", "1000000", "1000000")),
            Decimal(_pick(rng, "0.05", "0.10", "0.10", "0.30")),
            rng.random() < 0.12,
        )
        for name in names
    ]
    days = [
        store.ExchangeDay(
            n,
            Decimal(rng.randint(0, 3_000_000)),
            Decimal(rng.randint(0, 900)),
            Decimal(rng.randint(-1500, 500)),
        )
        for n in names
        if rng.random() < 0.5
    ]
    openings: list[store.OpeningLeg] = []
    arbitrage: list[store.SymbolJobs] = []
    for i in range(rng.randint(0, 4)):
        strategy = _pick(rng, "volume", "funding_arb", "arb")
        long_ex, short_ex = rng.sample(names, 2)
        symbol = rng.choice(symbols)
        quantity = Decimal(rng.randint(1, 5000)) / 1000
        close_after = (now + timedelta(seconds=rng.choice((-30, 30, 3600)))).isoformat()
        key = f"{strategy}:case:{i}"
        failed = rng.choice((0, 0, 1))
        # no booked prices (an opening as recorded before entries were read): no entry
        unpriced = (None, None, Decimal(0), None, None)
        openings.append(
            store.OpeningLeg(
                strategy, key, symbol, long_ex, quantity, close_after, failed, *unpriced
            )
        )
        openings.append(
            store.OpeningLeg(
                strategy, key, symbol, short_ex, -quantity, close_after, failed, *unpriced
            )
        )
    for symbol in symbols:
        if rng.random() < 0.15:
            arbitrage.append(store.SymbolJobs(_pick(rng, "arb", "funding_arb"), symbol, 1))
    residuals = [
        store.ResidualRow(rng.choice(names), rng.choice(symbols), Decimal(rng.randint(-90, 90)))
        for _ in range(rng.randint(0, 3))
    ]
    rounds = [
        store.RebalanceRound(r.symbol, rng.randint(1, 3), rng.randint(0, 1)) for r in residuals
    ]
    return ProducerState(
        day=now.astimezone(UTC).date(),
        accounts=accounts,
        days=days,
        openings=openings,
        in_flight=rng.choice((0, 0, 1)),
        residuals=[r for r in residuals if r.quantity != 0],
        rounds=[r for r in rounds if rng.random() < 0.5],
        arbitrage=arbitrage,
    )


def run_case(seed: int) -> list[Output]:
    """The pass of case ``seed``: what every strategy decided."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    names = sorted(rng.sample(EXCHANGES, rng.randint(2, 4)))
    intervals = {n: _pick(rng, 8, 8, 4, 1) for n in names}
    paper = _market(rng, kind, names, intervals)
    now = START + timedelta(seconds=rng.randint(0, 90))
    snapshots = _snapshots(rng, paper, now)
    strategies = _strategies(rng, names)
    settings = SimpleNamespace(
        strategies=strategies,
        exchanges={
            n: ExchangeSettings(equity_usd=Decimal(1), funding_interval_h=intervals[n])
            for n in names
            if rng.random() < 0.9
        },
        paper=SimpleNamespace(taker_fee_bps=Decimal(_pick(rng, "5", "2"))),
    )
    state = _state(rng, names, paper.symbols, now)
    service = ProducerService(cast(Engine, None), cast(Settings, settings), VirtualClock(now))
    for _ in range(rng.randint(0, 2)):  # the volume program's generator moves per pass
        service.rng.random()
    return service._decide(service._inputs(now, snapshots, state), now)


def digest(outputs: list[Output]) -> str:
    """sha256 over every output's strategy, bodies (json-dumped) and skips, in order."""
    h = hashlib.sha256()
    for out in outputs:
        h.update(f"{out.strategy.value}\n".encode())
        for body in out.bodies:
            h.update(json.dumps(body).encode() + b"\n")
        for skip in out.skips:
            h.update(f"{skip.strategy.value}\x1f{skip.symbol}\x1f{skip.reason}\n".encode())
    return h.hexdigest()


def record() -> dict[str, Any]:
    cases: dict[str, str] = {}
    bodies: dict[str, int] = {}
    for seed in range(CASES):
        outputs = run_case(seed)
        cases[str(seed)] = digest(outputs)
        for out in outputs:
            bodies[out.strategy.value] = bodies.get(out.strategy.value, 0) + len(out.bodies)
    return {"cases": cases, "bodies_by_strategy": bodies}


if __name__ == "__main__":
    DIGESTS.parent.mkdir(exist_ok=True)
    DIGESTS.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
