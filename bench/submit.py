"""Benchmark: ``perpbot submit`` of N two-leg jobs on the embedded PostgreSQL.

    python bench/submit.py                # 100,000 jobs, 3 runs
    python bench/submit.py --jobs 20000 --runs 1

Starts a fresh embedded server (default, durable settings: what a newcomer
gets) under a temporary PERPBOT_HOME, writes the JSON-lines files with
bench/gen_jobs.py, times the real console script end to end (process start
to exit, including connecting and migrating checks) and reads its peak RSS.
Prints a table and writes bench/results/submit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PERPBOT = str(Path(sys.executable).parent / "perpbot")
CONFIG = """
[exchanges.binance]
equity_usd = 50000
[exchanges.okx]
equity_usd = 40000
[exchanges.bybit]
equity_usd = 30000
"""


def run(cmd: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload, no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    (home / "perpbot.toml").write_text(CONFIG)
    env.update(PERPBOT_HOME=str(home / "home"), PERPBOT_CONFIG=str(home / "perpbot.toml"))
    results = []
    try:
        run([PERPBOT, "db", "start"], env)
        for i in range(args.runs):
            path = home / f"jobs-{i}.jsonl"
            with path.open("w") as fh:
                subprocess.run(
                    [sys.executable, str(HERE / "gen_jobs.py"), str(args.jobs), str(i), f"run{i}"],
                    stdout=fh,
                    check=True,
                )
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.perf_counter()
            done = run([PERPBOT, "submit", str(path), "--json"], env)
            elapsed = time.perf_counter() - start
            peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            summary = json.loads(done.stdout)
            assert summary["inserted"] == args.jobs, summary
            results.append(
                {
                    "run": i + 1,
                    "jobs": args.jobs,
                    "seconds": round(elapsed, 3),
                    "jobs_per_s": round(args.jobs / elapsed),
                    "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
                    "file_mb": round(path.stat().st_size / 1e6, 1),
                }
            )
            print(
                f"run {i + 1}: {args.jobs} jobs in {elapsed:.2f} s = "
                f"{args.jobs / elapsed:,.0f} jobs/s, peak RSS {results[-1]['peak_rss_mb']} MB",
                flush=True,
            )
            path.unlink()
    finally:
        subprocess.run([PERPBOT, "db", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)

    rates = [r["jobs_per_s"] for r in results]
    report = {
        "benchmark": "perpbot submit, two-leg jobs, embedded PostgreSQL 18 (default settings)",
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "median_jobs_per_s": statistics.median(rates),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "runs": results,
    }
    out = HERE / "results" / "submit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
