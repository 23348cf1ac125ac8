"""Benchmark two peer PostgreSQL job queues, procrastinate and PgQueuer, on no-op jobs.

    pip install -r bench/requirements-peers.txt
    python bench/peers.py --jobs 20000 --workers 2
    python bench/peers.py --jobs 20000 --runs 3 --json /tmp/peers.json
    python bench/peers.py --only pgqueuer --pgqueuer-jobs 150000   # a drain of >= 10 s

API: ``run_procrastinate(conninfo, jobs, workers)`` and ``run_pgqueuer(conninfo,
jobs, workers)`` take a libpq URL (``postgresql://user:pw@host:port/db``) of any
server whose role may create databases, and return ``{"peer", "version",
"jobs", "workers", "seconds", "jobs_per_s", "worker_rss_mb", "enqueue_s",
"enqueue_jobs_per_s", "startup_s", "worker_cpu_s", "worker_exit_codes",
"settings"}``.  ``main()`` starts a fresh embedded PostgreSQL
(``perpbot_db.runtime.embedded``: the settings a newcomer gets, ``synchronous_commit``
on, 256 MB shared buffers), runs the peers on it one after the other (``--runs``
rounds, peers alternating) and prints a table; progress goes to stderr.

Each run:

1. drops and creates its own database (``bench_procrastinate`` or
   ``bench_pgqueuer``) and installs the peer's schema with the peer's own CLI
   (``procrastinate schema --apply``; ``pgq install``, default durability);
2. enqueues ``jobs`` no-op jobs with the peer's batch API, 1,000 per call
   (procrastinate ``Task.batch_defer_async``; PgQueuer ``Queries.enqueue``
   with lists, over asyncpg), timed on its own as ``enqueue_s``;
3. runs ``VACUUM ANALYZE`` and ``CHECKPOINT`` in that database, the same for
   both, so that neither drains with no planner statistics or under the
   checkpoint the enqueue would cause;
4. starts ``workers`` worker *processes*, each importing a tiny generated
   module with one ``async`` no-op task, and times from the first spawn until
   no job is left (an EXISTS query every 0.1 s; a count for the progress line
   every 2 s): that is ``seconds``.  It includes interpreter start-up and
   connecting, about 0.2-0.3 s, shown apart as ``startup_s`` (spawn to the
   first finished job seen).  Each worker's VmRSS (``/proc/PID/status``) is
   sampled at every poll and its peak reported in ``worker_rss_mb``; its CPU
   seconds at the end in ``worker_cpu_s`` (the rest of the two cores goes to
   PostgreSQL and this poller);
5. stops the workers with SIGTERM (both peers shut down gracefully on it),
   checks that every job ended successful, and drops the database.

How each peer is run (fairness):

* procrastinate 3.10: its own CLI, ``python -m procrastinate --app=...
  worker --concurrency 10`` (psycopg 3 ``AsyncConnectionPool`` with the
  connector's defaults, the standard asyncio loop its CLI uses, LISTEN/NOTIFY
  on, jobs kept on completion: ``--delete-jobs`` default ``never``).  Its
  default concurrency is 1; its docs give ``--concurrency`` as the way to run
  several *async* jobs at once in one worker, and our task is async.  10
  matches PgQueuer's default of 10 jobs in flight per worker (its batch size).
  Measured here with 2 workers and 20,000 jobs: concurrency 1 about 1,000
  jobs/s, 2 about 1,250, 4 / 10 / 30 about 1,290 (a plateau), so 10 is its
  fast path, not a handicap; ``concurrency=`` / ``--procrastinate-concurrency``
  overrides.  "Left" is ``status IN ('todo', 'doing')``; "done" is
  ``status = 'succeeded'``.
* PgQueuer 1.6 over asyncpg on uvloop: what ``pgq run`` does, since it tries
  asyncpg first and runs on uvloop (and PgQueuer's own benchmark defaults to
  asyncpg).  The worker calls ``pgqueuer.run(factory)``, which its docstring
  describes as running a worker "as ``pgq run`` does, without the CLI": ``pgq
  run`` itself exits at start in 1.6.0 with typer 0.29 (this project's venv),
  because its ``--log-level`` option hands a str to code that wants the enum,
  even at its default.  Batch size 10 and no ``max_concurrent_tasks``
  (unlimited) are the ``pgq run`` / ``pgqueuer.run`` defaults
  (``batch_size=`` / ``--pgqueuer-batch-size`` overrides: 100 drains about
  2.5-3x faster here); the entrypoint has ``concurrency_limit=0`` (unlimited,
  the default).  PgQueuer deletes a finished job from its ``pgqueuer`` table
  and writes a ``pgqueuer_log`` row in the same statement (batched by its
  completion buffer), so "left" is any row in ``pgqueuer`` and "done" is a
  ``pgqueuer_log`` row with ``status = 'successful'``.
* Logging: procrastinate logs two INFO lines per job by default, which would
  measure stderr rather than the queue, so its workers get
  ``--log-level=warning`` (this favours it).  PgQueuer keeps ``pgq run``'s
  default INFO, which logs nothing per successful job.
* Equal jobs counts compare like with like, but PgQueuer drains 20,000 jobs in
  about 2 s, where start-up weighs; ``--pgqueuer-jobs`` gives it a longer run.
  Its rate held at about 9-10k jobs/s from 20,000 to 150,000 queued.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import make_url

ENQUEUE_BATCH = 1000
POLL_S = 0.1
PROGRESS_S = 2.0
DRAIN_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 30.0
DEFAULT_PGQUEUER_BATCH_SIZE = 10  # `pgq run --batch-size` and pgqueuer.run() default
PROCRASTINATE_CONCURRENCY = 10  # see the module docstring (its own default is 1)

PROCRASTINATE_MODULE = "bench_peer_procrastinate"
PROCRASTINATE_SOURCE = '''"""procrastinate app for bench/peers.py: one async no-op task."""

import os

import procrastinate

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_PEER_DSN"])
)


@app.task(name="noop")
async def noop(i: int) -> None:
    return None
'''

PGQUEUER_MODULE = "bench_peer_pgqueuer"
PGQUEUER_SOURCE = '''"""PgQueuer worker for bench/peers.py: one async no-op entrypoint.

Run as `python -m bench_peer_pgqueuer`: what `pgq run bench_peer_pgqueuer:create`
does (pgqueuer.run on uvloop, its INFO logging), without the CLI.
"""

import os
from contextlib import asynccontextmanager

import asyncpg
import uvloop

import pgqueuer
from pgqueuer.core import logconfig
from pgqueuer.models import Job


@asynccontextmanager
async def create():
    connection = await asyncpg.connect(os.environ["BENCH_PEER_DSN"])
    try:
        pgq = pgqueuer.PgQueuer.from_asyncpg_connection(connection)

        @pgq.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        yield pgq
    finally:
        await connection.close()


if __name__ == "__main__":
    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)
    batch_size = int(os.environ.get("BENCH_PGQUEUER_BATCH_SIZE", "10"))
    uvloop.run(pgqueuer.run(create, batch_size=batch_size))
'''


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def database_url(conninfo: str, name: str) -> str:
    return make_url(conninfo).set(database=name).render_as_string(hide_password=False)


def fresh_database(conninfo: str, name: str) -> str:
    """Drop and create ``name`` on the server of ``conninfo``; its URL."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(conninfo, name)


def drop_database(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def settle(url: str) -> None:
    """VACUUM ANALYZE and CHECKPOINT, so each drain starts from the same state."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log("  (no CHECKPOINT: the role lacks pg_checkpoint)")


def count(url: str, query: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_module(workdir: Path, name: str, source: str) -> dict[str, str]:
    """Write the worker module; the environment that imports it and reaches the database."""
    (workdir / f"{name}.py").write_text(source)
    # The peers read settings from the environment: start them from their defaults.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PGQUEUER_", "PROCRASTINATE_")) and k != "PGDSN"
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(workdir), env.get("PYTHONPATH")) if p)
    return env


def run_cli(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {done.stderr.strip()[-2000:]}")


@dataclass
class Drain:
    seconds: float
    startup_s: float
    worker_rss_mb: list[float]
    worker_cpu_s: list[float]
    exit_codes: list[int | None]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM each worker (graceful in both peers), SIGKILL what is left after a while."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)  # did not stop in time
    return codes


@dataclass(frozen=True)
class Probes:
    """SQL the poller runs against a peer's tables, each returning one value.

    ``any_left`` (polled every POLL_S) and ``any_done`` (until true) are
    EXISTS checks, cheap enough not to compete with the workers for the two
    cores; the count for the progress line runs only every PROGRESS_S.
    """

    any_left: str
    any_done: str
    count_left: str


def drain(
    label: str,
    url: str,
    cmds: list[list[str]],
    env: dict[str, str],
    workdir: Path,
    jobs: int,
    probes: Probes,
) -> Drain:
    """Start the workers, time them until no job is left, then stop them."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"worker-{i}.log" for i in range(len(cmds))]
    peaks = [0.0] * len(cmds)
    with psycopg.connect(url, autocommit=True) as conn:

        def value(query: str) -> Any:
            row = conn.execute(query).fetchone()
            return row[0] if row else None

        start = time.perf_counter()
        try:
            for cmd, path in zip(cmds, logs, strict=True):
                with path.open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            cmd,
                            env=env,
                            cwd=workdir,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            startup: float | None = None
            next_progress = PROGRESS_S
            while True:
                for i, proc in enumerate(procs):
                    peaks[i] = max(peaks[i], rss_mb(proc.pid))
                left = bool(value(probes.any_left))
                now = time.perf_counter() - start
                if startup is None and (not left or value(probes.any_done)):
                    startup = now
                if not left:
                    seconds = now
                    break
                if now >= next_progress:
                    done = jobs - int(value(probes.count_left))
                    log(f"  {label}: {done:,}/{jobs:,} done after {now:.0f} s")
                    next_progress += PROGRESS_S
                for proc, path in zip(procs, logs, strict=True):
                    if proc.poll() is not None:
                        tail = path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{label} worker exited with {proc.returncode}: {tail}")
                if now > DRAIN_TIMEOUT_S:
                    raise RuntimeError(f"{label}: jobs still left after {now:.0f} s")
                time.sleep(POLL_S)
            for i, proc in enumerate(procs):
                peaks[i] = max(peaks[i], rss_mb(proc.pid))
            cpu = [round(cpu_s(proc.pid), 2) for proc in procs]
        finally:
            codes = stop_workers(procs)
    return Drain(
        seconds=seconds,
        startup_s=startup if startup is not None else seconds,
        worker_rss_mb=[round(p, 1) for p in peaks],
        worker_cpu_s=cpu,
        exit_codes=codes,
    )


def result(
    peer: str,
    jobs: int,
    workers: int,
    enqueue_s: float,
    run: Drain,
    settings: dict[str, Any],
) -> dict[str, Any]:
    return {
        "peer": peer,
        "version": version(peer),
        "jobs": jobs,
        "workers": workers,
        "seconds": round(run.seconds, 3),
        "jobs_per_s": round(jobs / run.seconds),
        "worker_rss_mb": run.worker_rss_mb,
        "enqueue_s": round(enqueue_s, 3),
        "enqueue_jobs_per_s": round(jobs / enqueue_s) if enqueue_s else None,
        "startup_s": round(run.startup_s, 2),
        "worker_cpu_s": run.worker_cpu_s,
        "worker_exit_codes": run.exit_codes,
        "settings": settings,
    }


# --- procrastinate -------------------------------------------------------------------------


async def procrastinate_enqueue(url: str, jobs: int, batch: int) -> None:
    import procrastinate
    from procrastinate.types import JSONDict

    # Quiet its "App is instantiated in the main Python module" warning: this app only defers.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop(i: int) -> None:
        return None

    async with app.open_async():
        for first in range(0, jobs, batch):
            args: list[JSONDict] = [{"i": i} for i in range(first, min(jobs, first + batch))]
            await noop.batch_defer_async(*args)


def run_procrastinate(
    conninfo: str,
    jobs: int,
    workers: int,
    *,
    concurrency: int = PROCRASTINATE_CONCURRENCY,
    batch: int = ENQUEUE_BATCH,
    database: str = "bench_procrastinate",
    keep_database: bool = False,
) -> dict[str, Any]:
    """Drain ``jobs`` no-op procrastinate jobs with ``workers`` worker processes.

    ``concurrency`` is each worker's ``--concurrency`` (procrastinate's own default is 1).
    """
    url = fresh_database(conninfo, database)
    workdir = Path(tempfile.mkdtemp(prefix="bench-procrastinate-"))
    try:
        env = write_module(workdir, PROCRASTINATE_MODULE, PROCRASTINATE_SOURCE)
        env["BENCH_PEER_DSN"] = url
        base = [sys.executable, "-m", "procrastinate", f"--app={PROCRASTINATE_MODULE}.app"]
        log(f"procrastinate: schema --apply in {database}")
        run_cli([*base, "schema", "--apply"], env, workdir)

        log(f"procrastinate: enqueueing {jobs:,} jobs ({batch:,} per batch_defer_async)")
        t = time.perf_counter()
        asyncio.run(procrastinate_enqueue(url, jobs, batch))
        enqueue_s = time.perf_counter() - t
        todo = count(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
        if todo != jobs:
            raise RuntimeError(f"procrastinate: {todo} jobs queued, expected {jobs}")
        settle(url)

        log(f"procrastinate: {workers} worker processes, concurrency {concurrency} each")
        cmds = [
            [
                *base,
                "--log-level=warning",
                "worker",
                f"--name=bench-{i}",
                f"--concurrency={concurrency}",
            ]
            for i in range(workers)
        ]
        run = drain(
            "procrastinate",
            url,
            cmds,
            env,
            workdir,
            jobs,
            Probes(
                any_left="SELECT EXISTS (SELECT FROM procrastinate_jobs "
                "WHERE status IN ('todo', 'doing'))",
                any_done="SELECT EXISTS (SELECT FROM procrastinate_jobs "
                "WHERE status = 'succeeded')",
                count_left="SELECT count(*) FROM procrastinate_jobs "
                "WHERE status IN ('todo', 'doing')",
            ),
        )
        ok = count(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
        if ok != jobs:
            raise RuntimeError(f"procrastinate: {ok} jobs succeeded, expected {jobs}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not keep_database:
            drop_database(conninfo, database)
    out = result(
        "procrastinate",
        jobs,
        workers,
        enqueue_s,
        run,
        {
            "concurrency": concurrency,
            "driver": f"psycopg {version('psycopg')} (AsyncConnectionPool, defaults)",
            "event_loop": "asyncio",
            "listen_notify": True,
            "delete_jobs": "never",
            "enqueue_batch": batch,
        },
    )
    log(f"procrastinate: {jobs:,} jobs in {run.seconds:.2f} s = {out['jobs_per_s']:,} jobs/s")
    return out


# --- PgQueuer ------------------------------------------------------------------------------


async def pgqueuer_enqueue(url: str, jobs: int, batch: int) -> None:
    from pgqueuer.adapters.connections import connect_asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    async with connect_asyncpg(dsn=url) as connection:
        queries = Queries(AsyncpgDriver(connection))
        for first in range(0, jobs, batch):
            n = min(jobs, first + batch) - first
            await queries.enqueue(
                ["noop"] * n,
                [str(i).encode() for i in range(first, first + n)],
                [0] * n,
            )


def run_pgqueuer(
    conninfo: str,
    jobs: int,
    workers: int,
    *,
    batch_size: int = DEFAULT_PGQUEUER_BATCH_SIZE,
    batch: int = ENQUEUE_BATCH,
    database: str = "bench_pgqueuer",
    keep_database: bool = False,
) -> dict[str, Any]:
    """Drain ``jobs`` no-op PgQueuer jobs with ``workers`` worker processes.

    ``batch_size`` is each worker's batch size (``pgq run --batch-size``, default 10).
    """
    url = fresh_database(conninfo, database)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pgqueuer-"))
    try:
        env = write_module(workdir, PGQUEUER_MODULE, PGQUEUER_SOURCE)
        env["BENCH_PEER_DSN"] = url
        env["PGDSN"] = url  # how `pgq` finds the database (the --pg-dsn option's variable)
        base = [sys.executable, "-m", "pgqueuer"]
        log(f"pgqueuer: pgq install in {database}")
        run_cli([*base, "install"], env, workdir)

        log(f"pgqueuer: enqueueing {jobs:,} jobs ({batch:,} per Queries.enqueue)")
        t = time.perf_counter()
        asyncio.run(pgqueuer_enqueue(url, jobs, batch))
        enqueue_s = time.perf_counter() - t
        queued = count(url, "SELECT count(*) FROM pgqueuer WHERE status = 'queued'")
        if queued != jobs:
            raise RuntimeError(f"pgqueuer: {queued} jobs queued, expected {jobs}")
        settle(url)

        env["BENCH_PGQUEUER_BATCH_SIZE"] = str(batch_size)
        log(f"pgqueuer: {workers} worker processes, batch size {batch_size} each")
        cmds = [[sys.executable, "-m", PGQUEUER_MODULE] for _ in range(workers)]
        run = drain(
            "pgqueuer",
            url,
            cmds,
            env,
            workdir,
            jobs,
            Probes(
                any_left="SELECT EXISTS (SELECT FROM pgqueuer)",
                any_done="SELECT EXISTS (SELECT FROM pgqueuer_log WHERE status = 'successful')",
                count_left="SELECT count(*) FROM pgqueuer",
            ),
        )
        ok = count(url, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
        if ok != jobs:
            raise RuntimeError(f"pgqueuer: {ok} jobs logged successful, expected {jobs}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not keep_database:
            drop_database(conninfo, database)
    out = result(
        "pgqueuer",
        jobs,
        workers,
        enqueue_s,
        run,
        {
            "batch_size": batch_size,
            "max_concurrent_tasks": None,
            "driver": f"asyncpg {version('asyncpg')}",
            "event_loop": "uvloop",
            "enqueue_batch": batch,
        },
    )
    log(f"pgqueuer: {jobs:,} jobs in {run.seconds:.2f} s = {out['jobs_per_s']:,} jobs/s")
    return out


# --- main ----------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "peer",
        "version",
        "jobs",
        "workers",
        "enqueue s",
        "drain s",
        "jobs/s",
        "worker RSS MB",
        "worker CPU s",
    )
    rows = [
        (
            str(r["peer"]),
            str(r["version"]),
            f"{r['jobs']:,}",
            str(r["workers"]),
            f"{r['enqueue_s']:.2f}",
            f"{r['seconds']:.2f}",
            f"{r['jobs_per_s']:,}",
            " / ".join(f"{m:.0f}" for m in r["worker_rss_mb"]),
            " / ".join(f"{c:.1f}" for c in r["worker_cpu_s"]),
        )
        for r in results
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=False)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head]]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


PEERS = ("procrastinate", "pgqueuer")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per peer")
    parser.add_argument("--procrastinate-jobs", type=int, default=None, help="default: --jobs")
    parser.add_argument("--pgqueuer-jobs", type=int, default=None, help="default: --jobs")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per peer")
    parser.add_argument("--only", choices=PEERS, action="append", help="repeatable")
    parser.add_argument("--runs", type=int, default=1, help="rounds (peers alternate)")
    parser.add_argument(
        "--procrastinate-concurrency",
        type=int,
        default=PROCRASTINATE_CONCURRENCY,
        help="its own default is 1",
    )
    parser.add_argument(
        "--pgqueuer-batch-size",
        type=int,
        default=DEFAULT_PGQUEUER_BATCH_SIZE,
        help="its own default",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from perpbot_db.runtime import embedded

    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-peers-"))
    results = []
    log("starting embedded PostgreSQL")
    server = embedded.start(embedded.Cluster(home / "pg"))
    try:
        conninfo = server.url.set(drivername="postgresql", database="postgres").render_as_string(
            hide_password=False
        )
        rounds = [peer for _ in range(args.runs) for peer in (args.only or PEERS)]
        for i, peer in enumerate(rounds, 1):
            log(f"--- run {i}/{len(rounds)}: {peer}")
            if peer == "procrastinate":
                results.append(
                    run_procrastinate(
                        conninfo,
                        args.procrastinate_jobs or args.jobs,
                        args.workers,
                        concurrency=args.procrastinate_concurrency,
                    )
                )
            else:
                results.append(
                    run_pgqueuer(
                        conninfo,
                        args.pgqueuer_jobs or args.jobs,
                        args.workers,
                        batch_size=args.pgqueuer_batch_size,
                    )
                )
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(table(results))
    if args.json is not None:
        report = {
            "benchmark": "peer job queues draining no-op jobs, embedded PostgreSQL 18",
            "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
            "results": results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
