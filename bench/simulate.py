"""Benchmark ``perpbot simulate``: virtual steps per second, where the time goes, and
the PostgreSQL round trips a step costs; the plain loop and the fast one side by side.

    python bench/simulate.py                      # 20 symbols x 4 exchanges, 0.1 h
    python bench/simulate.py --hours 0.25 --symbols 20

The issue's target: 24 h over 20 symbols x 4 exchanges at one snapshot a second
(86,400 steps of 80 snapshots) in under 5 minutes, i.e. 288 steps/s.  This runs
a shorter stretch of the same input (one mode, the paper market and the job
source, on a fresh embedded PostgreSQL 18 with durability off, like the tests)
twice on one server: the plain loop (``SimOptions.reference``: the clock and the
market written every step, the tick reading the market back) and the loop as
``perpbot simulate`` runs it; both must give the same ledger.  It extrapolates
linearly: the per-step work does not grow with time (jobs end in the step they
start; pending jobs expire within their deadline).  Round trips are the
statements sent plus the transactions' BEGIN and COMMIT.  Results go to
bench/results/simulate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import Engine

from perpbot_db.cli.simulate import run_simulation
from perpbot_db.runtime import embedded
from perpbot_db.services.simulate import SimOptions
from perpbot_db.settings import Settings, StrategiesSettings, load_settings

HERE = Path(__file__).resolve().parent
EXCHANGES = ("binance", "okx", "bybit", "gate")
CONFIG = "\n".join(f"[exchanges.{name}]\nequity_usd = 1000000\n" for name in EXCHANGES)
TARGET_STEPS_PER_S = 86_400 / 300


class RoundTrips:
    """Counts what every engine sends: statements, and the BEGIN and COMMIT of each
    transaction (a round trip each with psycopg)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(Engine, "begin", self._begin)
        event.listen(Engine, "commit", self._commit)

    def _statement(self, *_: Any) -> None:
        self.counts["statements"] += 1

    def _begin(self, _: Connection) -> None:
        self.counts["transactions"] += 1

    def _commit(self, _: Connection) -> None:
        self.counts["commits"] += 1

    def total(self) -> int:
        return sum(self.counts.values())


def one(settings: Settings, server: Any, options: SimOptions, trips: RoundTrips) -> dict[str, Any]:
    before = trips.total()
    started = time.perf_counter()
    cpu = time.process_time()
    report = run_simulation(settings, server.url, options, timer=time.perf_counter)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    loop_s = sum(report.phase_s.values())
    rate = report.steps / loop_s
    return {
        "loop": "plain (reference)" if options.reference else "fast",
        "steps": report.steps,
        "wall_s_with_setup": round(wall, 2),
        "loop_s": round(loop_s, 2),
        "process_cpu_s": round(cpu, 2),
        "steps_per_s": round(rate, 1),
        "projected_24h_min": round(86_400 / options.step_s / rate / 60, 1),
        # setup and the final report included: a few hundred over the whole run
        "ticks_skipped": report.ticks_skipped,
        "round_trips_per_step": round((trips.total() - before) / report.steps, 2),
        "ms_per_step_by_phase": {
            k: round(v / report.steps * 1000, 3)
            for k, v in sorted(report.phase_s.items(), key=lambda kv: -kv[1])
        },
        "jobs": report.summary()["jobs"],
        "ledger_sha256": report.digest,
    }


def _only(settings: Settings, enabled: set[str]) -> StrategiesSettings:
    """The strategies settings with only ``enabled`` on."""
    names = ("funding_arb", "arb", "volume", "hedge_rebalance")
    unknown = enabled - set(names)
    if unknown:
        raise SystemExit(f"--strategies: unknown {sorted(unknown)}; known: {', '.join(names)}")
    s = settings.strategies
    return s.model_copy(
        update={n: getattr(s, n).model_copy(update={"enabled": n in enabled}) for n in names}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=0.1)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--mode", default="balanced")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--step-s", type=float, default=1.0, help="Virtual seconds a step.")
    parser.add_argument(
        "--strategies",
        default="funding_arb,arb,volume,hedge_rebalance",
        help="The enabled strategies, comma-separated (default: all, as perpbot run).",
    )
    args = parser.parse_args()
    enabled = set(args.strategies.split(",")) - {""}
    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-sim-"))
    config = home / "perpbot.toml"
    config.write_text(CONFIG)
    os.environ["PERPBOT_CONFIG"] = str(config)
    server = embedded.start(
        embedded.Cluster(home / "pg"),
        extra_options={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    trips = RoundTrips()
    try:
        settings = load_settings(database_url=server.url.render_as_string(hide_password=False))
        settings = settings.model_copy(update={"strategies": _only(settings, enabled)})
        options = SimOptions(
            hours=args.hours,
            mode=args.mode,
            seed=args.seed,
            symbols=args.symbols,
            step_s=args.step_s,
        )
        runs = [
            one(settings, server, SimOptions(**{**vars(options), "reference": True}), trips),
            one(settings, server, options, trips),
        ]
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    plain, fast = runs
    result = {
        "mode": args.mode,
        "strategies": sorted(enabled),
        "symbols": args.symbols,
        "exchanges": len(EXCHANGES),
        "snapshots_per_step": args.symbols * len(EXCHANGES),
        "step_s": args.step_s,
        "target_steps_per_s": round(TARGET_STEPS_PER_S, 1),
        "speedup": round(fast["steps_per_s"] / plain["steps_per_s"], 2),
        "same_ledger": plain["ledger_sha256"] == fast["ledger_sha256"],
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    plain_run = len(enabled) == 4 and args.mode == "balanced" and args.step_s == 1
    suffix = "" if plain_run else f"-{args.mode}-{len(enabled)}-{args.step_s:g}s"
    out = HERE / "results" / f"simulate{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
