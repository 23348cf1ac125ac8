"""Read-only views of the system for ``perpbot status`` and ``perpbot jobs``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from perpbot_db.domain.lifecycle import JOB_STATUSES
from perpbot_db.store import exchanges, jobs, rows, system


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def status_snapshot(conn: Connection) -> dict[str, Any]:
    """System state, jobs by status, and per exchange: equity, safe mode, capital, jobs."""
    state = system.get(conn)
    counts = jobs.count_by_status(conn)
    by_exchange = jobs.count_by_exchange_status(conn)
    accounts = [
        {
            **{k: _plain(v) for k, v in rows.values(row).items()},
            "jobs": by_exchange.get(row.name, {}),
        }
        for row in exchanges.summaries(conn)
    ]
    return {
        "system": {k: _plain(v) for k, v in rows.values(state).items()},
        "jobs": {status: counts.get(status, 0) for status in JOB_STATUSES},
        "jobs_total": sum(counts.values()),
        "exchanges": accounts,
    }


def job_rows(conn: Connection, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    return [
        {k: _plain(v) for k, v in rows.values(row).items()}
        for row in jobs.list_recent(conn, status=status, limit=limit)
    ]
