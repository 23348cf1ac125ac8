"""The console's speed targets: ``GET /api/state`` latency and what it adds to the database's CPU.

    python bench/console.py                      # 1,000,000 finished jobs, 20 clients, 60 s
    python bench/console.py --finished 200000 --seconds 20 --window 15   # a quick look

Issue 12's targets: ``GET /api/state`` p95 under 50 ms with 1,000,000 finished jobs
in the tables and 100 exchange x symbol snapshots; the dashboard stays live with 20
open tabs while 3 workers run at full speed, and the console adds under 5 % to the
database's CPU.

1. Fill.  A fresh embedded PostgreSQL, one database, migrated; five exchanges
   configured (equity 1e9 USD each).  Written straight in SQL (generate_series):
   ``--finished`` finished jobs spread over 30 days, in time order (94 % completed,
   4 % failed with two filled legs, two released reservations and four events each;
   1 % rejected and 1 % expired with two unsent legs and two events), 30 days of
   ``daily_counters`` for ``global`` and each exchange, and live jobs: 3,000
   pending, 1,000 admitted (with their reservations) and 1,000 running (a ghost
   worker's, lease a day long, so recovery leaves them be).  100 market snapshots
   (5 exchanges x 20 symbols), refreshed every 2 s for the whole run.  The archive
   is off (``archive_after_s`` a year): every finished job stays in the hot tables,
   the worst case for the console's reads.
2. Latency.  The console runs in its own process (``--serve-console``: the
   library's :class:`perpbot_db.runtime.web.WebServer`, i.e. uvicorn, with its
   own ``application_name`` so its database sessions can be told apart), and the
   clients in another (``--clients-only``): ``--clients`` httpx clients each
   poll ``GET /api/state`` once a second (random phase) for ``--seconds``.  The
   route ``GET /api/state/stream`` (server-sent events) does not exist when this
   was written, so polling clients stand in for the dashboard's tabs (if the
   route exists when you run it, the JSON says so, but this bench still polls).
   Reported: p50/p95/p99/max of the request latency as the client sees it, and
   the state's own ``build_ms`` (one per distinct ``built_at``).
3. Database CPU.  One ``perpbot scheduler`` and ``--workers`` ``perpbot worker``
   processes run at full speed on a zero-latency paper exchange; a feeder keeps
   at least 20,000 jobs pending (SQL inserts every second).  After a warm-up,
   windows of ``--window`` seconds alternate off / on / off / on: "on" runs the
   clients as in 2.  For each window: CPU seconds of every postgres process
   (``/proc/<pid>/stat`` utime + stime, before and after), of the console's own
   backends (by ``application_name``), jobs completed.  The console's share is
   (a) its backends' CPU over all postgres CPU in the "on" windows (direct, not
   disturbed by how fast the workers went) and (b) postgres CPU per completed job,
   on against off (indirect, noisy on a loaded machine).  Latencies under load
   are reported too.

Progress goes to stderr, a table to stdout, numbers to bench/results/console.json
(with the load average, which matters: this machine may be busy with other work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

CONSOLE_APP = "perpbot-console-bench"
EXCHANGES = ("binance", "okx", "bybit", "bitget", "gateio")
BASES = (
    "BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "TRX",
    "LTC", "BCH", "NEAR", "APT", "ARB", "OP", "SUI", "TON", "ATOM", "FIL",
)  # fmt: skip
PRICE = Decimal(97000)  # BTC: the price the jobs' notional (970 USD for 0.01) expects
CONFIG = "".join(
    f"[exchanges.{name}]\nequity_usd = 1000000000\nmax_concurrent_jobs = 10000\n"
    for name in EXCHANGES
)
ENV = {
    "PERPBOT_PAPER__LATENCY_MS": "0",
    "PERPBOT_MAX_CONCURRENT_JOBS": "5000",
    "PERPBOT_ARCHIVE_AFTER_S": str(365 * 86_400),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the data ---------------------------------------------------------------------------------

# One chunk of finished jobs, g in [lo, hi] of n, finished in time order over 30 days.
FINISHED_SQL = """
WITH j AS (
    INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
                            expected_volume_usd, final_score, scored_at, status, attempts,
                            created_at, updated_at, admitted_at, started_at, finished_at,
                            decision_code, result)
    SELECT 'arb', 'BTC/USDT:USDT', 970, 25, 2.4, 1940, 50 + g % 50, t - interval '5 s',
           s.status, CASE WHEN s.status IN ('completed', 'failed') THEN 1 ELSE 0 END,
           t - interval '5 s', t,
           CASE WHEN s.status IN ('completed', 'failed') THEN t - interval '3 s' END,
           CASE WHEN s.status IN ('completed', 'failed') THEN t - interval '2 s' END,
           t,
           CASE s.status WHEN 'rejected' THEN 'capital_single_job_cap'
                         WHEN 'expired' THEN 'deadline_passed'
                         WHEN 'failed' THEN 'leg_rejected' END,
           CASE WHEN s.status = 'completed' THEN '{"pnl_usd": "1.2"}'::jsonb END
    FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g
    CROSS JOIN LATERAL (SELECT now() - interval '30 days' - interval '1 min'
                               + (g / CAST(:n AS float8)) * interval '30 days' AS t) tt
    CROSS JOIN LATERAL (SELECT CASE WHEN g % 100 < 94 THEN 'completed'
                                    WHEN g % 100 < 98 THEN 'failed'
                                    WHEN g % 100 = 98 THEN 'rejected'
                                    ELSE 'expired' END AS status) s
    ORDER BY g
    RETURNING id, status, finished_at
), l AS (
    INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, client_order_id,
                      exchange_order_id, status, filled_quantity, avg_price, fee_usd,
                      booked_at, sent_at, created_at, updated_at)
    SELECT id, k, (ARRAY['binance', 'okx', 'bybit', 'bitget', 'gateio'])[1 + (id + k) % 5],
           'BTC/USDT:USDT', (ARRAY['buy', 'sell'])[k + 1], 0.01, 'pb' || id || 'L' || k || 'A1',
           CASE WHEN f THEN 'x' || id || 'L' || k END,
           CASE WHEN f THEN 'filled' ELSE 'pending' END,
           CASE WHEN f THEN 0.01 ELSE 0 END, CASE WHEN f THEN 97000 END,
           CASE WHEN f THEN 0.485 ELSE 0 END,
           CASE WHEN f THEN finished_at END, CASE WHEN f THEN finished_at - interval '1 s' END,
           finished_at - interval '5 s', finished_at
    FROM j CROSS JOIN generate_series(0, 1) k
    CROSS JOIN LATERAL (SELECT j.status IN ('completed', 'failed') AS f) ff
    ORDER BY id, k
), r AS (
    INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd, status, release_reason,
                                      created_at, released_at)
    SELECT id, (ARRAY['binance', 'okx', 'bybit', 'bitget', 'gateio'])[1 + (id + k) % 5],
           'arbitrage', 970, 'released', status, finished_at - interval '3 s', finished_at
    FROM j CROSS JOIN generate_series(0, 1) k
    WHERE status IN ('completed', 'failed')
    ORDER BY id, k
)
INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, reason, code)
SELECT id, finished_at - (3 - e.k) * interval '1 s', e.from_status, e.to_status, e.action,
       e.actor, e.reason, e.code
FROM j CROSS JOIN LATERAL (VALUES
        (0, NULL, 'pending', 'submit', 'cli', 'submitted', NULL),
        (1, 'pending', 'admitted', 'admit', 'scheduler', 'admitted', NULL),
        (2, 'admitted', 'running', 'claim', 'worker-1', 'claimed', NULL),
        (3, 'running', j.status, CASE j.status WHEN 'completed' THEN 'complete' ELSE 'fail' END,
         'worker-1', 'legs booked', CASE WHEN j.status = 'failed' THEN 'leg_rejected' END)
    ) AS e(k, from_status, to_status, action, actor, reason, code)
WHERE j.status IN ('completed', 'failed') OR e.k = 0
UNION ALL
SELECT id, finished_at, 'pending', status,
       CASE status WHEN 'rejected' THEN 'reject' ELSE 'expire' END, 'scheduler',
       CASE status WHEN 'rejected' THEN 'can never pass' ELSE 'deadline passed' END,
       CASE status WHEN 'rejected' THEN 'capital_single_job_cap' ELSE 'deadline_passed' END
FROM j WHERE status IN ('rejected', 'expired')
"""

COUNTERS_SQL = """
INSERT INTO daily_counters (day, scope, volume_usd, fees_usd, realized_pnl_usd, loss_used_usd,
                            jobs_completed, jobs_failed)
SELECT d::date, s.scope, 1940 * per * s.share, 0.97 * per * s.share, 1.2 * per * s.share,
       0.1 * per * s.share, (0.94 * per * s.share)::int, (0.04 * per * s.share)::int
FROM generate_series(current_date - 30, current_date - 1, interval '1 day') d
CROSS JOIN (SELECT CAST(:n AS numeric) / 30 AS per) p
CROSS JOIN (SELECT 'global' AS scope, 1.0 AS share
            UNION ALL SELECT unnest(CAST(:exchanges AS text[])), 0.4) s
"""

# Live jobs: pending (due, scored, far deadline), admitted (reservations held), running
# (a ghost worker's, lease a day long).  ``:tag`` keeps idempotency keys apart.
LIVE_SQL = """
WITH j AS (
    INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
                            expected_volume_usd, final_score, scored_at, status, attempts,
                            deadline, admitted_at, started_at, worker_id, lease_expires_at,
                            idempotency_key)
    SELECT 'arb', 'BTC/USDT:USDT', 970, 20 + g % 10, 2.4, 1940, 50 + (g % 500) / 10.0, now(),
           :status, CASE WHEN :status = 'running' THEN 1 ELSE 0 END,
           now() + interval '1 day',
           CASE WHEN :status <> 'pending' THEN now() END,
           CASE WHEN :status = 'running' THEN now() END,
           CASE WHEN :status = 'running' THEN 'bench-ghost' END,
           CASE WHEN :status = 'running' THEN now() + interval '1 day' END,
           'bench-' || :tag || '-' || g
    FROM generate_series(1, CAST(:n AS int)) g
    RETURNING id
), l AS (
    INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, client_order_id,
                      status)
    SELECT id, k, (ARRAY['binance', 'okx'])[k + 1], 'BTC/USDT:USDT', (ARRAY['buy', 'sell'])[k + 1],
           0.01, 'pb' || id || 'L' || k || 'A1',
           CASE WHEN :status = 'running' THEN 'sent' ELSE 'pending' END
    FROM j CROSS JOIN generate_series(0, 1) k
), r AS (
    INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd)
    SELECT id, (ARRAY['binance', 'okx'])[k + 1], 'arbitrage', 970
    FROM j CROSS JOIN generate_series(0, 1) k
    WHERE :status <> 'pending'
)
INSERT INTO job_events (job_id, from_status, to_status, action, actor, reason)
SELECT id, NULL, 'pending', 'submit', 'bench', 'submitted' FROM j
"""


def fill(engine: Any, finished: int) -> dict[str, Any]:
    from sqlalchemy import text

    t0 = time.perf_counter()
    chunk = 100_000
    for lo in range(1, finished + 1, chunk):
        hi = min(finished, lo + chunk - 1)
        with engine.begin() as conn:
            conn.execute(text(FINISHED_SQL), {"lo": lo, "hi": hi, "n": finished})
        rate = hi / (time.perf_counter() - t0)
        log(f"fill: {hi:,}/{finished:,} finished jobs ({rate:,.0f} jobs/s)")
    with engine.begin() as conn:
        conn.execute(text(COUNTERS_SQL), {"n": finished, "exchanges": list(EXCHANGES)})
        conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 1e12"))
        for status, n in (("pending", 3000), ("admitted", 1000), ("running", 1000)):
            conn.execute(text(LIVE_SQL), {"status": status, "n": n, "tag": f"fill-{status}"})
    log("fill: counters and live jobs written; VACUUM ANALYZE")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        sizes = {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("hedge_jobs", "legs", "capital_reservations", "job_events")
        }
        db_bytes = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    seconds = time.perf_counter() - t0
    log(f"fill: {sizes} in {seconds:.0f} s, database {db_bytes / 2**30:.2f} GiB")
    return {"rows": sizes, "fill_s": round(seconds, 1), "database_gib": round(db_bytes / 2**30, 2)}


def refresh_market(engine: Any) -> None:
    """All 100 snapshots, observed now (5 exchanges x 20 symbols; BTC at the jobs' price)."""
    from perpbot_db.services import market

    snaps = []
    for ex in EXCHANGES:
        for i, base in enumerate(BASES):
            price = PRICE if base == "BTC" else Decimal(10 + 37 * i)
            snaps.append(
                market.SnapshotIn(
                    exchange=ex,
                    symbol=f"{base}/USDT:USDT",
                    bid=price,
                    ask=price + price / 97000,
                    last=price,
                    funding_rate=Decimal("0.0001"),
                    volatility=Decimal("0.005"),
                    latency_ms=Decimal(30),
                )
            )
    with engine.begin() as conn:
        market.upsert_snapshots(conn, snaps, datetime.now(UTC))


# -- CPU and processes ------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every live postgres process (server, backends, helpers), by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    out[int(entry.name)] = cpu_s(int(entry.name))
            except OSError:
                continue
    return out


def console_backends(engine: Any) -> set[int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return {
            int(pid)
            for pid in conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :app"),
                {"app": CONSOLE_APP},
            ).scalars()
        }


def statements_reset(engine: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        conn.execute(text("SELECT pg_stat_statements_reset()"))


def statements_top(engine: Any, limit: int = 25) -> list[dict[str, Any]]:
    """The statements that used the most execution time since the reset."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT calls, total_exec_time, mean_exec_time, "
                "regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements "
                "ORDER BY total_exec_time DESC LIMIT :n"
            ),
            {"n": limit},
        ).all()
    return [
        {"calls": int(c), "total_ms": round(t, 1), "mean_ms": round(m, 3), "query": q}
        for c, t, m, q in rows
    ]


def completed_total(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT coalesce(jobs_completed + jobs_failed, 0) FROM daily_counters "
                    "WHERE scope = 'global' AND day = (now() AT TIME ZONE 'UTC')::date"
                )
            ).scalar()
            or 0
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_console() -> None:
    """``--serve-console``: the console alone, its sessions named CONSOLE_APP."""
    from perpbot_db.runtime.db import engine_for
    from perpbot_db.runtime.web import WebServer
    from perpbot_db.settings import load_settings

    settings = load_settings()
    assert settings.database_url is not None
    engine = engine_for(settings.database_url.get_secret_value(), application_name=CONSOLE_APP)
    WebServer(engine, settings).run()


# -- the clients ------------------------------------------------------------------------------


async def _poll(
    url: str, clients: int, seconds: float, every_s: float, sse: bool
) -> dict[str, Any]:
    """``clients`` tabs polling ``url`` every ``every_s``; or (``sse``) ``clients`` tabs on
    ``url``/stream and one probe polling ``url`` (the latency under their load)."""
    import httpx

    latencies: list[float] = []
    builds: dict[str, float] = {}
    errors: list[str] = []
    gaps: list[float] = []  # ms between one tab's consecutive state events
    ages: list[float] = []  # ms from built_at (database clock, same host) to receipt
    events = [0]
    end = time.perf_counter() + seconds
    rng = random.Random(12)

    async def one(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(rng.random() * every_s)  # tabs are not opened in step
        while True:
            t = time.perf_counter()
            if t >= end:
                return
            try:
                response = await client.get(url)
                body = response.content
                took = (time.perf_counter() - t) * 1000
                if response.status_code == 200:
                    state = json.loads(body)
                    latencies.append(took)
                    builds[state["built_at"]] = state["build_ms"]
                else:
                    errors.append(f"{response.status_code}: {body[:200]!r}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            await asyncio.sleep(max(0.0, t + every_s - time.perf_counter()))

    async def tab(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(rng.random() * every_s)
        last = None
        try:
            async with client.stream("GET", url + "/stream") as response:
                if response.status_code != 200:
                    errors.append(f"stream {response.status_code}")
                    return
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "state":
                        now = time.perf_counter()
                        state = json.loads(line[6:])
                        built = datetime.fromisoformat(state["built_at"])
                        ages.append((datetime.now(UTC) - built).total_seconds() * 1000)
                        builds[state["built_at"]] = state["build_ms"]
                        events[0] += 1
                        if last is not None:
                            gaps.append((now - last) * 1000)
                        last = now
                    elif line.startswith("data: ") and event == "unavailable":
                        errors.append(line[:200])
                    if time.perf_counter() >= end:
                        return
        except httpx.HTTPError as exc:
            errors.append(repr(exc))

    tabs = [httpx.AsyncClient(timeout=10.0) for _ in range(clients)]  # a connection per tab
    probe = httpx.AsyncClient(timeout=10.0)
    try:
        if sse:
            await asyncio.gather(one(probe), *(tab(t) for t in tabs))
        else:
            await asyncio.gather(*(one(t) for t in tabs))
    finally:
        for t in [*tabs, probe]:
            await t.aclose()
    return {
        "latencies_ms": latencies,
        "build_ms": list(builds.values()),
        "errors": errors,
        "sse": {"events": events[0], "gaps_ms": gaps, "ages_ms": ages} if sse else None,
    }


def clients_only(
    url: str, clients: int, seconds: float, every_s: float, sse: bool, out: str
) -> None:
    result = asyncio.run(_poll(url, clients, seconds, every_s, sse))
    Path(out).write_text(json.dumps(result))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 1)


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    lat, builds = raw["latencies_ms"], raw["build_ms"]
    return {
        "requests": len(lat),
        "errors": len(raw["errors"]),
        "first_errors": raw["errors"][:3],
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "max_ms": round(max(lat), 1) if lat else None,
        "builds": len(builds),
        "build_ms_p50": pct(builds, 50),
        "build_ms_p95": pct(builds, 95),
        "build_ms_max": round(max(builds), 1) if builds else None,
    }


def sse_summary(raws: list[dict[str, Any]], clients: int, seconds: float) -> dict[str, Any]:
    gaps = [x for r in raws for x in r["sse"]["gaps_ms"]]
    ages = [x for r in raws for x in r["sse"]["ages_ms"]]
    events = sum(r["sse"]["events"] for r in raws)
    return {
        "tabs": clients,
        "events": events,
        "events_per_tab_per_s": round(events / (clients * seconds), 2) if seconds else None,
        "gap_ms_p50": pct(gaps, 50),
        "gap_ms_p95": pct(gaps, 95),
        "gap_ms_max": round(max(gaps), 1) if gaps else None,
        "age_at_receipt_ms_p50": pct(ages, 50),
        "age_at_receipt_ms_p95": pct(ages, 95),
        "age_at_receipt_ms_max": round(max(ages), 1) if ages else None,
    }


def run_clients(
    url: str, clients: int, seconds: float, every_s: float, home: Path, sse: bool = False
) -> dict[str, Any]:
    out = home / f"clients-{time.monotonic_ns()}.json"
    subprocess.run(
        [
            sys.executable, __file__, "--clients-only", "--url", url,
            "--clients", str(clients), "--seconds", str(seconds), "--every", str(every_s),
            "--out", str(out), *(["--sse"] if sse else []),
        ],
        check=True,
    )  # fmt: skip
    raw: dict[str, Any] = json.loads(out.read_text())
    return raw


# -- the run ----------------------------------------------------------------------------------


class Feeder:
    """Refreshes the 100 snapshots every 2 s and keeps at least ``floor`` jobs pending."""

    def __init__(self, engine: Any, floor: int) -> None:
        self.engine = engine
        self.floor = floor
        self.stop = threading.Event()
        self.batches = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from sqlalchemy import text

        last_market = 0.0
        while not self.stop.wait(0.5):
            if time.monotonic() - last_market >= 2.0:
                refresh_market(self.engine)
                last_market = time.monotonic()
            with self.engine.begin() as conn:
                pending = conn.execute(
                    text("SELECT count(*) FROM hedge_jobs WHERE status = 'pending'")
                ).scalar_one()
                if pending < self.floor:
                    self.batches += 1
                    conn.execute(
                        text(LIVE_SQL),
                        {"status": "pending", "n": self.floor, "tag": f"feed-{self.batches}"},
                    )


def window(
    engine: Any, on: bool, seconds: float, run: dict[str, Any], console_pid: int
) -> dict[str, Any]:
    pg0, jobs0 = postgres_cpu(), completed_total(engine)
    con0, t0 = cpu_s(console_pid), time.perf_counter()
    raw = None
    if on:
        raw = run_clients(
            run["url"], run["clients"], seconds, run["every"], run["home"], run["sse"]
        )
    else:
        time.sleep(seconds)
    pg1, jobs1 = postgres_cpu(), completed_total(engine)
    con1, wall = cpu_s(console_pid), time.perf_counter() - t0
    backends = console_backends(engine)
    pg = sum(pg1.values()) - sum(v for pid, v in pg0.items() if pid in pg1)
    console_db = sum(pg1.get(pid, 0.0) - pg0.get(pid, 0.0) for pid in backends)
    jobs = jobs1 - jobs0
    result: dict[str, Any] = {
        "console": "on" if on else "off",
        "wall_s": round(wall, 1),
        "postgres_cpu_s": round(pg, 2),
        "console_backends_cpu_s": round(console_db, 3),
        "console_process_cpu_s": round(con1 - con0, 2),
        "jobs_finished": jobs,
        "jobs_per_s": round(jobs / wall, 1),
        "postgres_cpu_ms_per_job": round(1000 * pg / jobs, 3) if jobs else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if raw is not None:
        result["latency"] = summary(raw)
        if raw["sse"] is not None:
            result["sse"] = sse_summary([raw], run["clients"], seconds)
        run.setdefault("under_load_raw", []).append(raw)
    log(
        f"window console {result['console']}: {jobs:,} jobs ({result['jobs_per_s']}/s), "
        f"postgres {pg:.1f} CPU s ({result['postgres_cpu_ms_per_job']} ms/job), "
        f"console backends {console_db:.2f} CPU s"
        + (f", p95 {result['latency']['p95_ms']} ms" if raw is not None else "")
    )
    return result


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished jobs")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (tabs)")
    parser.add_argument("--every", type=float, default=1.0, help="each client's poll interval")
    parser.add_argument("--seconds", type=float, default=60, help="the latency run (idle)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--window", type=float, default=30, help="each CPU window, seconds")
    parser.add_argument("--pairs", type=int, default=2, help="off/on window pairs")
    parser.add_argument("--warmup", type=float, default=20, help="workers before the windows")
    parser.add_argument(
        "--tabs",
        choices=("auto", "sse", "poll"),
        default="auto",
        help="the 'on' windows' clients: SSE on /api/state/stream (auto: if the route "
        "exists) or polling /api/state",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="load pg_stat_statements and print the statements that used the most time in "
        "the windows (every process's, the console's among them)",
    )
    parser.add_argument("--sse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-console", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_console:
        serve_console()
        return
    if args.clients_only:
        clients_only(args.url, args.clients, args.seconds, args.every, args.sse, args.out)
        return

    from sqlalchemy import text

    from perpbot_db.runtime import embedded, migrate
    from perpbot_db.runtime.db import engine_for
    from perpbot_db.settings import load_settings

    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-console-"))
    (home / "perpbot.toml").write_text(CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    os.environ.update(ENV)
    extra = (
        {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.max": "1000"}
        if args.statements
        else None
    )
    server = embedded.start(embedded.Cluster(home / "pg"), owned=True, extra_options=extra)
    procs: list[subprocess.Popen[bytes]] = []
    feeder = None
    report: dict[str, Any] = {}
    try:
        admin = engine_for(server.url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS bench_console WITH (FORCE)"))
            conn.execute(text("CREATE DATABASE bench_console"))
        admin.dispose()
        db_url = server.url.set(database="bench_console").render_as_string(hide_password=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
        env.update(ENV)
        env["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
        env["PERPBOT_DATABASE_URL"] = db_url
        settings = load_settings(database_url=db_url)
        engine = engine_for(db_url)
        migrate.ensure_schema(engine, settings)
        refresh_market(engine)
        data = fill(engine, args.finished)

        port = free_port()
        console = subprocess.Popen(
            [sys.executable, __file__, "--serve-console"],
            env={**env, "PERPBOT_WEB_PORT": str(port)},
        )
        procs.append(console)
        url = f"http://127.0.0.1:{port}/api/state"
        import httpx

        for _ in range(300):
            try:
                if httpx.get(url, timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the console did not answer GET /api/state")
        with httpx.stream("GET", f"http://127.0.0.1:{port}/api/state/stream", timeout=5) as r:
            has_stream = r.status_code != 404
        sse = args.tabs == "sse" or (args.tabs == "auto" and has_stream)
        run = {"url": url, "clients": args.clients, "every": args.every, "home": home, "sse": sse}

        log(f"latency: {args.clients} clients polling every {args.every} s for {args.seconds} s")
        refresh_market(engine)
        idle = summary(run_clients(url, args.clients, args.seconds, args.every, home))
        log(f"latency (no workers): {idle}")

        feeder = Feeder(engine, 20_000)
        feeder.thread.start()
        spawn = [["perpbot", "scheduler"]] + [["perpbot", "worker"]] * args.workers
        bin_dir = Path(sys.executable).parent
        for cmd in spawn:
            procs.append(
                subprocess.Popen(
                    [str(bin_dir / cmd[0]), *cmd[1:]],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        log(f"scheduler + {args.workers} workers started; warm-up {args.warmup:.0f} s")
        time.sleep(args.warmup)
        if args.statements:
            statements_reset(engine)
        windows = []
        for _ in range(args.pairs):
            windows.append(window(engine, False, args.window, run, console.pid))
            windows.append(window(engine, True, args.window, run, console.pid))
        top = statements_top(engine) if args.statements else None
        feeder.stop.set()
        for proc in procs[1:]:
            proc.terminate()
        for proc in procs[1:]:
            proc.wait(60)

        on = [w for w in windows if w["console"] == "on"]
        off = [w for w in windows if w["console"] == "off"]
        on_pg = sum(w["postgres_cpu_s"] for w in on)
        on_console = sum(w["console_backends_cpu_s"] for w in on)
        direct = 100 * on_console / (on_pg - on_console) if on_pg > on_console else None

        def per_job(ws: list[dict[str, Any]]) -> float | None:
            jobs = sum(w["jobs_finished"] for w in ws)
            return 1000 * sum(w["postgres_cpu_s"] for w in ws) / jobs if jobs else None

        on_pj, off_pj = per_job(on), per_job(off)
        indirect = 100 * (on_pj - off_pj) / off_pj if on_pj and off_pj else None
        loaded_raw = run.get("under_load_raw", [])
        loaded = summary(
            {
                "latencies_ms": [x for r in loaded_raw for x in r["latencies_ms"]],
                "build_ms": [x for r in loaded_raw for x in r["build_ms"]],
                "errors": [x for r in loaded_raw for x in r["errors"]],
            }
        )
        report = {
            "benchmark": "console: GET /api/state latency and the console's database CPU",
            "targets": {"state_p95_ms": 50, "console_db_cpu_pct": 5},
            "commit": git_commit(),
            "machine": f"{os.cpu_count()} cores, embedded PostgreSQL 18",
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "parameters": {
                "finished_jobs": args.finished,
                "snapshots": len(EXCHANGES) * len(BASES),
                "exchanges": list(EXCHANGES),
                "clients": args.clients,
                "poll_every_s": args.every,
                "latency_seconds": args.seconds,
                "workers": args.workers,
                "window_s": args.window,
                "pairs": args.pairs,
                "monitor_interval_s": settings.monitor_interval_s,
                "idle_clients": "polling GET /api/state",
                "tabs_under_load": f"{args.clients} SSE clients on GET /api/state/stream and one "
                "probe polling GET /api/state every --every s"
                if sse
                else f"{args.clients} clients polling GET /api/state"
                + ("" if has_stream else " (no SSE route)"),
                "archive": "off: finished jobs stay in the hot tables",
            },
            "data": data,
            "latency_idle": idle,
            "latency_under_load": loaded,
            "sse_under_load": sse_summary(loaded_raw, args.clients, args.window * len(on))
            if sse
            else None,
            "windows": windows,
            "console_db_cpu_pct_direct": round(direct, 2) if direct is not None else None,
            "postgres_cpu_ms_per_job": {
                "off": round(off_pj, 3) if off_pj else None,
                "on": round(on_pj, 3) if on_pj else None,
            },
            "console_db_cpu_pct_per_job": round(indirect, 1) if indirect is not None else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if top is not None:
            report["statements_top"] = top
        engine.dispose()
    finally:
        if feeder is not None:
            feeder.stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)

    idle, loaded = report["latency_idle"], report["latency_under_load"]
    print(f"\n{'GET /api/state':<28}{'reqs':>7}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
          f"{'build p50':>11}{'build max':>11}")  # fmt: skip
    for name, s in (("idle, 1M finished", idle), ("3 workers + tabs", loaded)):
        print(
            f"{name:<28}{s['requests']:>7}{s['p50_ms']!s:>8}{s['p95_ms']!s:>8}{s['p99_ms']!s:>8}"
            f"{s['max_ms']!s:>8}{s['build_ms_p50']!s:>11}{s['build_ms_max']!s:>11}"
        )
    if report["sse_under_load"]:
        print(f"SSE tabs under load: {report['sse_under_load']}")
    print(f"\n{'window':<8}{'jobs/s':>9}{'pg CPU s':>10}{'ms/job':>9}{'console db CPU s':>18}")
    for w in report["windows"]:
        print(
            f"{w['console']:<8}{w['jobs_per_s']:>9}{w['postgres_cpu_s']:>10}"
            f"{w['postgres_cpu_ms_per_job']!s:>9}{w['console_backends_cpu_s']:>18}"
        )
    print(
        f"\nconsole's share of postgres CPU (its backends): {report['console_db_cpu_pct_direct']} %"
        f"; per job on vs off: {report['console_db_cpu_pct_per_job']} %; "
        f"p95 idle {idle['p95_ms']} ms, under load {loaded['p95_ms']} ms (targets: 5 %, 50 ms)"
    )
    for row in report.get("statements_top", []):
        print(f"{row['total_ms']:>10.0f} ms {row['calls']:>8} calls {row['mean_ms']:>8.2f} ms  "
              f"{row['query'][:90]}")  # fmt: skip
    out = HERE / "results" / ("console-statements.json" if args.statements else "console.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"written {out}")


if __name__ == "__main__":
    main()
