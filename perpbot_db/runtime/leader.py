"""Leader election through the database: once-per-cluster work runs on one scheduler.

Design note.  Lease recovery, the archive and protection expiry must run once
per cluster, not once per scheduler process.  Every scheduler runs a
:class:`Leader`; before each maintenance round it asks :meth:`Leader.is_leader`,
and only the one that holds the leader lock does the work.

The leader lock is a session-level advisory lock (``pg_try_advisory_lock``)
held by a dedicated connection in autocommit mode (never idle in a
transaction, so it pins no snapshot).  PostgreSQL releases it the moment that
session ends, so a leader that dies, is killed or loses its connection is
replaced at the standby's next round: no lease to wait out, no clock to trust.
Each round the leader checks in ``pg_locks`` that its session still holds the
lock; a failed check (connection gone) steps it down at once, and it competes
again next round on a fresh connection.  On a clean stop it resigns (unlocks)
so a standby takes over at its next round.  The session's
``application_name`` is the process identity: ``pg_stat_activity`` joined to
``pg_locks`` names the current leader (:func:`perpbot_db.store.locks.leader_current`).

Borrowed: from River's elector (``internal/leadership``), that a leader
confirms its term in the database before it acts on it and steps down
conservatively when it cannot, and that it resigns explicitly on shutdown
(``LeaderResign``) so a follower need not wait; from Oban's ``Peers.Postgres``,
that the leader removes itself on ``terminate`` and that a connection error
during an election makes the peer a follower (``leader?: false``) until the
next election instead of crashing it.  Not borrowed: both keep a
lease row with an expiry (``river_leader``, ``oban_peers``) that a standby must
wait out; the advisory lock needs no expiry, its lifetime is the session's.

A second election, on its own lock (``perpbot.producers``), picks the one
process of the cluster that runs the strategies' producers, whether they run
inside ``perpbot run`` or alone as ``perpbot produce``: two producers on one
market would send twice the jobs (each key is taken once, but a new window
makes new keys), and the daemon that leads the maintenance need not be the one
that produces.

What the lock does not promise: between the leader's check and the end of its
round its session may die and a standby may start a round too.  Every
maintenance statement is safe to run twice at once (recovery takes jobs with
``FOR UPDATE SKIP LOCKED`` and re-checked leases, the archive holds its own
advisory lock, lock expiry is a guarded UPDATE), so leadership saves work and
keeps one writer in the normal case; correctness never rests on it.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from perpbot_db.store import locks

log = logging.getLogger("perpbot.leader")


class Leader:
    """One process's place in the election held by the advisory lock ``lock``: the
    scheduler's (``locks.LEADER_LOCK``, the default) or the producers'
    (``locks.PRODUCERS_LOCK``: one process of the cluster runs the strategies)."""

    def __init__(self, engine: Engine, identity: str, *, lock: str = locks.LEADER_LOCK) -> None:
        self.engine = engine
        self.identity = identity
        self.lock = lock
        self._conn: Connection | None = None
        self._leading = False
        self._mutex = threading.Lock()  # APScheduler thread and stop() may both call in

    @property
    def leading(self) -> bool:
        """What the last :meth:`is_leader` found (no database round trip)."""
        return self._leading

    def is_leader(self) -> bool:
        """Confirm or take the leadership now; False when another session holds it or
        this one's connection was lost (it steps down and competes again next time).
        A database that cannot be reached raises (the caller's outage handling)."""
        with self._mutex:
            try:
                conn = self._connection()
                if self._leading:
                    if locks.leader_holds(conn, self.lock):
                        return True
                    log.warning("%s lost the leadership: its lock is gone", self.identity)
                    self._leading = False
                elif locks.leader_try_acquire(conn, self.lock):
                    log.info("%s took the lock %s", self.identity, self.lock)
                    self._leading = True
                return self._leading
            except DBAPIError as exc:
                if self._leading:
                    log.warning("%s lost the leadership: its connection failed", self.identity)
                self._drop()
                if exc.connection_invalidated:
                    return False  # the session died: compete again next round
                raise

    def resign(self) -> None:
        """Give the leadership up (clean stop): a standby takes over at its next round."""
        with self._mutex:
            if self._conn is not None and self._leading:
                try:
                    locks.leader_release(self._conn, self.lock)
                    log.info("%s resigned the leadership", self.identity)
                except DBAPIError:
                    pass  # the session is gone: so is its lock
            self._drop()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(
                text("SELECT set_config('application_name', :name, false)"),
                {"name": self.identity[:63]},
            )
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        """Forget the connection and close it for good (never back to the pool: its
        session carried the lock and the identity)."""
        self._leading = False
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.invalidate()
            conn.close()
        except Exception:  # a dead connection may fail to close: it is gone either way
            log.debug("closing the leader connection failed", exc_info=True)
