"""Jobs: ``perpbot submit``, and the read commands ``jobs``, ``status`` and ``job ID``.

The read commands answer at once: what they do is :mod:`perpbot_db.cli.reads`
(the driver alone, no typer, pydantic, rich, SQLAlchemy or Alembic on their way);
this module declares them to typer.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from perpbot_db.cli import reads
from perpbot_db.cli.app import app, connected, err, fail, out, settings_or_exit
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


# The read commands: what they do is perpbot_db.cli.reads (run directly by main when it
# can parse the arguments itself); here they are declared to typer from the same
# parameters, for --help and for the arguments main leaves to typer.
def _option(param: reads.Param) -> Any:
    if param.kind == "flag":
        return typer.Option(param.flag, help=param.help)
    return typer.Option(param.flag, min=param.low, max=param.high, help=param.help)


@app.command()
def jobs(
    status: Annotated[JobStatus | None, _option(reads.STATUS)] = reads.STATUS.default,
    limit: Annotated[int, _option(reads.LIMIT)] = reads.LIMIT.default,
    as_json: Annotated[bool, _option(reads.COMMANDS["jobs"].options["--json"])] = False,
) -> None:
    """List the newest jobs, each with its last decision (why it waits or ended)."""
    reads.jobs(status=None if status is None else status.value, limit=limit, as_json=as_json)


@app.command()
def status(
    as_json: Annotated[bool, _option(reads.JSON_FLAG)] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="A live view of the monitoring state (the console's), redrawn every "
            "--interval; with --json one state per line.  Ctrl-C ends it.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, max=3600, help="With --watch: seconds.")
    ] = 2.0,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="With --watch: stop after N views.")
    ] = None,
) -> None:
    """System state, the scheduler leader, jobs by status, each exchange's equity,
    capital and jobs, and the protection locks in force."""
    if watch:
        from perpbot_db.cli.watch import watch as watch_state

        watch_state(settings_or_exit(), interval_s=interval, as_json=as_json, count=count)
        return
    if count is not None or interval != 2.0:
        raise typer.BadParameter("--interval and --count go with --watch", param_hint="--watch")
    reads.status(as_json=as_json)


@app.command("job")
def job_cmd(
    job_id: Annotated[
        int, typer.Argument(min=reads.JOB_ID.low, max=reads.JOB_ID.high, help=reads.JOB_ID.help)
    ],
    as_json: Annotated[bool, _option(reads.JSON_FLAG)] = False,
) -> None:
    """One job: why it waits (or ended), its legs, capital reservations and event timeline."""
    reads.job(job_id=job_id, as_json=as_json)
