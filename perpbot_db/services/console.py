"""What the HTTP console needs besides the services it calls: the audit of refused
changes (a wrong or missing token, a client over its failure limit), and readiness.

The event names the client and the path, never the credential that was sent.
"""

from __future__ import annotations

import json

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from perpbot_db.store import control_events, ticks, workers

ACTION_REFUSED = "api_change_refused"


def audit_refused(engine: Engine, *, client: str, method: str, path: str, verdict: str) -> None:
    """One control event for a change the API refused."""
    with engine.begin() as conn:
        control_events.insert(
            conn,
            actor=f"api:{client}",
            action=ACTION_REFUSED,
            reason=f"{method} {path}: {verdict}",
            details=json.dumps(
                {"client": client, "method": method, "path": path, "verdict": verdict}
            ),
        )


def readiness(engine: Engine, *, tick_within_s: float, heartbeat_within_s: float) -> dict[str, str]:
    """``/readyz``'s checks, each ``ok`` or why not: the database answers, a scheduler
    ticked within ``tick_within_s``, a worker beat within ``heartbeat_within_s``."""
    try:
        with engine.connect() as conn:
            since = ticks.seconds_since_last(conn)
            live = workers.live_count(conn, within_s=heartbeat_within_s)
    except DBAPIError as exc:
        return {"database": f"unreachable: {type(exc.orig).__name__}"}
    checks = {"database": "ok"}
    if since is None:
        checks["tick"] = "no scheduler has ticked"
    elif since > tick_within_s:
        checks["tick"] = f"the last tick was {since:.1f}s ago (more than {tick_within_s:g}s)"
    else:
        checks["tick"] = "ok"
    checks["worker"] = "ok" if live else f"no worker beat in the last {heartbeat_within_s:g}s"
    return checks
