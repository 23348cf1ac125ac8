"""Worker processes: registration, heartbeat (which renews their jobs' leases), stop."""

from __future__ import annotations

from sqlalchemy import Connection, text


def register(conn: Connection, *, worker_id: str, host: str, pid: int, concurrency: int) -> None:
    """Record a worker (again, if its id comes back): heartbeat now, not stopped."""
    conn.execute(
        text(
            "INSERT INTO workers (id, host, pid, concurrency) VALUES (:id, :host, :pid, :c) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL"
        ),
        {"id": worker_id, "host": host, "pid": pid, "c": concurrency},
    )


_HEARTBEAT = text(
    """
    WITH renewed AS (
        UPDATE hedge_jobs SET lease_expires_at = now() + make_interval(secs => :lease_s)
        WHERE status = 'running' AND worker_id = :worker
        RETURNING id
    ), beat AS (
        UPDATE workers SET heartbeat_at = now() WHERE id = :worker RETURNING id
    )
    SELECT count(*) FROM renewed
    """
)


def heartbeat(conn: Connection, *, worker_id: str, lease_s: float) -> int:
    """Renew the lease of every job the worker runs (``lease_s`` from now); count them."""
    return int(conn.execute(_HEARTBEAT, {"worker": worker_id, "lease_s": lease_s}).scalar_one())


def stop(conn: Connection, *, worker_id: str) -> None:
    """Mark the worker stopped."""
    conn.execute(text("UPDATE workers SET stopped_at = now() WHERE id = :id"), {"id": worker_id})


LIVE_COUNT = text(
    "SELECT count(*) FROM workers WHERE stopped_at IS NULL "
    "AND heartbeat_at > now() - make_interval(secs => :within_s)"
)


def live_count(conn: Connection, *, within_s: float) -> int:
    """Workers not stopped whose last heartbeat is at most ``within_s`` old."""
    return int(conn.execute(LIVE_COUNT, {"within_s": within_s}).scalar_one())
