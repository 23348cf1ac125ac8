"""``perpbot run`` with the paper feed and the producers: strategies' jobs complete.

The whole loop in real processes: the feed writes snapshots, the producers submit,
the scheduler admits, workers trade on the paper exchange.  A quarter of the paper
orders are rejected (unwinds included), so some job ends unhedged, and the
rebalancer must close what it left.  Protections that would stop the run on those
failures are set out of the way: the failures are the point here.
"""

from __future__ import annotations

import signal

from sqlalchemy import Engine, text

from tests.builders import HANG_S, Cli, Spawn, wait_for


def completed_by_strategy(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT strategy, count(*) FROM hedge_jobs_all "
                "WHERE status = 'completed' GROUP BY 1"
            )
        ).all()
    return {str(s): int(n) for s, n in rows}


def test_run_with_the_feed_completes_volume_and_rebalances_an_unhedged_job(
    cli: Cli, spawn: Spawn, engine: Engine
) -> None:
    assert cli("db", "upgrade").returncode == 0
    # volume pays two taker fees: balanced mode holds it (its net-cost limit), this admits it
    assert cli("risk-mode", "volume_focused", "--reason", "volume test").returncode == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE system_state SET max_consecutive_failures = 1000"))
    proc = spawn(
        "run",
        "--workers",
        "2",
        PERPBOT_PAPER__REJECT_RATE="0.25",
        PERPBOT_PAPER__LATENCY_MS="5",
        PERPBOT_SAFE_MODE_FAILURES="1000",
        PERPBOT_UNHEDGED_EXPOSURE_LIMIT_USD="1000000",
        PERPBOT_FEED__KIND="paper",  # the tests' settings start no feed
        PERPBOT_FEED__INTERVAL_S="0.5",
        PERPBOT_STRATEGIES__VOLUME__WINDOW_S="1",
    )
    done = wait_for(
        lambda: {"volume", "hedge_rebalance"} <= set(completed_by_strategy(engine)), HANG_S
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_S)
    assert done, (completed_by_strategy(engine), stderr[-3000:])
    assert proc.returncode == 0, stderr[-3000:]
    assert "producers running every 1 s" in stderr or "producers running every 1.0 s" in stderr
    audit = cli("audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr
