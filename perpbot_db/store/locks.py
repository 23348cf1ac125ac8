"""The SQL of protection locks and of the leader's election.

``protection_locks`` rows are written by :mod:`perpbot_db.services.protect`
(one per tripped protection, at most one active per scope, target and code)
and released there too: at their ``until`` by the leader, or by an operator.

The leader holds a session-level advisory lock on its own connection
(:mod:`perpbot_db.runtime.leader`); these statements take, check and give it up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from perpbot_db.domain.protections import Lock, ProtectionCode, Scope


@dataclass(frozen=True, slots=True)
class LockRow:
    id: int
    scope: Scope
    target: str
    code: ProtectionCode
    reason: str
    context: dict[str, Any]
    created_by: str
    created_at: datetime
    until: datetime
    released_at: datetime | None
    released_by: str | None


_COLUMNS = (
    "id, scope, target, code, reason, context, created_by, created_at, until, "
    "released_at, released_by"
)


def _row(r: Any) -> LockRow:
    return LockRow(
        id=int(r.id),
        scope=Scope(r.scope),
        target=str(r.target),
        code=ProtectionCode(r.code),
        reason=str(r.reason),
        context=dict(r.context),
        created_by=str(r.created_by),
        created_at=r.created_at,
        until=r.until,
        released_at=r.released_at,
        released_by=r.released_by,
    )


def protection_lock_insert(
    conn: Connection, lock: Lock, *, created_by: str, now: datetime
) -> int | None:
    """Write the lock unless one with its scope, target and code is active; its id, or
    None when one already was (the unique partial index decides, race-free).

    An active lock already past its ``until`` (the leader has not released it yet)
    that trips again is renewed instead, and its id returned: its effect is applied
    again, so a blacklist or a safe mode never lapses while its cause lasts."""
    return conn.execute(
        text(
            "INSERT INTO protection_locks (scope, target, code, reason, context, created_by, "
            "created_at, until) VALUES (:scope, :target, :code, :reason, "
            "CAST(:context AS jsonb), :by, :now, :until) "
            "ON CONFLICT (scope, target, code) WHERE released_at IS NULL DO UPDATE SET "
            "reason = EXCLUDED.reason, context = EXCLUDED.context, until = EXCLUDED.until "
            "WHERE protection_locks.until <= EXCLUDED.created_at "
            "RETURNING id"
        ),
        {
            "scope": lock.scope.value,
            "target": lock.target,
            "code": lock.code.value,
            "reason": lock.reason,
            "context": json.dumps(dict(lock.context), sort_keys=True),
            "by": created_by,
            "now": now,
            "until": lock.until,
        },
    ).scalar()


def protection_lock_release_expired(conn: Connection, *, now: datetime) -> list[LockRow]:
    """Release every active lock whose ``until`` has passed; returns them as released."""
    rows = conn.execute(
        text(
            f"UPDATE protection_locks SET released_at = :now, released_by = 'expired' "
            f"WHERE released_at IS NULL AND until <= :now RETURNING {_COLUMNS}"
        ),
        {"now": now},
    ).all()
    return sorted((_row(r) for r in rows), key=lambda r: r.id)


def protection_lock_release(
    conn: Connection, *, scope: Scope, target: str, actor: str
) -> list[LockRow]:
    """An operator ends every active lock on a target (leave safe mode, clear a halt)."""
    rows = conn.execute(
        text(
            f"UPDATE protection_locks SET released_at = statement_timestamp(), "
            f"released_by = :actor WHERE released_at IS NULL AND scope = :scope "
            f"AND target = :target RETURNING {_COLUMNS}"
        ),
        {"scope": scope.value, "target": target, "actor": actor},
    ).all()
    return sorted((_row(r) for r in rows), key=lambda r: r.id)


def protection_lock_list(
    conn: Connection, *, active_only: bool = True, limit: int = 1000
) -> Sequence[LockRow]:
    """Locks, newest first (active ones only by default): what the console shows."""
    where = "WHERE released_at IS NULL" if active_only else ""
    rows = conn.execute(
        text(f"SELECT {_COLUMNS} FROM protection_locks {where} ORDER BY id DESC LIMIT :n"),
        {"n": limit},
    ).all()
    return [_row(r) for r in rows]


def exchange_extend_safe_mode(conn: Connection, *, name: str, until: datetime) -> bool:
    """An exchange already in a timed safe mode stays in it until at least ``until``
    (another lock on it); one held until an operator lets it out keeps no end."""
    result = conn.execute(
        text(
            "UPDATE exchanges SET safe_mode_until = :until, updated_at = now() "
            "WHERE name = :name AND safe_mode AND safe_mode_until < :until"
        ),
        {"name": name, "until": until},
    )
    return bool(result.rowcount)


# -- the leaders --------------------------------------------------------------------------

#: The session advisory locks an election is held by (two-int form ``hashtext(name), 0``),
#: each on its holder's own connection: the scheduler that runs the cluster's maintenance,
#: and the one process that runs the strategies' producers.
LEADER_LOCK = "perpbot.leader"
PRODUCERS_LOCK = "perpbot.producers"

#: One lock of ``:name`` in ``pg_locks`` (an advisory lock's first int is its ``classid``).
_HELD = (
    "l.locktype = 'advisory' AND l.granted AND l.classid = hashtext(:name)::oid "
    "AND l.objid = 0 AND l.objsubid = 2"
)


def leader_try_acquire(conn: Connection, name: str = LEADER_LOCK) -> bool:
    """Take the lock ``name`` for this session, or False at once if another holds it."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(hashtext(:name), 0)"), {"name": name}
        ).scalar()
    )


def leader_holds(conn: Connection, name: str = LEADER_LOCK) -> bool:
    """Whether this session still holds the lock ``name`` (read from ``pg_locks``)."""
    mine = f"SELECT EXISTS (SELECT FROM pg_locks l WHERE l.pid = pg_backend_pid() AND {_HELD})"
    return bool(conn.execute(text(mine), {"name": name}).scalar())


def leader_release(conn: Connection, name: str = LEADER_LOCK) -> bool:
    return bool(
        conn.execute(text("SELECT pg_advisory_unlock(hashtext(:name), 0)"), {"name": name}).scalar()
    )


def leader_current(conn: Connection, name: str = LEADER_LOCK) -> str | None:
    """The ``application_name`` of the session holding the lock ``name`` in this database,
    if any (``pg_locks`` lists every database's advisory locks)."""
    value = conn.execute(
        text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            f"WHERE {_HELD} "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"name": name},
    ).scalar()
    return None if value is None else str(value)
