"""The cyclic garbage collector's cost in the admission tick.

    python bench/gc_tick.py --pending 100000 --rounds 5
    python bench/gc_tick.py --pending 100000 --rounds 5 --threshold 50000

One fresh database holds N scored, due pending jobs (bench/tick.py's fill);
ticks that admit 1,000 each alternate between the collector running and the
collector paused around the tick (what the tick did until the protections
rework: ``gc.disable()`` for its span), and the process CPU of each tick is
measured.  ``--threshold`` sets the young-generation threshold first, as
:func:`perpbot_db.runtime.scheduler.tune_collector` does in a scheduler process.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tick as bench  # bench/tick.py: its fill and config

from perpbot_db.runtime import embedded, migrate
from perpbot_db.runtime.db import engine_for
from perpbot_db.services import tick
from perpbot_db.settings import load_settings


def one_tick(engine: Engine, config: tick.TickConfig, *, paused: bool) -> tuple[float, int]:
    """CPU ms of one tick and the collections it ran."""
    bench.fresh_market(engine)
    with engine.begin() as conn:
        for sql in bench.FINISH_ADMITTED:
            conn.execute(text(sql))
    before = sum(s["collections"] for s in gc.get_stats())
    cpu0 = time.process_time()
    if paused:
        gc.disable()
    try:
        report = tick.run_tick(engine, config)
    finally:
        gc.enable()
    cpu = time.process_time() - cpu0
    assert len(report.admitted) == 1000, report.summary()
    return cpu * 1000, sum(s["collections"] for s in gc.get_stats()) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threshold", type=int, default=None)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-gc-"))
    (home / "perpbot.toml").write_text(bench.CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    server = embedded.start(embedded.Cluster(home / "pg"))
    try:
        admin = engine_for(server.url.set(database="postgres")).execution_options(
            isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text('CREATE DATABASE "bench_gc"'))
        engine = engine_for(server.url.set(database="bench_gc"))
        migrate.ensure_schema(engine, load_settings())
        total = args.pending + 1000 * (2 * args.rounds + 2)
        with engine.begin() as conn:
            conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 1e9"))
            for start in range(0, total, 200_000):
                n = min(200_000, total - start)
                conn.execute(text(bench.FILL_SQL), {"n": n, "run": start})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        if args.threshold is not None:
            _, gen1, gen2 = gc.get_threshold()
            gc.set_threshold(args.threshold, gen1, gen2)
        config = tick.TickConfig(max_concurrent_jobs=1000, candidates=2000, rescore_batch=1000)
        one_tick(engine, config, paused=False)  # warm-up
        cpu: dict[bool, list[float]] = {False: [], True: []}
        runs: dict[bool, int] = {False: 0, True: 0}
        for i in range(args.rounds):
            for paused in (False, True) if i % 2 == 0 else (True, False):
                ms, collections = one_tick(engine, config, paused=paused)
                cpu[paused].append(ms)
                runs[paused] += collections
        print(f"gc thresholds {gc.get_threshold()}, {args.pending:,} pending")
        for paused, label in ((False, "collector running"), (True, "collector paused ")):
            values = cpu[paused]
            print(
                f"  {label}: tick CPU median {statistics.median(values):.1f} ms "
                f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)}), "
                f"{runs[paused]} collections"
            )
        engine.dispose()
        admin.dispose()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
