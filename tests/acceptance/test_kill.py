"""The kill test: 3 workers and 2 schedulers run 5,000 jobs against a paper exchange that
rejects, times out and partially fills, while random workers are killed with SIGKILL.

When everything is drained, every invariant of DESIGN.md holds (``perpbot audit``),
and the test states the main ones again in plain SQL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.services import audit
from tests.builders import HANG_S, PERPBOT, Cli, MarketFeed, wait_for

JOBS = 5000
KILLS = 8

KILL_TOML = """
[exchanges.binance]
equity_usd = 10000000
max_concurrent_jobs = 400
[exchanges.okx]
equity_usd = 10000000
max_concurrent_jobs = 400
[exchanges.bybit]
equity_usd = 10000000
max_concurrent_jobs = 400
"""

ENV = {
    "PERPBOT_TICK_INTERVAL_S": "0.2",
    "PERPBOT_MAX_CONCURRENT_JOBS": "600",
    "PERPBOT_LEASE_S": "2",
    "PERPBOT_SHUTDOWN_GRACE_S": str(HANG_S),  # a loaded machine may take long to stop
    "PERPBOT_MAX_PENDING_S": "86400",  # nothing expires however long the drain takes
    "PERPBOT_RECOVERY_INTERVAL_S": "0.5",
    "PERPBOT_RETRY_BACKOFF_S": "0.2",
    "PERPBOT_ARCHIVE_AFTER_S": "1",  # finished jobs move to the archive while the rest runs
    "PERPBOT_SAFE_MODE_FAILURES": "1000",
    "PERPBOT_WORKER_CONCURRENCY": "20",
    "PERPBOT_PAPER__LATENCY_MS": "30",
    "PERPBOT_PAPER__REJECT_RATE": "0.03",
    "PERPBOT_PAPER__TIMEOUT_RATE": "0.03",
    "PERPBOT_PAPER__PARTIAL_FILL_RATE": "0.05",
    "PERPBOT_PAPER__FAIL_REDUCE_ONLY": "false",
}


def job_line(i: int) -> str:
    # One-way accounts: binance and bybit always buy, okx always sells, so a reduce-only
    # unwind of any job's fill always reduces its account's position.
    buy = "binance" if i % 2 else "bybit"
    qty = ("0.01", "0.02", "0.005")[i % 3]
    return (
        f'{{"strategy": "arb", "symbol": "BTC/USDT:USDT", "notional_usd": {float(qty) * 97000},'
        f' "expected_edge_bps": 25, "expected_pnl_usd": 2.4, "idempotency_key": "k-{i}",'
        f' "legs": [{{"exchange": "{buy}", "side": "buy", "quantity": "{qty}"}},'
        f' {{"exchange": "okx", "side": "sell", "quantity": "{qty}"}}]}}\n'
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def scalar(engine: Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def unfinished(engine: Engine) -> int:
    return int(
        scalar(
            engine,
            "SELECT count(*) FROM hedge_jobs WHERE status IN ('pending', 'admitted', 'running')",
        )
    )


def notable(log: str) -> str:
    """The lines of a daemon's log worth reading after a failure (no tick summaries)."""
    lines = [
        line
        for line in log.splitlines()
        if not any(noise in line for noise in ("apscheduler", " tick {", "perpbot.archive"))
    ]
    return "\n".join(lines[-80:])


def finished(engine: Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM hedge_jobs_all WHERE finished_at IS NOT NULL"))


def _maybe_kill(engine: Engine, kills: list[int], rng: random.Random) -> bool:
    """Kill a worker that holds running jobs when the drain has reached the next step.

    Always False: :func:`wait_for` keeps polling until nothing is left unfinished."""
    due = len(kills) < KILLS and finished(engine) >= (len(kills) + 1) * JOBS // (KILLS + 2)
    if not due:
        return False
    with engine.connect() as conn:
        pids = list(
            conn.execute(
                text(
                    "SELECT DISTINCT w.pid FROM workers w JOIN hedge_jobs j "
                    "ON j.worker_id = w.id AND j.status = 'running' "
                    "WHERE w.stopped_at IS NULL"
                )
            ).scalars()
        )
    alive = [pid for pid in pids if pid not in kills]
    if alive:  # kill a worker that holds running jobs: the interesting case
        victim = rng.choice(alive)
        os.kill(victim, signal.SIGKILL)
        kills.append(victim)
    return False


@pytest.mark.timeout(HANG_S * 8)
def test_kill_random_workers_then_every_invariant_holds(
    engine: Engine,
    cli: Cli,
    cli_env: dict[str, str],
    tmp_path: Path,
    procs: list[Any],
    market_feed: MarketFeed,  # market data stays fresh (10 s staleness) all along
) -> None:
    config = tmp_path / "kill.toml"
    config.write_text(KILL_TOML)
    env = {**cli_env, **ENV, "PERPBOT_CONFIG": str(config)}
    assert cli("db", "upgrade", env={"PERPBOT_CONFIG": str(config)}).returncode == 0
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE system_state SET daily_loss_limit_usd = 1e9, "
                "max_consecutive_failures = 1000"
            )
        )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(job_line(i) for i in range(JOBS)))
    submitted = cli("submit", str(jobs), env={**ENV, "PERPBOT_CONFIG": str(config)})
    assert submitted.returncode == 0, submitted.stderr

    def spawn(*args: str) -> subprocess.Popen[str]:
        # a file, not a pipe: nobody reads the logs while it runs, a full pipe would block
        log = (tmp_path / f"{args[0]}.log").open("w")
        proc = subprocess.Popen([PERPBOT, *args], env=env, stdout=log, stderr=log, text=True)
        procs.append(proc)
        return proc

    daemon = spawn("run", "--workers", "3", "--no-strategies")
    standby = spawn("scheduler")
    rng = random.Random(4)
    kills: list[int] = []
    # Kills are paced by progress, not by the clock: kill k once k/(KILLS+2) of the jobs
    # have finished, so they spread over the run on a fast machine as on a slow one.
    assert wait_for(lambda: not unfinished(engine) or _maybe_kill(engine, kills, rng), HANG_S * 5)

    left = unfinished(engine)
    daemon.send_signal(signal.SIGTERM)
    standby.send_signal(signal.SIGTERM)
    assert daemon.wait(HANG_S) == 0, notable((tmp_path / "run.log").read_text())
    assert standby.wait(HANG_S) == 0
    assert left == 0, f"{left} jobs not drained"
    assert len(kills) >= KILLS // 2, f"only {len(kills)} workers killed before the drain"

    with engine.connect() as conn:
        breaches = audit.run_audit(conn, max_concurrent_jobs=600)
        statuses = dict(
            conn.execute(text("SELECT status, count(*) FROM hedge_jobs_all GROUP BY 1")).all()
        )
        recovered = scalar(
            engine, "SELECT count(*) FROM control_events WHERE action = 'lease_recovered'"
        )
        active = scalar(engine, "SELECT count(*) FROM capital_reservations WHERE status = 'active'")
        twice = scalar(
            engine,
            "SELECT count(*) FROM (SELECT exchange, client_order_id FROM paper_orders "
            "GROUP BY 1, 2 HAVING count(*) > 1) d",
        )
        not_flat = scalar(
            engine,
            "SELECT count(*) FROM hedge_jobs_all j WHERE j.finished_at IS NOT NULL "
            "AND NOT j.unhedged AND (SELECT coalesce(sum(CASE side WHEN 'buy' "
            "THEN filled_quantity ELSE -filled_quantity END), 0) FROM legs_all "
            "WHERE job_id = j.id) <> 0",
        )
        archived = scalar(engine, "SELECT count(*) FROM hedge_jobs_archive")
    assert breaches == [], "\n".join(map(str, breaches[:20]))
    assert sum(statuses.values()) == JOBS and statuses.get("completed", 0) > JOBS * 0.8
    assert recovered >= 1  # killed workers' jobs were taken over by recovery
    assert archived > 0  # the archive ran alongside and the audit above still holds
    assert active == 0 and twice == 0 and not_flat == 0
