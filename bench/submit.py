"""Benchmark: ``perpbot submit`` of N two-leg jobs on the embedded PostgreSQL, and memory on
large invalid input.

    python bench/submit.py                # 100,000 jobs, 3 runs, then 100 MB of bad inputs
    python bench/submit.py --jobs 20000 --runs 1 --invalid-mb 10

Starts a fresh embedded server (default, durable settings: what a newcomer
gets) under a temporary PERPBOT_HOME, writes the JSON-lines files with
bench/gen_jobs.py, times the real console script end to end (process start
to exit, including connecting and migrating checks) and reads its own peak RSS
and CPU time (``wait4``'s rusage of that one process).  Then it feeds
``--invalid-mb`` MB of bad input to the real commands and reads their peak RSS
the same way: job lines that each fail validation (``perpbot submit``),
snapshot lines that each fail (``perpbot market load``), job lines with 200
problems each, and one single line of that size.
Prints a table and writes bench/results/submit.json (or ``--out``).

To measure other code with this same script (e.g. main's, before a change):
``PYTHONPATH=/path/to/checkout python bench/submit.py --out /tmp/before.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

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


def measured(
    cmd: list[str], env: dict[str, str], stdin_path: Path | None = None, timeout: float = 1800
) -> tuple[int, str, str, float, float, float]:
    """Run ``cmd``; (exit code, stdout, stderr, seconds, its own peak RSS in MB, its CPU s)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=out, stderr=err)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
        return (
            proc.returncode,
            _tail(out),
            _tail(err),
            elapsed,
            usage.ru_maxrss / 1024,
            usage.ru_utime + usage.ru_stime,
        )


def _tail(fh: IO[bytes], limit: int = 1 << 20) -> str:
    """The last ``limit`` bytes of an output: reading a huge one whole would grow this
    process, and a child forked afterwards starts with (and reports) that RSS."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(size - limit, 0))
    return fh.read().decode(errors="replace")


def write_bad_jobs(path: Path, size: int) -> None:
    """Job lines that parse as JSON and fail validation (negative notional): full work each."""
    base = {
        "strategy": "arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": -1,
        "legs": [
            {"exchange": "binance", "side": "buy", "quantity": 0.01},
            {"exchange": "okx", "side": "sell", "quantity": 0.01},
        ],
        "metadata": {"source": "bench-invalid"},
    }
    _write_lines(path, size, lambda i: json.dumps({**base, "idempotency_key": f"bad-{i}"}))


def write_many_problems(path: Path, size: int) -> None:
    """Job lines with 200 problems each (every leg is not an object): the report must not
    grow with them."""
    _write_lines(path, size, lambda i: json.dumps({"strategy": "arb", "legs": [i] * 200}))


def write_bad_snapshots(path: Path, size: int) -> None:
    base = {"exchange": "binance", "symbol": "BTC/USDT:USDT", "ask": 97001, "last": 97000}
    _write_lines(path, size, lambda i: json.dumps({**base, "bid": -i}))


def write_one_line(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        fh.write(b'{"metadata": "')
        written = 0
        while written < size:
            chunk = b"x" * min(1 << 20, size - written)
            fh.write(chunk)
            written += len(chunk)
        fh.write(b'"}\n')


def _write_lines(path: Path, size: int, line: Any) -> None:
    written = i = 0
    with path.open("w") as fh:
        while written < size:
            text = line(i) + "\n"
            fh.write(text)
            written += len(text)
            i += 1


INVALID_CASES: dict[str, tuple[str, list[str], Any]] = {
    "jobs": ("perpbot submit, bad job lines", ["submit", "-", "--json"], write_bad_jobs),
    "market": ("perpbot market load, bad snapshot lines", ["market", "load", "-", "--json"],
               write_bad_snapshots),
    "problems": ("perpbot submit, 200 problems a line", ["submit", "-", "--json"],
                 write_many_problems),
    "line": ("perpbot submit, one line", ["submit", "-", "--json"], write_one_line),
}  # fmt: skip


def invalid_inputs(
    home: Path, env: dict[str, str], mb: int, cases: list[str]
) -> list[dict[str, Any]]:
    size = mb * 1_000_000
    results = []
    for name, args, writer in (INVALID_CASES[case] for case in cases):
        path = home / "invalid.jsonl"
        writer(path, size)
        code, out, err, elapsed, rss, _ = measured([PERPBOT, *args], env, stdin_path=path)
        summary: dict[str, Any] = {}
        with contextlib.suppress(ValueError):  # a summary longer than the tail (main's)
            summary = json.loads(out.splitlines()[-1])
        results.append(
            {
                "input": name,
                "mb": round(path.stat().st_size / 1e6, 1),
                "exit_code": code,
                "seconds": round(elapsed, 1),
                "peak_rss_mb": round(rss, 1),
                "lines": summary.get("lines"),
                "problems_total": summary.get("problems_total", summary.get("invalid")),
                "problems_printed": len(summary.get("problems", [])) or None,
                "traceback": "Traceback" in err,
            }
        )
        print(
            f"{name}: {results[-1]['mb']} MB in {elapsed:.1f} s, exit {code}, "
            f"peak RSS {rss:.0f} MB",
            flush=True,
        )
        path.unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--invalid-mb", type=int, default=100, help="0 skips the invalid input")
    parser.add_argument(
        "--invalid-cases",
        nargs="+",
        choices=list(INVALID_CASES),
        default=list(INVALID_CASES),
        help="which invalid inputs (default: all)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "submit.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    (home / "perpbot.toml").write_text(CONFIG)
    env.update(PERPBOT_HOME=str(home / "home"), PERPBOT_CONFIG=str(home / "perpbot.toml"))
    results = []
    invalid: list[dict[str, Any]] = []
    try:
        run([PERPBOT, "db", "start"], env)
        run([PERPBOT, "db", "upgrade"], env)
        for i in range(args.runs):
            path = home / f"jobs-{i}.jsonl"
            with path.open("w") as fh:
                subprocess.run(
                    [sys.executable, str(HERE / "gen_jobs.py"), str(args.jobs), str(i), f"run{i}"],
                    stdout=fh,
                    check=True,
                )
            code, out, err, elapsed, rss, cpu = measured(
                [PERPBOT, "submit", str(path), "--json"], env
            )
            assert code == 0, err
            summary = json.loads(out)
            assert summary["inserted"] == args.jobs, summary
            results.append(
                {
                    "run": i + 1,
                    "jobs": args.jobs,
                    "seconds": round(elapsed, 3),
                    "jobs_per_s": round(args.jobs / elapsed),
                    "cpu_us_per_job": round(cpu / args.jobs * 1e6, 1),
                    "peak_rss_mb": round(rss, 1),
                    "file_mb": round(path.stat().st_size / 1e6, 1),
                }
            )
            print(
                f"run {i + 1}: {args.jobs} jobs in {elapsed:.2f} s = "
                f"{args.jobs / elapsed:,.0f} jobs/s, {cpu / args.jobs * 1e6:.0f} us CPU/job "
                f"(perpbot process), peak RSS {results[-1]['peak_rss_mb']} MB",
                flush=True,
            )
            path.unlink()
        if args.invalid_mb:
            invalid = invalid_inputs(home, env, args.invalid_mb, args.invalid_cases)
    finally:
        subprocess.run([PERPBOT, "db", "stop"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)

    rates = [r["jobs_per_s"] for r in results]
    report = {
        "benchmark": "perpbot submit, two-leg jobs, embedded PostgreSQL 18 (default settings)",
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "code": os.environ.get("PYTHONPATH") or str(HERE.parent),
        "median_jobs_per_s": statistics.median(rates) if rates else None,
        "max_peak_rss_mb": max((r["peak_rss_mb"] for r in results), default=None),
        "runs": results,
        "invalid_input": invalid,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
