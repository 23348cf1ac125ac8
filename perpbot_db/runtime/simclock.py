"""A scratch database whose clock is virtual: what the simulation runs the engine on.

Design note.  The engine reads the time from the database almost everywhere
(``now()``, ``statement_timestamp()``, ``clock_timestamp()`` in the queue's
statements, column defaults, deadlines, leases, counters' days).  Rather than
thread a ``now`` through every statement, the simulation gives the engine a
database of its own, created and dropped on the same server, in which those
names mean the virtual clock:

* schema ``sim`` (:func:`perpbot_db.store.simulate.clock_create`) holds a
  one-row table ``sim.clock(at)`` and functions ``sim.now()``,
  ``sim.statement_timestamp()``, ``sim.clock_timestamp()`` and
  ``sim.transaction_timestamp()`` that read it (``STABLE``: within one
  statement every call answers the same, as the real ones do);
* the database's ``search_path`` is ``public, sim, pg_catalog``.  PostgreSQL
  searches ``pg_catalog`` first only when the path does not name it; named
  after ``sim``, an unqualified ``now()`` resolves to ``sim.now()``.  ``public``
  comes first so the migrations still create their tables there (the first
  schema of the path is where unqualified objects are created) and it holds no
  function of these names;
* the migrations run on this database, so column defaults and views bind to
  the ``sim`` functions too (a default stores the function it resolved at
  creation, not its name).

No statement of the engine uses ``CURRENT_TIMESTAMP`` or ``LOCALTIMESTAMP``
(SQL keywords no search path overrides); ``tests/integration/test_simulate.py``
checks it.  Set per database (``ALTER DATABASE ... SET search_path``), the
path holds for every connection any part of the engine opens, pooled or not.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import URL, Engine, create_engine, text

from perpbot_db.runtime import migrate
from perpbot_db.settings import Settings
from perpbot_db.store import simulate as store_sim

SEARCH_PATH = "public, sim, pg_catalog"


class ClockError(RuntimeError):
    """The virtual clock was asked to go back."""


@dataclass
class SimDatabase:
    """The scratch database: its engine and its clock (``advance`` moves both sides)."""

    url: URL
    engine: Engine
    at: datetime

    def advance(self, at: datetime) -> None:
        """Set the database clock to ``at`` (never backwards), committed before return."""
        with self.engine.begin() as conn:
            if not store_sim.clock_set(conn, at):
                raise ClockError(f"the clock never goes back: {at.isoformat()} < {self.at}")
        self.at = at

    def read(self) -> datetime:
        with self.engine.connect() as conn:
            return store_sim.clock_read(conn)


def scratch_name() -> str:
    return f"perpbot_sim_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def scratch_database(
    server: URL, settings: Settings, start: datetime, *, name: str | None = None
) -> Iterator[SimDatabase]:
    """A migrated database on ``server`` with the exchanges of ``settings`` and its clock at
    ``start``; dropped when the block ends, whatever happens in it."""
    name = name or scratch_name()
    admin = create_engine(server, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            conn.execute(text(f'ALTER DATABASE "{name}" SET search_path = {SEARCH_PATH}'))
            # Thrown away at the end: a commit need not wait for its WAL to reach disk.
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        url = server.set(database=name)
        # No pre-ping (a round trip per checkout, a third of a step's): nothing else
        # uses this database and it lives only as long as this block.
        # LIFO: the loop runs one thing at a time, so it keeps reusing one warm connection
        # (its prepared statements) instead of cycling through five.
        engine = create_engine(
            url,
            pool_size=5,
            pool_use_lifo=True,
            connect_args={"application_name": "perpbot-simulate"},
        )
        try:
            with engine.begin() as conn:
                store_sim.clock_create(conn, start)
            migrate.upgrade(engine)
            migrate.sync_exchanges(engine, settings, actor="simulate", command="simulate")
            migrate.sync_risk_limits(engine, settings, actor="simulate", command="simulate")
            yield SimDatabase(url, engine, start)
        finally:
            engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
