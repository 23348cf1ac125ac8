"""Time-bounded blacklist entries: a symbol or an exchange admission must not touch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from perpbot_db.store import rows


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    kind: str  # symbol | exchange
    target: str
    code: str
    reason: str
    expires_at: datetime


_ACTIVE = text(
    f"SELECT {rows.columns(BlacklistEntry)} FROM blacklist "
    "WHERE lifted_at IS NULL AND expires_at > :now"
)


def active(conn: Connection, *, now: datetime) -> list[BlacklistEntry]:
    """The entries in force at ``now`` (not lifted, not expired)."""
    return [BlacklistEntry(*row) for row in conn.execute(_ACTIVE, {"now": now})]


def insert(
    conn: Connection,
    *,
    kind: str,
    target: str,
    code: str,
    reason: str,
    created_by: str,
    now: datetime,
    expires_at: datetime,
    details: str = "{}",
) -> None:
    """Blacklist ``target`` from ``now`` until ``expires_at`` (``details``: JSON text)."""
    conn.execute(
        text(
            "INSERT INTO blacklist (kind, target, code, reason, created_by, created_at, "
            "expires_at, details) VALUES (:kind, :target, :code, :reason, :by, :now, :exp, "
            "CAST(:details AS jsonb))"
        ),
        {
            "kind": kind,
            "target": target,
            "code": code,
            "reason": reason,
            "by": created_by,
            "now": now,
            "exp": expires_at,
            "details": details,
        },
    )
