"""The producers' read of what to close, against the full read it replaced; the trigger's cost.

    python bench/open_pairs.py [--pairs 40000] [--rounds 7]

An embedded PostgreSQL starts in a temporary directory (removed at the end).  The
history is the one of ``tests/integration/test_producers_plan.py``: ``--pairs``
completed openings each with a completed close, half as many lost closes, half of it
archived, five openings still open.  Printed: the median wall time of
:func:`perpbot_db.store.producers.openings_to_close` and of the pre-0016 full read
(same rows), then what the ``open_pairs`` triggers add to completing jobs: 5,000
openings completed by one UPDATE each (each adds an ``open_pairs`` row), against
5,000 jobs without ``metadata.phase`` (the trigger's WHEN is false).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere in the checkout
sys.path.insert(0, str(HERE))
import tick as bench  # noqa: E402  (bench/tick.py: its configuration)

from perpbot_db.runtime import embedded, migrate  # noqa: E402
from perpbot_db.runtime.db import engine_for  # noqa: E402
from perpbot_db.settings import load_settings  # noqa: E402
from perpbot_db.store import producers  # noqa: E402
from tests.integration import test_producers_plan as plan  # noqa: E402

COMPLETIONS = 5000


def fill(engine: Engine, pairs: int) -> None:
    with engine.begin() as conn:
        conn.execute(text(plan._OPENINGS), {"n": pairs, "tag": "H"})
        for status, suffix, n in (("failed", ":close", pairs // 2), ("completed", ":ok", pairs)):
            conn.execute(
                text(plan._CLOSES),
                {"status": status, "suffix": suffix, "like": "%:H%", "n": n},
            )
        half = pairs
        conn.execute(
            text("INSERT INTO hedge_jobs_archive SELECT * FROM hedge_jobs WHERE id <= :h"),
            {"h": half},
        )
        conn.execute(
            text("INSERT INTO legs_archive SELECT * FROM legs WHERE job_id <= :h"), {"h": half}
        )
        conn.execute(text("DELETE FROM legs WHERE job_id <= :h"), {"h": half})
        conn.execute(text("DELETE FROM hedge_jobs WHERE id <= :h"), {"h": half})
        conn.execute(text(plan._OPENINGS), {"n": 5, "tag": "X"})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def reads(engine: Engine, rounds: int) -> None:
    with engine.connect() as conn:
        for label, run in (
            ("openings_to_close (open_pairs)", lambda: producers.openings_to_close(conn)),
            ("full read (before 0016)     ", lambda: conn.execute(text(plan.FULL_READ)).all()),
        ):
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                rows = run()
                times.append((time.perf_counter() - t0) * 1000)
            print(f"  {label}: median {statistics.median(times):8.2f} ms, {len(rows)} rows")


def completions(engine: Engine) -> None:
    for label, metadata in (
        ("openings (trigger adds a row)", '{"phase": "open"}'),
        ("jobs without phase (no trigger)", '{"source": "cli"}'),
    ):
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    text(
                        "INSERT INTO hedge_jobs (strategy, symbol, notional_usd, "
                        "expected_volume_usd, status, deadline, idempotency_key, metadata) "
                        "SELECT 'funding_arb', 'BTC/USDT:USDT', 100, 200, 'pending', "
                        "now() + interval '1 h', :tag || g, CAST(:m AS jsonb) "
                        "FROM generate_series(1, :n) g RETURNING id"
                    ),
                    {"n": COMPLETIONS, "m": metadata, "tag": f"c{len(label)}:"},
                ).scalars()
            )
        done = text("UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE id = :j")
        t0 = time.perf_counter()
        with engine.begin() as conn:
            for job_id in ids:
                conn.execute(done, {"j": job_id})
        ms = (time.perf_counter() - t0) * 1000
        print(f"  complete {COMPLETIONS} {label}: {ms / COMPLETIONS * 1000:7.1f} us each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-open-pairs-"))
    (home / "perpbot.toml").write_text(bench.CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(home / "perpbot.toml")
    server = embedded.start(embedded.Cluster(home / "pg"))
    try:
        admin = engine_for(server.url.set(database="postgres")).execution_options(
            isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text('CREATE DATABASE "bench_open_pairs"'))
        engine = engine_for(server.url.set(database="bench_open_pairs"))
        migrate.ensure_schema(engine, load_settings())
        fill(engine, args.pairs)
        with engine.connect() as conn:
            finished = conn.execute(
                text("SELECT count(*) FROM hedge_jobs_all WHERE finished_at IS NOT NULL")
            ).scalar_one()
        print(f"{finished:,} finished jobs, 5 openings open")
        reads(engine, args.rounds)
        completions(engine)
        engine.dispose()
        admin.dispose()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
