"""perpbot's full hedge-job lifecycle next to procrastinate and PgQueuer no-op jobs.

    pip install -r bench/requirements-peers.txt
    python bench/compare.py                      # 20,000 jobs each, 2 worker processes
    python bench/compare.py --jobs 50000 --decay-minutes 10

One fresh embedded PostgreSQL (what a newcomer gets), one database per
contender, run one after the other in the same process:

* perpbot: ``jobs`` two-leg hedge jobs are submitted (``perpbot submit``'s
  code path, timed apart as ``enqueue_s``); then one ``perpbot scheduler`` and
  ``workers`` ``perpbot worker`` processes are started and the clock runs until
  every job is ``completed``: admission (risk, capital reservations), claim,
  both legs on a zero-latency paper exchange (its own order table, fees,
  slippage), finish with fills, PnL and daily counters, capital released.
  Settings are the defaults except: exchanges with room for the load (equity
  1e9 USD, 10,000 concurrent jobs each), a global concurrency of 2,000, the
  daily loss limit raised (paper fees would otherwise halt the system after
  1,000 USD, as designed), and a zero-latency paper exchange.
* procrastinate and PgQueuer: ``jobs`` no-op jobs each, via bench/peers.py.

``--decay-minutes M`` then keeps perpbot busy for a warm-up (``--decay-warmup``,
90 s: until jobs are old enough for the archive, which then runs for good) and M
minutes more (a submitter tops the backlog up), and reports throughput per
minute: the last minute against the first is the decay.  Results go to
bench/results/compare.json.
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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tick import fresh_market  # bench/tick.py: the same calm market for every exchange

from perpbot_db.runtime import embedded, migrate
from perpbot_db.runtime.db import engine_for
from perpbot_db.services.submit import submit_lines
from perpbot_db.settings import load_settings

HERE = Path(__file__).resolve().parent
PERPBOT = str(Path(sys.executable).parent / "perpbot")
EXCHANGES = ("binance", "okx", "bybit")
CONFIG = "".join(
    f"[exchanges.{name}]\nequity_usd = 1000000000\nmax_concurrent_jobs = 10000\n"
    for name in EXCHANGES
)
ENV = {
    "PERPBOT_PAPER__LATENCY_MS": "0",
    "PERPBOT_MAX_CONCURRENT_JOBS": "2000",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def job_lines(n: int, start: int = 0) -> list[str]:
    lines = []
    for i in range(start, start + n):
        buy, sell = ("binance", "okx") if i % 2 else ("bybit", "okx")
        lines.append(
            json.dumps(
                {
                    "strategy": "arb",
                    "symbol": "BTC/USDT:USDT",
                    "notional_usd": 970,
                    "expected_edge_bps": 25,
                    "expected_pnl_usd": 2.4,
                    "legs": [
                        {"exchange": buy, "side": "buy", "quantity": "0.01"},
                        {"exchange": sell, "side": "sell", "quantity": "0.01"},
                    ],
                }
            )
        )
    return lines


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_cpu_s() -> float:
    """CPU time of every live postgres process (server, backends, helpers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_s(int(entry.name))
            except OSError:
                continue
    return total


def completed(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT jobs_completed FROM daily_counters WHERE scope = 'global'")
            ).scalar()
            or 0
        )


class Perpbot:
    def __init__(self, admin_url: Any, env: dict[str, str], workers: int) -> None:
        self.url = admin_url.set(database="bench_perpbot")
        admin = engine_for(admin_url)
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("DROP DATABASE IF EXISTS bench_perpbot WITH (FORCE)"))
            conn.execute(text("CREATE DATABASE bench_perpbot"))
        admin.dispose()
        url = self.url.render_as_string(hide_password=False)
        self.env = {**env, **ENV, "PERPBOT_DATABASE_URL": url}
        self.settings = load_settings(database_url=url)
        self.engine = engine_for(self.url)
        migrate.ensure_schema(self.engine, self.settings)
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 1e12"))
        self.workers = workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.submitted = 0

    def submit(self, n: int) -> float:
        t = time.perf_counter()
        lines = job_lines(n, self.submitted)
        result = submit_lines(self.engine, lines, self.settings, datetime.now(UTC))
        assert result.written and not result.problems, result.problems[:3]
        self.submitted += n
        return time.perf_counter() - t

    def start(self) -> list[int]:
        spawn = [[PERPBOT, "scheduler"]] + [[PERPBOT, "worker"]] * self.workers
        for cmd in spawn:
            self.procs.append(
                subprocess.Popen(
                    cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        return [p.pid for p in self.procs[1:]]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(60)

    def close(self) -> None:
        self.engine.dispose()


def run_perpbot(admin_url: Any, env: dict[str, str], jobs: int, workers: int) -> dict[str, Any]:
    bot = Perpbot(admin_url, env, workers)
    fresh_market(bot.engine)
    enqueue_s = bot.submit(jobs)
    log(f"perpbot: {jobs:,} jobs submitted in {enqueue_s:.1f} s")
    fresh_market(bot.engine)
    pg0 = postgres_cpu_s()
    t0 = time.perf_counter()
    pids = bot.start()
    peak = dict.fromkeys(pids, 0.0)
    first = None
    last_print = t0
    while True:
        done = completed(bot.engine)
        now = time.perf_counter()
        if first is None and done:
            first = now - t0
        for pid in pids:
            peak[pid] = max(peak[pid], rss_mb(pid))
        if done >= jobs:
            break
        if now - last_print > 2:
            fresh_market(bot.engine)
            log(f"perpbot: {done:,}/{jobs:,} completed, {done / (now - t0):,.0f} jobs/s")
            last_print = now
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    cpu = {
        "scheduler_cpu_s": round(cpu_s(bot.procs[0].pid), 2),
        "worker_cpu_s": [round(cpu_s(pid), 2) for pid in pids],
        "postgres_cpu_s": round(postgres_cpu_s() - pg0, 2),
    }
    bot.stop()
    bot.close()
    result = {
        "peer": "perpbot",
        "what": "full hedge-job lifecycle, 2 legs, paper exchange",
        "jobs": jobs,
        "workers": workers,
        "enqueue_s": round(enqueue_s, 2),
        "startup_s": round(first or 0.0, 2),
        "seconds": round(seconds, 2),
        "jobs_per_s": round(jobs / seconds, 1),
        "worker_rss_mb": [round(v, 1) for v in peak.values()],
        **cpu,
    }
    log(f"perpbot: {result['jobs_per_s']:,} jobs/s, worker RSS {result['worker_rss_mb']} MB, {cpu}")
    return result


def run_decay(
    admin_url: Any, env: dict[str, str], minutes: float, workers: int, warmup_s: float
) -> dict[str, Any]:
    """Keep a backlog for ``warmup_s`` + ``minutes``; completions per minute and worker RSS.

    The warm-up is reported but not part of the decay: until the first jobs are
    ``archive_after_s`` old (60 s by default) the archive has nothing to move, so
    a fresh daemon's first minute does less work than every minute after it.
    """
    bot = Perpbot(admin_url, env, workers)
    fresh_market(bot.engine)
    bot.submit(20_000)
    stop = threading.Event()

    def top_up() -> None:  # keep ~10,000 pending so workers never starve
        while not stop.wait(2.0):
            fresh_market(bot.engine)
            with bot.engine.connect() as conn:
                pending = conn.execute(
                    text("SELECT count(*) FROM hedge_jobs WHERE status = 'pending'")
                ).scalar_one()
            if pending < 10_000:
                bot.submit(10_000)

    feeder = threading.Thread(target=top_up, daemon=True)
    feeder.start()
    pids = bot.start()
    time.sleep(warmup_s)
    warmed = completed(bot.engine)
    log(f"decay: warm-up {warmup_s:.0f} s: {warmed / warmup_s:,.0f} jobs/s (not counted)")
    t0 = time.perf_counter()
    per_minute: list[int] = []
    rss: list[list[float]] = []
    before = warmed
    for minute in range(int(minutes)):
        time.sleep(max(0.0, t0 + 60 * (minute + 1) - time.perf_counter()))
        done = completed(bot.engine)
        per_minute.append(done - before)
        before = done
        rss.append([round(rss_mb(pid), 1) for pid in pids])
        log(f"decay: minute {minute + 1}: {per_minute[-1] / 60:,.0f} jobs/s, RSS {rss[-1]} MB")
    stop.set()
    bot.stop()
    bot.close()
    first, last = per_minute[0], per_minute[-1]
    return {
        "warmup_s": warmup_s,
        "warmup_jobs_per_s": round(warmed / warmup_s, 1),
        "minutes": len(per_minute),
        "jobs_per_s_by_minute": [round(n / 60, 1) for n in per_minute],
        "worker_rss_mb_by_minute": rss,
        "decay_pct": round(100 * (first - last) / first, 1) if first else None,
        "worst_minute_below_first_pct": round(100 * (first - min(per_minute)) / first, 1)
        if first
        else None,
        "median_jobs_per_s": round(statistics.median(per_minute) / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decay-minutes", type=float, default=0)
    parser.add_argument(
        "--decay-warmup", type=float, default=90, help="seconds before the decay clock starts"
    )
    parser.add_argument("--skip-peers", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-compare-"))
    (home / "perpbot.toml").write_text(CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    server = embedded.start(embedded.Cluster(home / "pg"), owned=True)
    results: list[dict[str, Any]] = []
    decay = None
    try:
        results.append(run_perpbot(server.url, env, args.jobs, args.workers))
        if not args.skip_peers:
            import peers

            conninfo = server.url.set(drivername="postgresql").render_as_string(hide_password=False)
            results.append(peers.run_procrastinate(conninfo, args.jobs, args.workers))
            results.append(peers.run_pgqueuer(conninfo, args.jobs, args.workers))
        if args.decay_minutes:
            decay = run_decay(server.url, env, args.decay_minutes, args.workers, args.decay_warmup)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    ours = results[0]["jobs_per_s"]
    fastest_peer = max((r["jobs_per_s"] for r in results[1:]), default=None)
    print(f"\n{'contender':<15}{'jobs':>9}{'jobs/s':>10}{'vs perpbot':>12}  worker RSS MB")
    for r in results:
        ratio = ours / r["jobs_per_s"] if r["jobs_per_s"] else float("nan")
        print(
            f"{r['peer']:<15}{r['jobs']:>9,}{r['jobs_per_s']:>10,.0f}{ratio:>11.2f}x  "
            f"{', '.join(str(v) for v in r['worker_rss_mb'])}"
        )
    if fastest_peer:
        print(f"perpbot / fastest peer: {ours / fastest_peer:.2f}")
    if decay:
        print(f"decay over {decay['minutes']} min: {decay['decay_pct']} % {decay}")
    report = {
        "benchmark": "perpbot full lifecycle vs peer no-op jobs, same PostgreSQL, one run",
        "machine": f"{os.cpu_count()} cores, embedded PostgreSQL 18",
        "workers": args.workers,
        "results": results,
        "perpbot_over_fastest_peer": round(ours / fastest_peer, 2) if fastest_peer else None,
        "decay": decay,
    }
    out = HERE / "results" / "compare.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
