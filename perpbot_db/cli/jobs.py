"""Jobs: ``perpbot submit``, and the read commands ``jobs``, ``status`` and ``job ID``.

The read commands answer at once: settings, the driver and rich, nothing more
(no SQLAlchemy, no Alembic, no scheduler, no workers).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from perpbot_db.cli.app import app, connected, err, fail, out, reading, settings_or_exit, usd
from perpbot_db.domain.lifecycle import JobStatus

if TYPE_CHECKING:
    from perpbot_db.domain.jsonlines import ProblemReport


def open_input(source: str) -> tuple[IO[bytes], int | None]:
    from pathlib import Path

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
    from datetime import UTC, datetime

    from perpbot_db.services.submit import SubmitError, submit_lines

    settings = settings_or_exit()
    stream, size = open_input(source)
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
        print_problems(result.report)
        if result.written:
            out.print(
                f"submitted {result.inserted} job(s), {result.existing} already known "
                f"(idempotency key), {result.report.bad_lines} bad line(s) skipped"
            )
    if result.report.total and not result.written:
        if not as_json:
            err.print(f"perpbot: {result.report.bad_lines} bad line(s); nothing was written")
        raise typer.Exit(1)


def print_problems(report: ProblemReport) -> None:
    for problem in report.shown:
        err.print(str(problem), markup=False, highlight=False)
    if report.omitted:
        err.print(f"... and {report.omitted} more problem(s)", markup=False, highlight=False)


@contextlib.contextmanager
def _progress(show: bool, size: int | None) -> Iterator[Any]:
    if not show:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

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
    """List the newest jobs, each with its last decision (why it waits or ended)."""
    from perpbot_db.services import overview

    settings = settings_or_exit()
    with reading(settings) as conn:
        rows = overview.job_rows(conn, status=status.value if status else None, limit=limit)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        "id",
        "status",
        "strategy",
        "symbol",
        "notional",
        "score",
        "legs",
        "decision",
        "reason",
        "created",
    )
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["status"],
            row["strategy"],
            row["symbol"],
            usd(row["notional_usd"]),
            row["final_score"] or "-",
            row["legs"] or "",
            row["decision_code"] or "-",
            escape(row["decision_reason"] or ""),
            row["created_at"][:19],
        )
    out.print(table)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="JSON.")] = False) -> None:
    """System state, jobs by status, and each exchange's equity, capital and jobs."""
    from perpbot_db.services import overview

    settings = settings_or_exit()
    with reading(settings) as conn:
        snap = overview.status_snapshot(conn)
    if as_json:
        print(json.dumps(snap))
        return
    from rich.table import Table

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


def _t(value: str | None) -> str:
    return "-" if value is None else value[:19].replace("T", " ")


def _qty(value: str | None) -> str:
    if value is None:
        return "-"
    from decimal import Decimal

    return f"{Decimal(value).normalize():f}"


@app.command("job")
def job_cmd(
    job_id: Annotated[int, typer.Argument(min=1, help="The job's id (see `perpbot jobs`).")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON.")] = False,
) -> None:
    """One job: why it waits (or ended), its legs, capital reservations and event timeline."""
    from perpbot_db.services import overview

    settings = settings_or_exit()
    with reading(settings) as conn:
        view = overview.job_view(conn, job_id)
    if view is None:
        raise fail(f"job {job_id} not found", 1)
    data = view.as_dict()
    if as_json:
        print(json.dumps(data))
        return
    from rich.markup import escape
    from rich.table import Table

    job = data["job"]
    out.print(
        f"job {job['id']} [bold]{job['status']}[/]"
        + (" (archived)" if job["archived"] else "")
        + f": {job['strategy']} {job['symbol']} ${usd(job['notional_usd'])}",
        highlight=False,
    )
    out.print(f"why: {data['why']['text']}", markup=False, highlight=False)
    scores = ", ".join(
        f"{name} {job[name + '_score'] or '-'}"
        for name in ("final", "risk", "latency", "vol", "funding", "liquidity")
    )
    facts = [
        ("scores", scores),
        ("decision", job["decision_code"] or "-"),
        ("deadline", _t(job["deadline"])),
        ("attempts", f"{job['attempts']} of {job['max_attempts']}"),
        ("worker", job["worker_id"] or "-"),
        ("lease until", _t(job["lease_expires_at"])),
        ("override by", job["override_by"] or "-"),
        ("created", _t(job["created_at"])),
        ("admitted", _t(job["admitted_at"])),
        ("finished", _t(job["finished_at"])),
    ]
    for name, value in facts:
        out.print(f"  {name + ':':<13}{value}", markup=False, highlight=False)
    legs = Table(
        "attempt", "leg", "exchange", "side", "qty", "status", "filled", "avg price",
        "client order id", title="legs",
    )  # fmt: skip
    for leg in data["legs"]:
        legs.add_row(
            str(leg["attempt"]),
            str(leg["leg_index"]) + (" (unwind)" if leg["unwinds_leg_id"] else ""),
            leg["exchange"],
            leg["side"],
            _qty(leg["quantity"]),
            leg["status"],
            _qty(leg["filled_quantity"]),
            _qty(leg["avg_price"]),
            leg["client_order_id"],
        )
    out.print(legs)
    reservations = Table("exchange", "tier", "amount $", "status", "released", title="capital")
    for r in data["reservations"]:
        reservations.add_row(
            r["exchange"],
            r["tier"],
            usd(r["amount_usd"]),
            r["status"],
            "-" if r["released_at"] is None else f"{_t(r['released_at'])} {r['release_reason']}",
        )
    out.print(reservations)
    events = Table("at", "from -> to", "actor", "code", "reason", title="events")
    for e in data["events"]:
        events.add_row(
            _t(e["at"]),
            f"{e['from_status'] or '-'} -> {e['to_status']}",
            e["actor"],
            e["code"] or "-",
            escape(e["reason"]),
        )
    out.print(events)
