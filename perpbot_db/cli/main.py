"""The ``perpbot`` command line.

Every command loads the settings first (a wrong one: one line naming it,
exit 2), then talks to ``PERPBOT_DATABASE_URL`` or the embedded PostgreSQL.
Commands that read never write: only ``perpbot db upgrade`` migrates the
schema (any other command refuses a schema behind head, with that hint), and
only ``db upgrade`` and ``perpbot run`` bring ``exchanges`` in line with the
settings (audited).  ``scheduler`` and ``worker`` do not: they may run on other
hosts with other files.  The daemons (``run``, ``scheduler``, ``worker``
without ``--once``) wait for an unreachable database instead of exiting, and
never run on an embedded server another process owns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import OperationalError

from perpbot_db.domain.jsonlines import ProblemReport
from perpbot_db.domain.lifecycle import JobStatus, RiskMode
from perpbot_db.runtime import daemon, db, embedded, migrate, scheduler
from perpbot_db.services import archive, cancel, control, market, overview, protect, tick
from perpbot_db.services import audit as audit_mod
from perpbot_db.services.submit import SubmitError, submit_lines
from perpbot_db.settings import Settings, SettingsError, load_settings
from perpbot_db.store import reconnect
from workers.recovery import Recovery
from workers.venues.adapters import build_adapters
from workers.worker import Worker

app = typer.Typer(
    help="perpbot-db: cross-exchange perpetual-futures hedge jobs run from PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(
    help="The database: schema upgrades and the embedded server.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
market_app = typer.Typer(
    help="Market data: the snapshots the risk manager scores from.", no_args_is_help=True
)
app.add_typer(market_app, name="market")
override_app = typer.Typer(
    help="Audited operator overrides (never past a hard limit).", no_args_is_help=True
)
app.add_typer(override_app, name="override")

Reason = Annotated[str, typer.Option("--reason", help="Why (stored in control_events).")]
Actor = Annotated[str, typer.Option("--actor", help="Who acts (default: your user name).")]

# Off a terminal rich would wrap tables at 80 columns; give pipes and files room.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def usd(value: str | None) -> str:
    return "-" if value is None else f"{Decimal(value):,.2f}"


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"perpbot: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


@contextlib.contextmanager
def connected(
    settings: Settings,
    *,
    upgrade: bool = False,
    daemon: bool = False,
    stop: threading.Event | None = None,
    outage: reconnect.Outage | None = None,
) -> Iterator[Engine]:
    """An engine on the configured database with the schema at head.

    Nothing is written here.  A schema behind head is refused with the hint to run
    ``perpbot db upgrade``, unless ``upgrade`` (that command itself).  A ``daemon``
    does not run on an embedded server another process owns.  With ``stop``, an
    unreachable database is waited for (backoff, one log line) until it answers or
    ``stop`` is set (then exit 0).
    """
    try:
        with db.database_url(settings, daemon=daemon) as url:
            engine = db.engine_for(url)
            try:
                if stop is not None:
                    waiter = reconnect.Reconnect(outage or reconnect.Outage(), stop=stop)
                    try:
                        waiter.call(lambda: migrate.current_revision(engine))
                    except reconnect.Stopped:
                        raise typer.Exit(0) from None
                behind = None if upgrade else migrate.schema_behind(engine)
                if behind is not None:
                    raise fail(behind)
                yield engine
            finally:
                engine.dispose()
    except embedded.EmbeddedError as exc:
        raise fail(str(exc)) from None
    except OperationalError as exc:
        raise fail(f"cannot reach the database: {exc.orig}") from None


def require_exchanges(settings: Settings, command: str) -> None:
    """The commands that trade refuse to start without an exchange (exit 2, one line)."""
    if not settings.exchanges:
        raise fail(f"{command}: {migrate.no_exchange_reason(settings)}; nothing to trade")


def _sync_exchanges(engine: Engine, settings: Settings, command: str) -> migrate.SyncReport:
    """``db upgrade`` and ``run``: bring ``exchanges`` in line, print what changed."""
    report = migrate.sync_exchanges(engine, settings, actor=_actor(None), command=command)
    if report.skipped:
        err.print(f"{report.skipped}: the exchanges table was left as it is", highlight=False)
    elif report.changes:
        changes = ", ".join(change.summary() for change in report.changes)
        err.print(f"exchanges synced from {report.source}: {changes}", highlight=False)
    else:
        err.print(
            f"exchanges in line with {report.source} ({len(settings.exchanges)} configured)",
            highlight=False,
        )
    return report


# -- db --------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the schema to head (idempotent) and sync `exchanges` with the settings.

    Each exchange added, changed, enabled or disabled is a control event naming the
    settings file.  With no exchange configured the table is left as it is."""
    settings = settings_or_exit()
    with connected(settings, upgrade=True) as engine:
        before = migrate.current_revision(engine)
        if before != migrate.head_revision():
            migrate.upgrade(engine)
        after = migrate.current_revision(engine)
        was = "already at head" if before == after else f"upgraded from {before or 'none'}"
        out.print(f"schema at {after} ({was})")
        _sync_exchanges(engine, settings, "db upgrade")


@db_app.command("archive")
def db_archive(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            min=0,
            help="Seconds since a job finished (default: the archive_after_s setting).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Move finished jobs (with legs, reservations, events) to the archive tables now.

    The schedulers do this every recovery interval; `<table>_all` views show both."""
    settings = settings_or_exit()
    after_s = settings.archive_after_s if older_than is None else older_than
    with connected(settings) as engine:
        report = archive.archive_finished(
            engine, after_s=after_s, batch=settings.archive_batch, max_batches=1_000_000
        )
    if as_json:
        print(json.dumps(dataclasses.asdict(report)))
    else:
        out.print(f"archived {report.jobs} job(s) finished more than {after_s:g} s ago")


@db_app.command("start")
def db_start() -> None:
    """Start a long-lived embedded PostgreSQL shared by every perpbot process.

    It listens on the port remembered under PERPBOT_HOME, so clients that lost it
    reconnect to the same URL.  It does not migrate: run `perpbot db upgrade`."""
    settings = settings_or_exit()
    if settings.database_url is not None:
        raise fail("PERPBOT_DATABASE_URL is set: there is no embedded server to start")
    cluster = db.cluster_for(settings)
    try:
        port, started = embedded.start_shared(cluster)
    except embedded.EmbeddedError as exc:
        raise fail(str(exc)) from None
    if started:
        out.print(f"embedded PostgreSQL started on 127.0.0.1:{port} ({cluster.data_dir})")
    else:
        out.print(f"embedded PostgreSQL already running on 127.0.0.1:{port}")
    engine = db.engine_for(cluster.url(port))
    try:
        behind = migrate.schema_behind(engine)
    except OperationalError:
        behind = None
    finally:
        engine.dispose()
    if behind is not None:
        err.print(f"perpbot: {behind}", markup=False, highlight=False)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the shared embedded PostgreSQL (not one another process owns)."""
    settings = settings_or_exit()
    try:
        stopped = embedded.stop_shared(db.cluster_for(settings))
    except embedded.EmbeddedError as exc:
        raise fail(str(exc), 1) from None
    out.print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@db_app.command("status")
def db_status() -> None:
    """Say whether the embedded PostgreSQL runs and who owns it (exit 1 when it does not)."""
    settings = settings_or_exit()
    if settings.database_url is not None:
        url = db.safe_url(make_url(settings.database_url.get_secret_value()))
        out.print(f"external database {url}")
        return
    cluster = db.cluster_for(settings)
    info = cluster.server()
    if info is None:
        port = cluster.remembered_port()
        out.print(
            "embedded PostgreSQL is not running"
            + ("" if port is None else f" (it listens on 127.0.0.1:{port} when started)")
        )
        raise typer.Exit(1)
    out.print(f"embedded PostgreSQL running on 127.0.0.1:{info.port}, {info.owner()}")


@db_app.command("url")
def db_url(
    show_password: Annotated[bool, typer.Option(help="Print the password too.")] = False,
) -> None:
    """Print the database URL (password masked unless --show-password)."""
    settings = settings_or_exit()
    if settings.database_url is not None:
        url = make_url(settings.database_url.get_secret_value())
    else:
        cluster = db.cluster_for(settings)
        port = cluster.running_port()
        if port is None:
            raise fail("embedded PostgreSQL is not running: start it with `perpbot db start`", 1)
        url = cluster.url(port)
    print(url.render_as_string(hide_password=not show_password))


# -- jobs --------------------------------------------------------------------------


def _open_input(source: str) -> tuple[IO[bytes], int | None]:
    if source == "-":
        return sys.stdin.buffer, None
    path = Path(source)
    try:
        return path.open("rb"), path.stat().st_size
    except OSError as exc:
        raise fail(f"FILE {source}: {exc.strerror}") from None


@app.command()
def submit(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="JSON lines, one job each.")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Insert the valid lines even if some are bad.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Default: on a terminal.")
    ] = None,
) -> None:
    """Submit hedge jobs from JSON lines, all or nothing: any bad line and nothing is written."""
    settings = settings_or_exit()
    stream, size = _open_input(source)
    show = progress if progress is not None else err.is_terminal
    try:
        with connected(settings) as engine, stream, _progress(show, size) as advance:
            result = submit_lines(
                engine,
                stream,
                settings,
                datetime.now(UTC),
                skip_invalid=skip_invalid,
                progress=advance,
                keep_job_ids=False,
            )
    except SubmitError as exc:
        raise fail(f"{exc}; nothing was written", 1) from None
    if as_json:
        print(json.dumps(result.summary()))
    else:
        _print_problems(result.report)
        if result.written:
            out.print(
                f"submitted {result.inserted} job(s), {result.existing} already known "
                f"(idempotency key), {result.report.bad_lines} bad line(s) skipped"
            )
    if result.report.total and not result.written:
        if not as_json:
            err.print(f"perpbot: {result.report.bad_lines} bad line(s); nothing was written")
        raise typer.Exit(1)


def _print_problems(report: ProblemReport) -> None:
    for problem in report.shown:
        err.print(str(problem), markup=False, highlight=False)
    if report.omitted:
        err.print(f"... and {report.omitted} more problem(s)", markup=False, highlight=False)


@contextlib.contextmanager
def _progress(show: bool, size: int | None) -> Iterator[Any]:
    if not show:
        yield None
        return
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if size else [MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        read = bar.add_task("validating", total=size)
        written = bar.add_task("inserting", total=None, visible=False)

        def advance(phase: str, amount: int) -> None:
            if phase == "validate":
                bar.advance(read, amount)
            else:
                bar.update(written, advance=amount, visible=True)

        yield advance


@app.command()
def jobs(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Newest N jobs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """List the newest jobs."""
    settings = settings_or_exit()
    with connected(settings) as engine, engine.connect() as conn:
        rows = overview.job_rows(conn, status=status.value if status else None, limit=limit)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("id", "status", "strategy", "symbol", "notional", "score", "legs", "created")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["status"],
            row["strategy"],
            row["symbol"],
            usd(row["notional_usd"]),
            row["final_score"] or "-",
            row["legs"] or "",
            row["created_at"][:19],
        )
    out.print(table)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="JSON.")] = False) -> None:
    """System state, jobs by status, and each exchange's equity, capital and jobs."""
    settings = settings_or_exit()
    with connected(settings) as engine, engine.connect() as conn:
        snap = overview.status_snapshot(conn)
    if as_json:
        print(json.dumps(snap))
        return
    system = snap["system"]
    out.print(
        f"system [bold]{system['status']}[/], risk mode {system['risk_mode']}, "
        f"daily loss limit ${usd(system['daily_loss_limit_usd'])}"
        + (f", halted: {system['halt_reason']}" if system["halt_reason"] else "")
    )
    counts = Table("status", "jobs", title=f"{snap['jobs_total']} job(s)")
    for name, n in snap["jobs"].items():
        counts.add_row(name, str(n))
    out.print(counts)
    ex = Table("exchange", "equity $", "reserved $", "safe mode", "max jobs", "jobs by status")
    for row in snap["exchanges"]:
        jobs_text = ", ".join(f"{k} {v}" for k, v in sorted(row["jobs"].items())) or "-"
        ex.add_row(
            row["name"] + ("" if row["enabled"] else " (disabled)"),
            usd(row["equity_usd"]),
            usd(row["reserved_usd"]),
            "yes" if row["safe_mode"] else "no",
            str(row["max_concurrent_jobs"]),
            jobs_text,
        )
    out.print(ex)


# -- scheduler -------------------------------------------------------------------


@app.command("scheduler")
def scheduler_cmd(
    once: Annotated[bool, typer.Option("--once", help="Run one tick, print it, exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: JSON.")] = False,
) -> None:
    """Admit pending jobs (a tick every interval and on every submission); the leader
    among schedulers also recovers running jobs whose lease expired, ends protection
    locks that ran their time and archives, until SIGTERM.  Survives database outages."""
    settings = settings_or_exit()
    require_exchanges(settings, "scheduler")
    if once:
        with connected(settings) as engine:
            protect.expire_once(engine)  # no leader runs for a one-off: end what is due
            report = tick.run_tick(engine, tick.TickConfig.from_settings(settings))
        _print_tick(report.summary(), as_json)
        return
    _log_setup()
    stop, _ = _stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=True, stop=stop, outage=outage) as engine:
        service, recovery = _scheduler_service(engine, settings, outage, stop)
        service.start()
        err.print(f"scheduler ticking every {settings.tick_interval_s} s (Ctrl-C to stop)")
        stop.wait()
        service.stop()
        recovery.close()
        err.print(f"scheduler stopped after {service.ticks} tick(s)")


def _stop_on_signals() -> tuple[threading.Event, list[Callable[[], object]]]:
    """SIGTERM/SIGINT set the event and call the hooks appended to the list."""
    stop = threading.Event()
    hooks: list[Callable[[], object]] = []

    def handler(*_: Any) -> None:
        stop.set()
        for hook in hooks:
            hook()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop, hooks


def _log_setup() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _conninfo(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _scheduler_service(
    engine: Engine, settings: Settings, outage: reconnect.Outage, stop: threading.Event
) -> tuple[scheduler.SchedulerService, Recovery]:
    recovery = Recovery(
        engine, settings, build_adapters(engine, settings), outage=outage, stop=stop
    )

    def maintenance() -> None:  # the leader's; recovery first, a failing archive delays nothing
        recovery.run_once()
        protect.expire_once(engine)
        archive.archive_finished(
            engine, after_s=settings.archive_after_s, batch=settings.archive_batch
        )

    service = scheduler.SchedulerService(
        engine, settings, _conninfo(engine), maintenance=maintenance, outage=outage
    )
    return service, recovery


# -- workers and the daemon ------------------------------------------------------------


@app.command("worker")
def worker_cmd(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, max=10_000, help="Jobs held at once (a batch)."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Drain what is claimable now, then exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tally as JSON.")] = False,
) -> None:
    """Claim admitted jobs, send their legs, unwind what filled alone, book the results.

    Without --once it waits for an unreachable database and survives outages."""
    settings = settings_or_exit()
    require_exchanges(settings, "worker")
    _log_setup()
    stop, on_stop = _stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=not once, stop=None if once else stop, outage=outage) as engine:
        worker = Worker(
            engine,
            settings,
            build_adapters(engine, settings),
            conninfo=_conninfo(engine),
            concurrency=concurrency,
            outage=outage,
        )
        on_stop.append(worker.stop)
        if stop.is_set():
            worker.stop()
        if not once:
            err.print(f"{worker.identity}: {worker.concurrency} slot(s) (Ctrl-C to stop)")
        tally = worker.run(once=once)
    summary = dataclasses.asdict(tally)
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(
            f"claimed {tally.claimed}: completed {tally.completed}, failed {tally.failed}, "
            f"retrying {tally.retried}, handed back {tally.handed_back}, lost {tally.lost}"
        )


@app.command("run")
def run_cmd(
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes.")] = 2,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, max=10_000, help="Per worker.")
    ] = None,
) -> None:
    """The daemon: scheduler (with crash recovery) here, N worker processes restarted if
    they die; SIGTERM/SIGINT stops everything cleanly.  It brings `exchanges` in line with
    the settings first (audited), and survives database outages."""
    settings = settings_or_exit()
    require_exchanges(settings, "run")
    _log_setup()
    stop, on_stop = _stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=True, stop=stop, outage=outage) as engine:
        try:
            reconnect.Reconnect(outage, stop=stop).call(
                lambda: _sync_exchanges(engine, settings, "run")
            )
        except reconnect.Stopped:
            raise typer.Exit(0) from None
        url = engine.url.render_as_string(hide_password=False)
        args = () if concurrency is None else ("--concurrency", str(concurrency))
        sup = daemon.Supervisor(
            workers,
            daemon.child_env(url),
            worker_args=args,
            stop_timeout_s=settings.shutdown_grace_s,
        )
        on_stop.append(sup.stopping.set)
        if stop.is_set():
            sup.stopping.set()
        service, recovery = _scheduler_service(engine, settings, outage, stop)
        service.start()
        sup.start()
        err.print(f"perpbot running: scheduler + {workers} worker(s) (Ctrl-C to stop)")
        sup.watch()
        stop.wait()
        codes = sup.stop()
        service.stop()
        recovery.close()
    bad = {i: c for i, c in codes.items() if c not in (0, None)}
    err.print(f"stopped: workers exited {codes}, {sup.restarts} restart(s)")
    if bad:
        raise typer.Exit(1)


def _print_tick(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    if not summary["ran"] or summary["skipped"]:
        out.print(f"tick skipped: {summary['skipped']}")
    out.print(
        f"admitted {summary['admitted']}, rejected {sum(summary['rejected'].values())}, "
        f"expired {summary['expired']}, re-scored {summary['rescored']}"
    )
    for code, n in sorted(summary["rejected"].items()):
        out.print(f"  rejected  {code}: {n}")
    for code, n in sorted(summary["held_pending"].items()):
        out.print(f"  held      {code}: {n}")
    for key in ("halted", "safe_mode_entered", "blacklisted"):
        if summary[key]:
            out.print(f"  {key}: {summary[key]}")


# -- market data -----------------------------------------------------------------


@market_app.command("load")
def market_load(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="JSON lines, one snapshot each.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Upsert market snapshots, all or nothing: any bad line and nothing is written."""
    settings = settings_or_exit()
    stream, _ = _open_input(source)
    try:
        with connected(settings) as engine, stream:
            result = market.load_lines(
                engine, stream, max_future_skew_s=settings.market_max_future_skew_s
            )
    except market.LoadError as exc:
        raise fail(f"{exc}; nothing was written", 1) from None
    _print_problems(result.report)
    if as_json:
        print(
            json.dumps(
                {
                    "lines": result.lines,
                    "upserted": result.upserted,
                    "stale_skipped": result.stale_skipped,
                    "invalid": result.report.bad_lines,
                    "problems_total": result.report.total,
                    "written": result.written,
                }
            )
        )
    elif result.written:
        out.print(f"loaded {result.upserted} snapshot(s), {result.stale_skipped} older than stored")
    if not result.written:
        err.print(f"perpbot: {result.report.bad_lines} bad line(s); nothing was written")
        raise typer.Exit(1)


# -- control ---------------------------------------------------------------------


def _actor(actor: str | None) -> str:
    return actor or getpass.getuser()


@contextlib.contextmanager
def _control() -> Iterator[Engine]:
    settings = settings_or_exit()
    with connected(settings) as engine:
        try:
            yield engine
        except control.ControlError as exc:
            raise fail(str(exc), 1) from None


@app.command()
def pause(reason: Reason, actor: Actor = "") -> None:
    """Stop admitting jobs (running ones finish)."""
    with _control() as engine:
        control.pause(engine, actor=_actor(actor), reason=reason)
    out.print("paused")


@app.command()
def resume(reason: Reason, actor: Actor = "") -> None:
    """Admit jobs again after a pause."""
    with _control() as engine:
        control.resume(engine, actor=_actor(actor), reason=reason)
    out.print("running")


@app.command()
def halt(reason: Reason, actor: Actor = "") -> None:
    """Halt the system; only `override clear-halt` lifts it."""
    with _control() as engine:
        moved = control.halt(engine, actor=_actor(actor), reason=reason)
    out.print("halted" if moved else "already halted")


@app.command("risk-mode")
def risk_mode(
    mode: Annotated[RiskMode, typer.Argument(help="The new mode.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Switch the risk mode (weights and limits); scores follow within a few ticks."""
    with _control() as engine:
        previous = control.set_risk_mode(engine, mode, actor=_actor(actor), reason=reason)
    out.print(f"risk mode {previous.value} -> {mode.value}")


@app.command()
def audit(as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False) -> None:
    """Check DESIGN.md's invariants; exit 1 on any breach."""
    settings = settings_or_exit()
    with connected(settings) as engine, engine.connect() as conn:
        breaches = audit_mod.run_audit(
            conn,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            worst_loss_bps=settings.job_worst_loss_bps,
        )
    for breach in breaches:
        if as_json:
            print(json.dumps({"invariant": breach.invariant, "name": breach.name, **breach.detail}))
        else:
            out.print(str(breach), markup=False, highlight=False)
    if breaches:
        raise typer.Exit(1)
    if not as_json:
        out.print(f"all {len(audit_mod.CHECKS) + 1} invariant checks hold")


@app.command("cancel")
def cancel_cmd(
    job_id: Annotated[int, typer.Argument(min=1, help="A pending or admitted job.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Cancel a pending or admitted job (its capital is released); running jobs finish."""
    settings = settings_or_exit()
    with connected(settings) as engine:
        try:
            was = cancel.cancel(engine, job_id, actor=_actor(actor), reason=reason)
        except control.ControlError as exc:  # CancelError included
            raise fail(str(exc), 1) from None
    out.print(f"job {job_id} cancelled (was {was.value})")


@override_app.command("clear-halt")
def override_clear_halt(reason: Reason, actor: Actor = "") -> None:
    """Run again after a halt (status manual_override until `resume`-d normally)."""
    with _control() as engine:
        control.clear_halt(engine, actor=_actor(actor), reason=reason)
    out.print("halt cleared: manual_override")


@override_app.command("leave-safe-mode")
def override_leave_safe_mode(
    exchange: Annotated[str, typer.Argument(help="Exchange name.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Take an exchange out of safe mode."""
    with _control() as engine:
        control.leave_safe_mode(engine, exchange, actor=_actor(actor), reason=reason)
    out.print(f"{exchange} left safe mode")


@override_app.command("force-admit")
def override_force_admit(
    job_id: Annotated[int, typer.Argument(min=1, help="A pending job.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Let one pending job pass soft limits and the score threshold (hard limits still apply)."""
    with _control() as engine:
        control.force_admit(engine, job_id, actor=_actor(actor), reason=reason)
    out.print(f"job {job_id} may pass soft limits")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
