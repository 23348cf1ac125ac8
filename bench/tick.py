"""Benchmark the admission tick and submit -> admitted latency.

    python bench/tick.py                         # 1k, 10k, 100k pending + latency
    python bench/tick.py --sizes 1000 1000000    # the 2x-from-1k-to-1M claim

Tick: a fresh database per size holds N scored, due pending jobs (written
straight with SQL, so a million takes seconds) and fresh market data; limits
are set so that one tick admits 1,000.  Three ticks are timed (admitted jobs
are finished by SQL between ticks, and N + 3,000 jobs exist so every tick sees
about N pending).  "db ms" is wall time minus this process's CPU time: the
time spent waiting for PostgreSQL.

Latency: a real `perpbot scheduler` process, idle, ticking every 1 s; this
process submits one job at a time through `submit_lines` and waits for the
`perpbot_admitted` NOTIFY.  The figure is from just before the submit call to
the notification: it includes validation, the insert and its commit.
Results go to bench/results/tick.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
from sqlalchemy import Engine, text

from perpbot_db.runtime import embedded, migrate
from perpbot_db.runtime.db import engine_for
from perpbot_db.services import market, tick
from perpbot_db.services.submit import submit_lines
from perpbot_db.settings import load_settings
from perpbot_db.store import system

HERE = Path(__file__).resolve().parent
EXCHANGES = ("binance", "okx", "bybit")
PRICE = Decimal(97000)
CONFIG = "\n".join(
    f"[exchanges.{name}]\nequity_usd = 1000000000\nmax_concurrent_jobs = 10000\n"
    f"single_job_cap = 0.10\ninflight_cap = 0.30\n"
    for name in EXCHANGES
)


def fresh_market(engine: Engine) -> None:
    snaps = [
        market.SnapshotIn(
            exchange=ex,
            symbol="BTC/USDT:USDT",
            bid=PRICE,
            ask=PRICE + 1,
            last=PRICE,
            funding_rate=Decimal("0.0001"),
            volatility=Decimal("0.005"),
            latency_ms=Decimal(30),
        )
        for ex in EXCHANGES
    ]
    with engine.begin() as conn:
        market.upsert_snapshots(conn, snaps, datetime.now(UTC))


FILL_SQL = """
WITH j AS (
    INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
                            expected_volume_usd, final_score, scored_at, idempotency_key,
                            deadline)
    SELECT 'arb', 'BTC/USDT:USDT', 970, 20 + (g % 10), 2, 1940, 50 + (g % 500) / 10.0, now(),
           'bench-' || :run || '-' || g, now() + interval '1 day'
    FROM generate_series(1, :n) g
    RETURNING id
), l AS (
    INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, client_order_id)
    SELECT id, k, CASE WHEN k = 0 THEN 'binance' ELSE 'okx' END, 'BTC/USDT:USDT',
           CASE WHEN k = 0 THEN 'buy' ELSE 'sell' END, 0.01, 'pb' || id || 'L' || k || 'A1'
    FROM j CROSS JOIN generate_series(0, 1) k
)
INSERT INTO job_events (job_id, from_status, to_status, actor, reason)
SELECT id, NULL, 'pending', 'bench', 'submitted' FROM j
"""

FINISH_ADMITTED = [
    "UPDATE capital_reservations SET status = 'released', released_at = now(), "
    "release_reason = 'bench' WHERE status = 'active'",
    "UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE status = 'admitted'",
]


def bench_tick(admin: Engine, url_for: object, n: int) -> dict[str, object]:
    name = f"bench_tick_{n}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = engine_for(url_for(name))  # type: ignore[operator]
    settings = load_settings()
    migrate.ensure_schema(engine, settings)
    with engine.begin() as conn:  # the loss budget would hold all but ~200 jobs a tick
        conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 1e9"))
    t = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, n + 3000, 200_000):
            conn.execute(text(FILL_SQL), {"n": min(200_000, n + 3000 - start), "run": start})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    fill_s = time.perf_counter() - t
    config = tick.TickConfig(max_concurrent_jobs=1000, candidates=2000, rescore_batch=1000)
    ticks = []
    for _ in range(3):
        fresh_market(engine)
        with engine.begin() as conn:
            for sql in FINISH_ADMITTED:
                conn.execute(text(sql))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = tick.run_tick(engine, config)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        ticks.append(
            {
                "admitted": len(report.admitted),
                "wall_ms": round(wall * 1000, 1),
                "db_ms": round((wall - cpu) * 1000, 1),
            }
        )
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    result = {
        "pending": n,
        "fill_s": round(fill_s, 1),
        "ticks": ticks,
        "median_wall_ms": statistics.median(t["wall_ms"] for t in ticks),
        "median_db_ms": statistics.median(t["db_ms"] for t in ticks),
    }
    print(
        f"{n:>9,} pending: admitted {ticks[0]['admitted']}/tick, tick wall "
        f"{result['median_wall_ms']} ms, db {result['median_db_ms']} ms (median of 3)",
        flush=True,
    )
    return result


def bench_latency(url: str, env: dict[str, str], samples: int) -> dict[str, object]:
    engine = engine_for(url)
    settings = load_settings(database_url=url)
    migrate.ensure_schema(engine, settings)
    fresh_market(engine)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "perpbot"), "scheduler"],
        env={**env, "PERPBOT_DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    latencies = []
    try:
        time.sleep(2.0)  # let it start and go idle
        with psycopg.connect(conninfo, autocommit=True) as listener:
            listener.execute(f"LISTEN {system.CHANNEL_ADMITTED}")
            for i in range(samples):
                if i % 50 == 0:
                    fresh_market(engine)
                line = json.dumps(
                    {
                        "strategy": "arb",
                        "symbol": "BTC/USDT:USDT",
                        "notional_usd": 970,
                        "expected_edge_bps": 25,
                        "expected_pnl_usd": 2.4,
                        "legs": [
                            {"exchange": "binance", "side": "buy", "quantity": "0.01"},
                            {"exchange": "okx", "side": "sell", "quantity": "0.01"},
                        ],
                    }
                )
                t0 = time.perf_counter()
                submit_lines(engine, [line], settings, datetime.now(UTC))
                got = next(iter(listener.notifies(timeout=5.0, stop_after=1)), None)
                if got is None:
                    raise SystemExit(f"sample {i}: not admitted within 5 s")
                latencies.append((time.perf_counter() - t0) * 1000)
                with engine.begin() as conn:  # keep capital free: finish what was admitted
                    for sql in FINISH_ADMITTED:
                        conn.execute(text(sql))
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
        engine.dispose()
    latencies.sort()
    result = {
        "samples": samples,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 1),
        "max_ms": round(latencies[-1], 1),
    }
    print(
        f"submit -> admitted (idle scheduler): p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms over {samples}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-tick-"))
    (home / "perpbot.toml").write_text(CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    server = embedded.start(embedded.Cluster(home / "pg"))
    try:
        admin = engine_for(server.url.set(database="postgres")).execution_options(
            isolation_level="AUTOCOMMIT"
        )

        def url_for(db: str) -> object:
            return server.url.set(database=db)

        ticks = [bench_tick(admin, url_for, n) for n in args.sizes]
        latency = bench_latency(
            server.url.render_as_string(hide_password=False), env, args.latency_samples
        )
        admin.dispose()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    small, large = ticks[0], ticks[-1]
    report = {
        "benchmark": "admission tick (1,000 admitted per tick) and submit -> admitted latency",
        "machine": f"{os.cpu_count()} cores, embedded PostgreSQL 18, default settings",
        "ticks": ticks,
        "db_ms_ratio_largest_to_smallest": round(
            float(large["median_db_ms"]) / max(float(small["median_db_ms"]), 0.1),
            2,  # type: ignore[arg-type]
        ),
        "latency": latency,
    }
    out = HERE / "results" / "tick.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
