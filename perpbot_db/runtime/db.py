"""Engines and the database a command talks to.

``PERPBOT_DATABASE_URL`` when set; otherwise the embedded PostgreSQL under
``PERPBOT_HOME``: the shared server if ``perpbot db start`` runs one, else a
server owned by this command for as long as it runs (a short command may also
borrow the server another process owns; a daemon may not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import URL, Engine, create_engine, make_url

from perpbot_db.runtime import embedded
from perpbot_db.settings import Settings


def engine_for(url: URL | str, *, pool_size: int = 5, application_name: str = "perpbot") -> Engine:
    return create_engine(
        make_url(url) if isinstance(url, str) else url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # A server that does not answer (a host gone, not a refused port) fails in 10 s
        # instead of hanging: callers treat it as a lost connection and retry.
        connect_args={"application_name": application_name, "connect_timeout": 10},
    )


def cluster_for(settings: Settings) -> embedded.Cluster:
    return embedded.Cluster(settings.home_dir)


@contextlib.contextmanager
def database_url(settings: Settings, *, daemon: bool = False) -> Iterator[URL]:
    """The URL to use for the duration of the block (starts an embedded server if needed).

    A ``daemon`` is refused an embedded server another process owns (see
    :func:`perpbot_db.runtime.embedded.running`)."""
    if settings.database_url is not None:
        yield make_url(settings.database_url.get_secret_value())
        return
    with embedded.running(cluster_for(settings), daemon=daemon) as url:
        yield url


def safe_url(url: URL) -> str:
    """The URL with its password masked, for messages and logs."""
    return url.render_as_string(hide_password=True)
