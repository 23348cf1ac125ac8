"""Benchmark the paper market input: ``PaperSource.poll`` per step, as the simulation calls it.

    python bench/market.py                       # 20 symbols x 4 exchanges, 20,000 polls
    python bench/market.py --label before        # stored under that label

``perpbot simulate`` polls the paper market once a virtual second (its "market
input" phase): one ``PaperMarket.step`` (the model, 80 quotes at 20 x 4) and 80
``MarketSnapshot``\\ s.  The issue's budget for a whole step is 3.5 ms (24 h in
5 minutes); this phase's target is 0.35 ms.  Each poll is timed on its own, after
a warm-up, with the garbage collector on as in the simulation: wall time
(``perf_counter``) and the thread's CPU time (``thread_time``; on a shared, loaded
machine the wall time is noisy, the CPU time much less).  "step only" times
``PaperMarket.step`` on a second market of the same seed, so the difference is
the conversion to snapshots.  ``digest`` is the sha256 of every polled
snapshot's ``repr``: two runs with the same arguments must print the same one,
whatever the code's speed (the market is pinned, see
tests/pure/test_paper_market_golden.py).  Results go to bench/results/market.json,
one entry per ``--label``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from perpbot_db.domain.paper_market import default_symbols
from perpbot_db.services.feeds import paper_source
from perpbot_db.settings import FeedSettings

HERE = Path(__file__).resolve().parent
EXCHANGES = ("binance", "okx", "bybit", "gate")
START = datetime(2026, 12, 2, tzinfo=UTC)
TARGET_MS = 0.35
WARMUP = 200


def timed(call: Callable[[datetime], object], polls: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each of ``polls`` calls, one virtual second apart (after a
    warm-up): wall time, and this thread's CPU time (what a loaded machine's other
    processes do not add to)."""
    for i in range(WARMUP):
        call(START + timedelta(seconds=i))
    wall, cpu = [], []
    clock, cpu_clock = time.perf_counter, time.thread_time
    for i in range(WARMUP, WARMUP + polls):
        now = START + timedelta(seconds=i)
        c0 = cpu_clock()
        t0 = clock()
        call(now)
        t1 = clock()
        c1 = cpu_clock()
        wall.append((t1 - t0) * 1000)
        cpu.append((c1 - c0) * 1000)
    return wall, cpu


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "median_ms": round(statistics.median(ordered), 4),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)], 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "min_ms": round(ordered[0], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=20_000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--label", default="latest")
    args = parser.parse_args()
    symbols = default_symbols(args.symbols)
    params = FeedSettings().market_params()

    source = paper_source(EXCHANGES, symbols, seed=args.seed, params=params)
    poll_ms, poll_cpu_ms = timed(source.poll, args.polls)
    market = paper_source(EXCHANGES, symbols, seed=args.seed, params=params).market
    step_ms, step_cpu_ms = timed(market.step, args.polls)

    check = paper_source(EXCHANGES, symbols, seed=args.seed, params=params)
    digest = hashlib.sha256()
    for i in range(WARMUP + args.polls):
        for snap in check.poll(START + timedelta(seconds=i)):
            digest.update(repr(snap).encode())

    result: dict[str, Any] = {
        "symbols": args.symbols,
        "exchanges": len(EXCHANGES),
        "snapshots_per_poll": args.symbols * len(EXCHANGES),
        "polls": args.polls,
        "seed": args.seed,
        "python": platform.python_version(),
        "target_median_ms": TARGET_MS,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "poll": summary(poll_ms),
        "poll_cpu": summary(poll_cpu_ms),
        "step_only": summary(step_ms),
        "step_only_cpu": summary(step_cpu_ms),
        "digest": digest.hexdigest(),
    }
    print(json.dumps({args.label: result}, indent=2))
    out = HERE / "results" / "market.json"
    stored = json.loads(out.read_text()) if out.exists() else {}
    stored[args.label] = result
    out.write_text(json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    main()
