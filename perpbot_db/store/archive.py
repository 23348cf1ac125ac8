"""The archive: finished jobs leave the hot tables with their legs and reservations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

#: ``pg_advisory_xact_lock`` keys (two-int form) of the archive: exclusive while
#: jobs move, shared while a submission checks idempotency keys.
_LOCK = "hashtext('perpbot.archive'), 0"


def lock(conn: Connection, *, shared: bool) -> None:
    """Until the transaction ends: exclusive for the archiver, shared for submitters."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(text(f"SELECT {fn}({_LOCK})"))


def try_lock(conn: Connection) -> bool:
    """The archiver's exclusive lock until the transaction ends, or False at once if a
    submission holds it shared: the archiver never queues in front of submitters."""
    return bool(conn.execute(text(f"SELECT pg_try_advisory_xact_lock({_LOCK})")).scalar())


COPY_FINISHED = text(
    """
    WITH picked AS (
        SELECT j.id FROM hedge_jobs j
        WHERE j.finished_at < :before
          AND NOT EXISTS (SELECT FROM capital_reservations r
                          WHERE r.job_id = j.id AND r.status = 'active')
        ORDER BY j.finished_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ),
    jobs AS (
        INSERT INTO hedge_jobs_archive
        SELECT * FROM hedge_jobs WHERE id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING id
    ),
    legs AS (
        INSERT INTO legs_archive SELECT * FROM legs WHERE job_id = ANY(ARRAY(SELECT id FROM picked))
    ),
    reservations AS (
        INSERT INTO capital_reservations_archive
        SELECT * FROM capital_reservations WHERE job_id = ANY(ARRAY(SELECT id FROM picked))
    )
    SELECT id FROM jobs
    """
)

DELETE_COPIED = text(
    """
    WITH legs AS (DELETE FROM legs WHERE job_id = ANY(CAST(:ids AS bigint[]))),
    reservations AS (
        DELETE FROM capital_reservations WHERE job_id = ANY(CAST(:ids AS bigint[]))
    ),
    jobs AS (DELETE FROM hedge_jobs WHERE id = ANY(CAST(:ids AS bigint[])) RETURNING id)
    SELECT count(*) FROM jobs
    """
)


def move_finished_jobs(conn: Connection, *, before: datetime, limit: int) -> list[int]:
    """Move up to ``limit`` jobs finished before ``before`` to the archive tables.

    Two statements in the caller's transaction (which holds :func:`lock`):
    the first locks the jobs (``SKIP LOCKED``; a job that still holds an active
    reservation stays) and copies them with their legs and reservations; the
    second deletes those rows (events stay in ``job_events``, which is
    insert-only and off the hot path).  The job rows stay locked in between, and a
    finished job's rows are not written by anyone else.  Returns the moved ids.
    """
    ids = [
        int(i) for i in conn.execute(COPY_FINISHED, {"before": before, "limit": limit}).scalars()
    ]
    if ids:
        deleted = conn.execute(DELETE_COPIED, {"ids": ids}).scalar_one()
        if deleted != len(ids):  # the rows are locked: this would be a bug, so roll back
            raise RuntimeError(f"copied {len(ids)} jobs to the archive but deleted {deleted}")
    return ids


def archived_status(conn: Connection, job_id: int) -> str | None:
    """The final status of an archived job (None: not in the archive)."""
    value = conn.execute(
        text("SELECT status FROM hedge_jobs_archive WHERE id = :id"), {"id": job_id}
    ).scalar()
    return None if value is None else str(value)
