"""The operators' audit trail: one ``control_events`` row per control action."""

from __future__ import annotations

from sqlalchemy import Connection, text

_INSERT = text(
    # clock_timestamp(): written after the guarded UPDATE got its lock, so an
    # event's time orders it after every claim that could not see it.
    "INSERT INTO control_events (at, actor, action, reason, details) "
    "VALUES (clock_timestamp(), :actor, :action, :reason, CAST(:details AS jsonb)) "
    "RETURNING id"
)


def insert(conn: Connection, *, actor: str, action: str, reason: str, details: str = "{}") -> int:
    """Write one control event (``details``: a JSON object's text); returns its id."""
    return int(
        conn.execute(
            _INSERT, {"actor": actor, "action": action, "reason": reason, "details": details}
        ).scalar_one()
    )
