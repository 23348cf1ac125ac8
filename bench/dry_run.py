"""Benchmark :meth:`perpbot_db.services.tick.QuietBasis.dry_run` alone: what the
simulation's fast loop asks on almost every step (would this step's tick only hold?).

    python bench/dry_run.py                       # 20 symbols x 4 exchanges, 0.25 h
    python bench/dry_run.py --hours 0.1 --repeat 5 --profile

It runs ``perpbot simulate``'s fast loop once (the paper market, every strategy, on a
fresh embedded PostgreSQL 18 with durability off, like the tests) and records every
``dry_run`` call the loop makes (its basis, snapshots, time, locks in place and pending
jobs), then replays the recorded calls ``--repeat`` times in this process, with nothing
else running: microseconds per call.  ``answers_sha256`` digests what the calls
answered (the jobs to expire, the held decisions and counts, or None) and ``ledger_sha256`` the
simulation's ledger: a change that keeps the decisions keeps both (the run is seeded).
Results go to bench/results/dry_run.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from perpbot_db.cli.simulate import run_simulation
from perpbot_db.runtime import embedded
from perpbot_db.services import tick
from perpbot_db.services.simulate import SimOptions
from perpbot_db.settings import load_settings
from perpbot_db.store import market as store_market
from perpbot_db.store import pending

HERE = Path(__file__).resolve().parent
EXCHANGES = ("binance", "okx", "bybit", "gate")
CONFIG = "\n".join(f"[exchanges.{name}]\nequity_usd = 1000000\n" for name in EXCHANGES)

Call = tuple[
    tick.QuietBasis,
    Sequence[store_market.MarketSnapshot],
    datetime,
    dict[tuple[str, str, str], datetime],
    list[pending.PendingFacts],
]


def record(hours: float, symbols: int, mode: str, seed: int) -> tuple[list[Call], str]:
    """Every ``dry_run`` call of one fast simulation, and the simulation's ledger digest."""
    calls: list[Call] = []
    original = tick.QuietBasis.dry_run

    def recording(
        self: tick.QuietBasis,
        snapshots: Sequence[store_market.MarketSnapshot],
        now: datetime,
        in_place: Mapping[tuple[str, str, str], datetime],
        pending_jobs: Sequence[pending.PendingFacts],
    ) -> tick.HeldTick | None:
        # the loop updates its locks in place later: a copy
        calls.append((self, snapshots, now, dict(in_place), list(pending_jobs)))
        return original(self, snapshots, now, in_place, pending_jobs)

    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-dry-"))
    config = home / "perpbot.toml"
    config.write_text(CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(config)
    server = embedded.start(
        embedded.Cluster(home / "pg"),
        extra_options={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    tick.QuietBasis.dry_run = recording  # type: ignore[method-assign]
    try:
        settings = load_settings(database_url=server.url.render_as_string(hide_password=False))
        options = SimOptions(hours=hours, mode=mode, seed=seed, symbols=symbols)
        report = run_simulation(settings, server.url, options)
    finally:
        tick.QuietBasis.dry_run = original  # type: ignore[method-assign]
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return calls, report.digest


def replay(calls: list[Call]) -> tuple[float, list[tick.HeldTick | None]]:
    """The recorded calls once: seconds, and what each answered."""
    answers: list[tick.HeldTick | None] = []
    started = time.perf_counter()
    for basis, snapshots, now, in_place, jobs in calls:
        answers.append(basis.dry_run(snapshots, now, in_place, jobs))
    return time.perf_counter() - started, answers


def digest(answers: list[tick.HeldTick | None]) -> str:
    h = hashlib.sha256()
    for a in answers:
        if a is None:
            h.update(b"None\n")
            continue
        h.update(repr((a.expired, sorted(a.held.items()))).encode())
        for d in a.decisions:
            h.update(repr((d.id, d.score, d.code, d.context, d.at)).encode())
        h.update(b"\n")
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=0.25)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--mode", default="balanced")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one more replay")
    args = parser.parse_args()
    calls, ledger = record(args.hours, args.symbols, args.mode, args.seed)
    runs = []
    answers: list[tick.HeldTick | None] = []
    for _ in range(args.repeat):
        seconds, answers = replay(calls)
        runs.append(seconds / len(calls) * 1e6)
    held = sum(a is not None for a in answers)
    result: dict[str, Any] = {
        "mode": args.mode,
        "symbols": args.symbols,
        "snapshots_per_call": len(calls[0][1]),
        "calls": len(calls),
        "answered_held": held,
        "answered_run_the_tick": len(calls) - held,
        "us_per_call_best": round(min(runs), 1),
        "us_per_call_median": round(statistics.median(runs), 1),
        "answers_sha256": digest(answers),
        "ledger_sha256": ledger,
    }
    print(json.dumps(result, indent=2))
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        replay(calls)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    (HERE / "results" / "dry_run.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
