"""Shared test builders: market data, jobs, submissions, a live market feed, waiting.

Nothing here depends on the machine's speed: :func:`wait_for` polls a condition
until a generous hang-guard deadline, and :class:`MarketFeed` keeps market
snapshots fresh for as long as a test runs, so a slow or loaded machine only
makes tests take longer, never fail.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from perpbot_db.domain.execution import JobRun
from perpbot_db.services import audit, market, tick
from perpbot_db.services.submit import submit_lines
from perpbot_db.settings import Settings
from perpbot_db.store import transitions
from workers.venues.adapters import build_adapters
from workers.worker import Worker

PRICES = {"BTC/USDT:USDT": Decimal(97000), "ETH/USDT:USDT": Decimal(3100)}
EXCHANGES = ("binance", "okx", "bybit")

#: How long a test waits for a condition before calling it a hang.  A hang guard,
#: not a speed target: a healthy run meets every condition long before it.
HANG_S = 300.0


def put_market(engine: Engine, *, at: datetime | None = None, **overrides: Any) -> None:
    """Fresh, calm snapshots for every exchange and symbol (overrides apply to all, or per
    exchange: ``put_market(engine, okx={"latency_ms": 900})``)."""
    snaps = []
    for symbol, price in PRICES.items():
        for exchange in EXCHANGES:
            fields: dict[str, Any] = {
                "exchange": exchange,
                "symbol": symbol,
                "bid": price,
                "ask": price + price / 100_000,
                "last": price,
                "funding_rate": Decimal("0.0001"),
                "volatility": Decimal("0.005"),
                "latency_ms": Decimal(40),
                "observed_at": at,
            }
            fields.update(overrides.get(exchange, {}) if exchange in overrides else {})
            fields.update({k: v for k, v in overrides.items() if k not in EXCHANGES})
            snaps.append(market.SnapshotIn(**fields))
    with engine.begin() as conn:
        market.upsert_snapshots(conn, snaps, at or datetime.now(UTC))


def job_body(i: int, **overrides: Any) -> dict[str, Any]:
    """One job as JSON (arb, BTC, binance buy / okx sell 0.01, key ``t-<i>``)."""
    body: dict[str, Any] = {
        "strategy": "arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": 970,
        "expected_edge_bps": 25,
        "expected_pnl_usd": 2.4,
        "legs": [
            {"exchange": "binance", "side": "buy", "quantity": "0.01"},
            {"exchange": "okx", "side": "sell", "quantity": "0.01"},
        ],
        "idempotency_key": f"t-{i}",
    }
    body.update(overrides)
    return body


def job(i: int, **overrides: Any) -> str:
    """:func:`job_body` as one line of ``perpbot submit``'s input."""
    return json.dumps(job_body(i, **overrides)) + "\n"


class ManualClock:
    """A monotonic clock that moves only when a test moves it (``clock.now += 61``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def submit(engine: Engine, settings: Settings, lines: list[str]) -> list[int]:
    result = submit_lines(engine, lines, settings, datetime.now(UTC))
    assert result.written, result.problems
    return result.job_ids


def config(**overrides: Any) -> tick.TickConfig:
    return tick.TickConfig(**{"max_concurrent_jobs": 1000, **overrides})


def statuses(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, status FROM hedge_jobs")).all())  # type: ignore[arg-type]


def by_status(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM hedge_jobs GROUP BY 1")).all()
    return {status: n for status, n in rows}


def active_reserved(engine: Engine) -> dict[str, Decimal]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT exchange, sum(amount_usd) FROM capital_reservations "
                "WHERE status = 'active' GROUP BY exchange"
            )
        ).all()
    return {exchange: amount for exchange, amount in rows}


def wait_for(predicate: Callable[[], object], timeout: float = HANG_S) -> bool:
    """Poll ``predicate`` until it is true; False only after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


class MarketFeed:
    """A feed in a thread: calm snapshots for every exchange and symbol every ``every_s``.

    Real processes under test judge market data against the database clock; on a
    loaded machine a snapshot written once at the start of a test goes stale
    (10 s) long before the test ends.  ``overrides`` are passed to
    :func:`put_market` on every beat and may be changed while it runs.
    """

    def __init__(self, engine: Engine, every_s: float = 0.5, **overrides: Any) -> None:
        self.engine = engine
        self.every_s = every_s
        self.overrides = overrides
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="market-feed", daemon=True)

    def start(self) -> MarketFeed:
        put_market(self.engine, **self.overrides)  # data exists before the test goes on
        self.beats = 1
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> MarketFeed:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                put_market(self.engine, **self.overrides)
                self.beats += 1
            except Exception:  # a database restart under test: the next beat retries
                continue


PERPBOT = str(Path(sys.executable).parent / "perpbot")
Cli = Callable[..., "subprocess.CompletedProcess[str]"]
Spawn = Callable[..., "subprocess.Popen[str]"]


def admitted(engine: Engine, settings: Settings, n: int = 1, **overrides: Any) -> list[int]:
    put_market(engine)
    ids = submit(engine, settings, [job(i, **overrides) for i in range(n)])
    report = tick.run_tick(engine, config())
    assert sorted(report.admitted) == sorted(ids), report.summary()
    return ids


def work(
    engine: Engine, settings: Settings, faults: Mapping[str, str] | None = None, **kw: Any
) -> Worker:
    worker = Worker(engine, settings, build_adapters(engine, settings, faults=faults), **kw)
    worker.run(once=True)
    return worker


def listening(engine: Engine) -> bool:
    """A session of this database (the process under test) has LISTENed and waits."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ILIKE 'LISTEN%' AND state = 'idle'"
                )
            ).scalar_one()
        )


def run_to_completion(engine: Engine, settings: Settings, n: int) -> list[int]:
    ids = admitted(engine, settings, n)
    work(engine, settings)
    return ids


def breaches(engine: Engine, limit: int = 50) -> set[tuple[int, str]]:
    with engine.connect() as conn:
        return {(b.invariant, b.name) for b in audit.run_audit(conn, max_concurrent_jobs=limit)}


def claim(engine: Engine, worker_id: str, limit: int = 10) -> list[JobRun]:
    with engine.begin() as conn:
        return transitions.claim(conn, worker_id=worker_id, limit=limit, lease_s=30)


def expire_leases(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET lease_expires_at = now() - interval '1 s' "
                "WHERE status = 'running'"
            )
        )
