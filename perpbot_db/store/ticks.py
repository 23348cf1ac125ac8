"""``scheduler_ticks``: the last admission tick of each scheduler process.

Written at the end of every tick that ran, in the tick's own transaction (one
upsert); read by the console and the health checks to tell a live scheduler
from a dead one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows as typed


@dataclass(frozen=True, slots=True)
class TickRecord:
    """What one tick did (``skipped``: why it admitted nothing, if it did not get that far)."""

    scheduler: str
    duration_ms: Decimal
    rescored: int
    admitted: int
    rejected: int
    expired: int
    skipped: str | None


@dataclass(frozen=True, slots=True)
class SchedulerTickRow:
    scheduler: str
    last_tick_at: datetime
    duration_ms: Decimal
    rescored: int
    admitted: int
    rejected: int
    expired: int
    skipped: str | None
    ticks: int


RECORD = text(
    """
    INSERT INTO scheduler_ticks AS t (scheduler, last_tick_at, duration_ms, rescored, admitted,
                                      rejected, expired, skipped)
    VALUES (:scheduler, now(), :duration_ms, :rescored, :admitted, :rejected, :expired,
            :skipped)
    ON CONFLICT (scheduler) DO UPDATE SET
        last_tick_at = EXCLUDED.last_tick_at, duration_ms = EXCLUDED.duration_ms,
        rescored = EXCLUDED.rescored, admitted = EXCLUDED.admitted,
        rejected = EXCLUDED.rejected, expired = EXCLUDED.expired,
        skipped = EXCLUDED.skipped, ticks = t.ticks + 1
    """
)


def record(conn: Connection, tick: TickRecord) -> None:
    """Record a tick that ran (the database clock of this transaction is its time)."""
    conn.execute(RECORD, typed.values(tick))


LATEST = text(
    f"SELECT {typed.columns(SchedulerTickRow)} FROM scheduler_ticks "
    "ORDER BY last_tick_at DESC LIMIT :limit"
)


def latest(conn: Connection, *, limit: int = 10) -> list[SchedulerTickRow]:
    """The schedulers that ticked, the most recent first."""
    return [SchedulerTickRow(*row) for row in conn.execute(LATEST, {"limit": limit})]


SECONDS_SINCE_LAST = text(
    "SELECT extract(epoch FROM now() - max(last_tick_at))::float8 FROM scheduler_ticks"
)


def seconds_since_last(conn: Connection) -> float | None:
    """How long ago any scheduler last ticked, by the database clock (None: never)."""
    value = conn.execute(SECONDS_SINCE_LAST).scalar_one()
    return None if value is None else float(value)
