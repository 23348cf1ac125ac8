"""``perpbot db ...``: schema upgrades, the archive and the embedded server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from perpbot_db.cli.app import (
    actor_or_user,
    connected,
    db_app,
    err,
    fail,
    out,
    settings_or_exit,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from perpbot_db.runtime import migrate
    from perpbot_db.settings import Settings


def sync_exchanges(engine: Engine, settings: Settings, command: str) -> migrate.SyncReport:
    """``db upgrade`` and ``run``: bring ``exchanges`` in line, print what changed."""
    from perpbot_db.runtime import migrate

    report = migrate.sync_exchanges(engine, settings, actor=actor_or_user(None), command=command)
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


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the schema to head (idempotent) and sync `exchanges` with the settings.

    Each exchange added, changed, enabled or disabled is a control event naming the
    settings file.  With no exchange configured the table is left as it is."""
    from perpbot_db.cli.risk import sync_limits
    from perpbot_db.runtime import migrate

    settings = settings_or_exit()
    with connected(settings, upgrade=True) as engine:
        before = migrate.current_revision(engine)
        if before != migrate.head_revision():
            migrate.upgrade(engine)
        after = migrate.current_revision(engine)
        was = "already at head" if before == after else f"upgraded from {before or 'none'}"
        out.print(f"schema at {after} ({was})")
        sync_exchanges(engine, settings, "db upgrade")
        sync_limits(engine, settings, "db upgrade")


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
    import dataclasses
    import json

    from perpbot_db.services import archive

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
    from sqlalchemy.exc import OperationalError

    from perpbot_db.runtime import db, embedded, migrate

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
    from perpbot_db.runtime import embedded

    settings = settings_or_exit()
    try:
        stopped = embedded.stop_shared(embedded.Cluster(settings.home_dir))
    except embedded.EmbeddedError as exc:
        raise fail(str(exc), 1) from None
    out.print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@db_app.command("status")
def db_status() -> None:
    """Say whether the embedded PostgreSQL runs and who owns it (exit 1 when it does not)."""
    from perpbot_db.runtime import embedded

    settings = settings_or_exit()
    if settings.database_url is not None:
        from sqlalchemy import make_url

        from perpbot_db.runtime import db

        url = db.safe_url(make_url(settings.database_url.get_secret_value()))
        out.print(f"external database {url}")
        return
    cluster = embedded.Cluster(settings.home_dir)
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
    from sqlalchemy import make_url

    from perpbot_db.runtime import db

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
