"""Keep the hot tables small: finished jobs move to the archive tables.

Every tick, claim and finish updates and walks ``hedge_jobs``, ``legs`` and
``capital_reservations``.  Left in place, finished rows make those tables and
indexes grow without bound, vacuum takes longer each round and throughput
decays (Oban calls its pruner critical; PgQueuer moves done jobs to a log
table).  So a job finished more than ``archive_after_s`` ago moves, with its
legs and reservations, to ``<table>_archive`` (same columns); the
``<table>_all`` views show live and archived rows together, and that is what
``perpbot audit`` and the listings read.  Nothing is deleted for good.
``job_events`` stays as it is: insert-only (no dead rows) and read by no hot
statement, its size costs the queue nothing (migration 0005).

Safety: the archiver holds an exclusive advisory lock per batch, so a
submission checking idempotency keys (under the shared lock) sees a job either
live or archived, never neither; a job that still holds an active reservation
never moves.  A submission is one transaction however long its input, and
holds the shared lock until it commits; the archiver only *tries* its lock and
skips the round if a submission holds it (a waiting exclusive request would
queue every later submitter behind it).  The next round catches up.  Runs on
the leader scheduler next to crash recovery (:mod:`perpbot_db.runtime.leader`),
and by hand as ``perpbot db archive``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from perpbot_db.store import archive, system

log = logging.getLogger("perpbot.archive")


@dataclass(frozen=True)
class ArchiveReport:
    jobs: int
    batches: int


def archive_finished(
    engine: Engine, *, after_s: float, batch: int, max_batches: int = 100
) -> ArchiveReport:
    """Move jobs finished more than ``after_s`` seconds ago (database clock), a batch per
    transaction, until a batch comes back short, ``max_batches`` ran, or a submission
    holds the archive lock (then the round ends early: nothing waits on submitters)."""
    moved = batches = 0
    while batches < max_batches:
        with engine.begin() as conn:
            if not archive.try_lock(conn):
                log.debug("archive round skipped: a submission holds the archive lock")
                break
            before = system.db_now(conn) - timedelta(seconds=after_s)
            ids = archive.move_finished_jobs(conn, before=before, limit=batch)
        batches += 1
        moved += len(ids)
        if len(ids) < batch:
            break
    if moved:
        log.info("archived %d finished job(s) in %d batch(es)", moved, batches)
    return ArchiveReport(moved, batches)
