"""The ``perpbot`` application and what its commands share.

Light on purpose: ``perpbot --help`` imports this, typer and the command
modules, nothing else.  A command imports what it needs (SQLAlchemy, Alembic,
APScheduler, the workers, rich) inside its function; the read commands
(``status``, ``jobs``, ``job``) need none of this module: they are
:mod:`perpbot_db.cli.reads`, which ``perpbot_db.cli.main`` runs without typer.

Every command loads the settings first (a wrong one: one line naming it, exit
2), then talks to ``PERPBOT_DATABASE_URL`` or the embedded PostgreSQL.
Commands that read never write: only ``perpbot db upgrade`` (and ``perpbot demo``,
which starts with it) migrates the schema (any other command refuses a schema
behind head, with that hint), and only those and ``perpbot run`` bring
``exchanges`` in line with the settings (audited).  ``scheduler`` and ``worker``
do not: they may run on other hosts with other files.  The daemons (``run``,
``scheduler``, ``worker`` without ``--once``) wait for an unreachable database
instead of exiting, and never run on an embedded server another process owns.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Engine

    from perpbot_db.settings import Settings
    from perpbot_db.store import reconnect

# Plain (click) help and usage errors: typer's rich formatting imports rich, its
# markdown renderer and markdown-it, and doubles what `perpbot --help` costs.
app = typer.Typer(
    help="perpbot-db: cross-exchange perpetual-futures hedge jobs run from PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
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


class _LazyConsole:
    """A rich console made on first use (rich costs a command ~0.1 s to import)."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            # Off a terminal rich would wrap tables at 80 columns; give pipes and files room.
            self._console = Console(
                stderr=self._stderr, soft_wrap=True, width=None if stream.isatty() else 200
            )
        return getattr(self._console, name)


out = cast("Console", _LazyConsole(stderr=False))
err = cast("Console", _LazyConsole(stderr=True))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr (as is: no markup) and return the exit to raise."""
    sys.stdout.flush()
    sys.stderr.write(f"perpbot: {message}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    from perpbot_db.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


def actor_or_user(actor: str | None) -> str:
    import getpass

    return actor or getpass.getuser()


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
    from sqlalchemy.exc import OperationalError

    from perpbot_db.runtime import db, embedded, migrate
    from perpbot_db.store import reconnect

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
    """The commands that trade refuse to start without an exchange, or with a ccxt venue
    that may not start (live without ``live = true``, no keys): exit 2, one line, before
    any database is touched."""
    if not settings.exchanges:
        from perpbot_db.runtime import migrate

        raise fail(f"{command}: {migrate.no_exchange_reason(settings)}; nothing to trade")
    real = [name for name, ex in sorted(settings.exchanges.items()) if ex.venue == "ccxt"]
    if real:
        from perpbot_db.settings import SettingsError
        from workers.venues.ccxt_venues import plan_venue

        try:
            for name in real:
                plan_venue(name, settings.exchanges[name], settings)
        except SettingsError as exc:
            raise fail(f"{command}: {exc}") from None
