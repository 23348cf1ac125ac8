"""A read-only connection for the commands that only look (``status``, ``jobs``, ``job``).

The driver alone: no SQLAlchemy, no Alembic, so these commands answer at once.
It talks to ``PERPBOT_DATABASE_URL`` or the embedded PostgreSQL exactly as every
other command does (:mod:`perpbot_db.runtime.db`), refuses a schema behind head
with the same hint, and never writes: its transaction is READ ONLY and rolled back.
It takes the two settings it needs (the URL and the home directory), so a read
command may get them without building the full settings
(:mod:`perpbot_db.settings_light`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from perpbot_db.runtime import revisions

#: The ``application_name`` of a read command's session (``pg_stat_activity``).
APPLICATION_NAME = "perpbot"

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
def _connect_kwargs(database_url: str | None, home_dir: Path) -> Iterator[dict[str, Any]]:
    if database_url is not None:
        yield {"conninfo": conninfo_from_url(database_url)}
        return
    from perpbot_db.runtime import embedded  # only without a URL: it costs an import

    try:
        cluster = embedded.Cluster(home_dir)
        with embedded.serving(cluster) as port:
            yield dict(cluster.connect_kwargs(port))
    except embedded.EmbeddedError as exc:
        raise ReadError(str(exc)) from None


def current_revision(conn: psycopg.Connection[Any]) -> str | None:
    """What ``alembic_version`` holds (None before the first upgrade)."""
    present = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if present is None or not present[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


@contextlib.contextmanager
def reading(database_url: str | None, home_dir: Path) -> Iterator[psycopg.Connection[Any]]:
    """A READ ONLY connection on ``database_url`` (else the embedded PostgreSQL under
    ``home_dir``) with its schema at head."""
    try:
        with _connect_kwargs(database_url, home_dir) as kwargs:
            conn = psycopg.connect(
                **kwargs, connect_timeout=10, application_name=APPLICATION_NAME, autocommit=False
            )
            try:
                conn.read_only = True
                behind = revisions.behind_message(current_revision(conn), revisions.head_revision())
                if behind is not None:
                    raise ReadError(behind)
                yield conn
            finally:
                conn.close()  # the read-only transaction ends unwritten
    except psycopg.OperationalError as exc:
        said = " ".join(line.strip() for line in str(exc).splitlines())  # one line
        raise ReadError(f"cannot reach the database: {said}") from None
