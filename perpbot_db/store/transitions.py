"""Every job status change goes through here: edge checked, UPDATE guarded, event written.

One call moves a batch of jobs along one edge of the lifecycle
(:data:`perpbot_db.domain.lifecycle.TRANSITIONS`) in one statement: the UPDATE names
the status it expects, and each job that moved gets exactly one
``job_events`` row with the decision's code and context.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection

from perpbot_db.domain.decisions import Decision
from perpbot_db.domain.lifecycle import FINISHED, JobStatus, is_transition
from perpbot_db.store import queries


@dataclass(frozen=True)
class Outcome:
    job_id: int
    decision: Decision
    score: Decimal | None = None


def context_json(decision: Decision) -> str:
    return json.dumps(decision.context, default=str, sort_keys=True)


def move(
    conn: Connection,
    from_status: JobStatus,
    to_status: JobStatus,
    outcomes: Sequence[Outcome],
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> list[int]:
    """Move ``outcomes`` from ``from_status`` to ``to_status``; returns the ids that moved."""
    if not is_transition(from_status, to_status):
        raise ValueError(f"{from_status} -> {to_status} is not a lifecycle edge")
    return queries.job_transition_batch(
        conn,
        from_status=from_status.value,
        to_status=to_status.value,
        finishes=to_status in FINISHED,
        actor=actor,
        reason=reason,
        now=now,
        ids=[o.job_id for o in outcomes],
        codes=[o.decision.code.value for o in outcomes],
        contexts=[context_json(o.decision) for o in outcomes],
        scores=[None if o.score is None else str(o.score) for o in outcomes],
    )
