"""A read-only connection for the commands that only look (``status``, ``jobs``, ``job``).

The driver alone: no SQLAlchemy, no Alembic, so these commands answer at once.
It talks to ``PERPBOT_DATABASE_URL`` or the embedded PostgreSQL exactly as every
other command does (:mod:`perpbot_db.runtime.db`), refuses a schema behind head
with the same hint, and never writes: its transaction is READ ONLY and rolled back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from perpbot_db.runtime import embedded, revisions

if TYPE_CHECKING:
    from perpbot_db.settings import Settings

_SCHEMES = ("postgresql", "postgres")


class ReadError(Exception):
    """One line for the operator: the database is unreachable, or its schema behind."""


def conninfo_from_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) as a libpq URI for the driver."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in _SCHEMES:
        raise ReadError("setting database_url: not a postgresql:// URL")
    return f"postgresql://{rest}"


@contextlib.contextmanager
def _connect_kwargs(settings: Settings) -> Iterator[dict[str, Any]]:
    if settings.database_url is not None:
        yield {"conninfo": conninfo_from_url(settings.database_url.get_secret_value())}
        return
    cluster = embedded.Cluster(settings.home_dir)
    with embedded.serving(cluster) as port:
        yield dict(cluster.connect_kwargs(port))


def current_revision(conn: psycopg.Connection[Any]) -> str | None:
    """What ``alembic_version`` holds (None before the first upgrade)."""
    present = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if present is None or not present[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


@contextlib.contextmanager
def reading(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """A READ ONLY connection on the configured database with its schema at head."""
    try:
        with _connect_kwargs(settings) as kwargs:
            conn = psycopg.connect(
                **kwargs, connect_timeout=10, application_name="perpbot", autocommit=False
            )
            try:
                conn.read_only = True
                behind = revisions.behind_message(current_revision(conn), revisions.head_revision())
                if behind is not None:
                    raise ReadError(behind)
                yield conn
            finally:
                conn.close()  # the read-only transaction ends unwritten
    except embedded.EmbeddedError as exc:
        raise ReadError(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise ReadError(f"cannot reach the database: {exc}") from None
