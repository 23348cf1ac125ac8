"""Benchmark how fast the ``perpbot`` command answers: process CPU and wall time.

    python bench/cli.py                              # this checkout, 10 runs a command
    python bench/cli.py --before /tmp/cli-before     # and another checkout, interleaved

Runs ``perpbot --help``, ``perpbot status``, ``perpbot jobs`` and ``perpbot job 1``
N times each (after one warm-up run) against ``PERPBOT_DATABASE_URL`` or, when it
is unset, a fresh shared embedded PostgreSQL holding the sample jobs, market data
and one tick's decisions.  A command's CPU is the ``getrusage(RUSAGE_CHILDREN)``
delta around it: user + system seconds of the process (and of anything it waited
for), not wall time.  The figures are medians.

``--before DIR`` also runs the same commands with ``PYTHONPATH=DIR`` (e.g. ``git
worktree add /tmp/cli-before 3927313``), alternating with this checkout run by run
so both see the same machine load.  Results go to bench/results/cli.json.

The commands run with ``PYTHONDONTWRITEBYTECODE`` removed from their environment,
so the warm-up run writes the ``.pyc`` files of both checkouts, as on any installed
copy; with it set, every run would also compile each project module from source.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERPBOT = str(Path(sys.executable).parent / "perpbot")
COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "status": ["status"],
    "jobs": ["jobs"],
    "job 1": ["job", "1"],
}


def run(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit code) of one ``perpbot`` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [PERPBOT, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.returncode


def checked(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([PERPBOT, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"perpbot {' '.join(args)} failed: {done.stderr.strip()}")


def prepare(env: dict[str, str]) -> None:
    """Schema at head; on a fresh embedded database, sample jobs, market data and a tick."""
    checked(["db", "upgrade"], env)
    if "PERPBOT_DATABASE_URL" in env:
        return
    checked(["submit", str(ROOT / "examples" / "sample_jobs.jsonl")], env)
    checked(["market", "load", str(ROOT / "examples" / "sample_market.jsonl")], env)
    checked(["scheduler", "--once"], env)


def code_dir(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import perpbot_db; print(perpbot_db.__file__)"],
        env=env,
        cwd="/",  # not this checkout: `python -c` puts the working directory first
        capture_output=True,
        text=True,
        check=True,
    )
    return str(Path(done.stdout.strip()).parents[1])


def commit_of(directory: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", directory, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def bench(variants: dict[str, dict[str, str]], runs: int) -> dict[str, dict[str, object]]:
    samples: dict[str, dict[str, list[tuple[float, float, int]]]] = {
        name: {cmd: [] for cmd in COMMANDS} for name in variants
    }
    for env in variants.values():  # warm the page cache and the .pyc files
        for args in COMMANDS.values():
            run(args, env)
    for _ in range(runs):
        for cmd, args in COMMANDS.items():
            for name, env in variants.items():  # interleaved: the same load for each
                samples[name][cmd].append(run(args, env))
    out: dict[str, dict[str, object]] = {}
    for name, by_cmd in samples.items():
        out[name] = {}
        for cmd, rows in by_cmd.items():
            ok = [r for r in rows if r[2] == 0]
            out[name][cmd] = (
                {
                    "cpu_s_median": round(statistics.median(r[0] for r in ok), 3),
                    "cpu_s_min": round(min(r[0] for r in ok), 3),
                    "wall_s_median": round(statistics.median(r[1] for r in ok), 3),
                    "runs": len(ok),
                }
                if len(ok) == len(rows)
                else {"error": f"exit {sorted({r[2] for r in rows})}", "runs": len(rows)}
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", help="another checkout, run with PYTHONPATH=BEFORE")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cli.json"))
    opts = parser.parse_args()

    dropped = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")  # see the module's docstring
    base = {k: v for k, v in os.environ.items() if k not in dropped}
    base.setdefault("PERPBOT_CONFIG", str(ROOT / "perpbot.toml"))
    with tempfile.TemporaryDirectory(prefix="perpbot-bench-cli-") as home:
        embedded = "PERPBOT_DATABASE_URL" not in base
        if embedded:
            base["PERPBOT_HOME"] = home
            checked(["db", "start"], base)
        try:
            prepare(base)
            variants = {"this": base}
            if opts.before:
                variants["before"] = {**base, "PYTHONPATH": opts.before}
            load_before = os.getloadavg()
            results = bench(variants, opts.runs)
            load_after = os.getloadavg()
        finally:
            if embedded:
                subprocess.run([PERPBOT, "db", "stop"], env=base, capture_output=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "database": "embedded" if embedded else "PERPBOT_DATABASE_URL",
        "runs": opts.runs,
        "bytecode": "cached (.pyc written by the warm-up run)",
        "code": {name: commit_of(code_dir(env)) for name, env in variants.items()},
        "results": results,
    }
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'command':10} " + " ".join(f"{n + ' cpu s':>12} {n + ' wall s':>13}" for n in results))
    for cmd in COMMANDS:
        cells = []
        for name in results:
            r = results[name][cmd]
            if "error" in r:
                cells.append(f"{r['error']:>26}")
            else:
                cells.append(f"{r['cpu_s_median']:>12.3f} {r['wall_s_median']:>13.3f}")
        print(f"{cmd:10} " + " ".join(cells))
    print(f"load average (1 min) {report['loadavg_1m']}; written to {opts.out}")


if __name__ == "__main__":
    main()
