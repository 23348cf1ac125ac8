"""The control row (``system_state``) as read, the database clock, tick lock and NOTIFY.

Statements that change the system's status live with the lifecycle's transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows


@dataclass(frozen=True, slots=True)
class SystemState:
    """The control row."""

    status: str
    risk_mode: str
    daily_loss_limit_usd: Decimal
    halt_reason: str | None
    consecutive_failures: int
    max_consecutive_failures: int
    updated_at: datetime
    updated_by: str | None


_COLUMNS = rows.columns(SystemState)


def get(conn: Connection) -> SystemState:
    """The control row as it is (no lock)."""
    return SystemState(*conn.execute(text(f"SELECT {_COLUMNS} FROM system_state")).one())


def lock(conn: Connection, *, shared: bool = False) -> SystemState:
    """The control row, locked for the rest of the transaction.

    ``shared`` (the tick): a share lock, taken alongside the workers' claims,
    which read the row ``FOR SHARE`` too; a halt or pause waits for both, so
    nothing starts after a halt has committed.
    """
    mode = "FOR SHARE" if shared else "FOR UPDATE"
    return SystemState(*conn.execute(text(f"SELECT {_COLUMNS} FROM system_state {mode}")).one())


def set_risk_mode(conn: Connection, *, risk_mode: str, actor: str) -> str:
    """Set the risk mode; returns the previous one."""
    return str(
        conn.execute(
            text(
                "UPDATE system_state s SET risk_mode = :mode, updated_at = now(), "
                "updated_by = :actor FROM (SELECT risk_mode FROM system_state FOR UPDATE) old "
                "RETURNING old.risk_mode"
            ),
            {"mode": risk_mode, "actor": actor},
        ).scalar_one()
    )


def set_daily_loss_limit(conn: Connection, *, limit_usd: Decimal, actor: str) -> Decimal:
    """Set the daily loss limit; returns the previous one."""
    return Decimal(
        conn.execute(
            text(
                "UPDATE system_state s SET daily_loss_limit_usd = :limit, updated_at = now(), "
                "updated_by = :actor FROM (SELECT daily_loss_limit_usd FROM system_state "
                "FOR UPDATE) old RETURNING old.daily_loss_limit_usd"
            ),
            {"limit": limit_usd, "actor": actor},
        ).scalar_one()
    )


@dataclass(frozen=True, slots=True)
class GlobalStreak:
    """The global streak of failed attempts as just written, its limit, and the status."""

    consecutive_failures: int
    max_consecutive_failures: int
    status: str


_RECORD_STREAK = text(
    "UPDATE system_state SET consecutive_failures = "
    "  CASE WHEN :reset THEN 0 ELSE consecutive_failures END + :add "
    "WHERE consecutive_failures <> CASE WHEN :reset THEN 0 "
    "  ELSE consecutive_failures END + :add "
    f"RETURNING {rows.columns(GlobalStreak)}"
)


def record_failure_streak(conn: Connection, *, reset: bool, add: int) -> GlobalStreak | None:
    """Write the global streak of failed attempts (reset by a success, then ``add``); the row
    is written (and locked) only on change, so a run of successes never touches it.
    Returns the new values, None if unchanged."""
    row = conn.execute(_RECORD_STREAK, {"reset": reset, "add": add}).first()
    return None if row is None else GlobalStreak(*row)


def db_now(conn: Connection) -> datetime:
    """The database clock: one clock for every host."""
    value: datetime = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
    return value


#: Advisory lock key serialising ticks across every scheduler process and host.
TICK_LOCK_KEY = 0x70657270_6274  # "perpbt"


def tick_try_lock(conn: Connection) -> bool:
    """Take the tick lock for this transaction, or return False if another tick holds it."""
    return bool(
        conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": TICK_LOCK_KEY}).scalar()
    )


#: NOTIFY channels: hints only, polling stays the source of truth.
CHANNEL_SUBMITTED = "perpbot_submitted"
CHANNEL_ADMITTED = "perpbot_admitted"
#: Workers NOTIFY this when jobs finish: capacity is free, the scheduler may admit more.
CHANNEL_FINISHED = "perpbot_finished"


def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Sent inside the caller's transaction: delivered only if it commits."""
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})
