"""Engines and the database a command talks to.

``PERPBOT_DATABASE_URL`` when set; otherwise the embedded PostgreSQL under
``PERPBOT_HOME``: the shared server if ``perpbot db start`` runs one, else a
server owned by this command for as long as it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import URL, Engine, create_engine, make_url

from perpbot_db import embedded
from perpbot_db.settings import Settings


def engine_for(url: URL | str, *, pool_size: int = 5, application_name: str = "perpbot") -> Engine:
    return create_engine(
        make_url(url) if isinstance(url, str) else url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"application_name": application_name},
    )


def cluster_for(settings: Settings) -> embedded.Cluster:
    return embedded.Cluster(settings.home_dir)


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[URL]:
    """The URL to use for the duration of the block (starts an embedded server if needed)."""
    if settings.database_url is not None:
        yield make_url(settings.database_url.get_secret_value())
        return
    with embedded.running(cluster_for(settings)) as url:
        yield url


def safe_url(url: URL) -> str:
    """The URL with its password masked, for messages and logs."""
    return url.render_as_string(hide_password=True)
