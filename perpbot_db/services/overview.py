"""Read-only views of the system for ``perpbot status`` and ``perpbot jobs``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from perpbot_db.domain.lifecycle import JOB_STATUSES
from perpbot_db.store import queries


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def status_snapshot(conn: Connection) -> dict[str, Any]:
    """System state, jobs by status, and per exchange: equity, safe mode, capital, jobs."""
    state = queries.system_state_get(conn)
    counts = queries.job_count_by_status(conn)
    by_exchange = queries.job_count_by_exchange_status(conn)
    exchanges = []
    for row in queries.exchange_list(conn):
        exchanges.append(
            {
                **{k: _plain(v) for k, v in row.items()},
                "jobs": by_exchange.get(row["name"], {}),
            }
        )
    return {
        "system": {k: _plain(v) for k, v in state.items()},
        "jobs": {status: counts.get(status, 0) for status in JOB_STATUSES},
        "jobs_total": sum(counts.values()),
        "exchanges": exchanges,
    }


def job_rows(conn: Connection, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    return [
        {k: _plain(v) for k, v in row.items()}
        for row in queries.job_list(conn, status=status, limit=limit)
    ]
