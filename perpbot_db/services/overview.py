"""Read-only views of the system for ``perpbot status``, ``perpbot jobs`` and ``perpbot job``.

They read on the read commands' bare driver connection
(:mod:`perpbot_db.runtime.reader`) and return plain data: decimals as strings,
times as ISO 8601, ready for ``--json`` and for the tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from perpbot_db.domain.decisions import DecisionCode, short_reason
from perpbot_db.domain.lifecycle import JOB_STATUSES, JobStatus
from perpbot_db.store import overview as reads
from perpbot_db.store.overview import ReadConnection

if TYPE_CHECKING:  # imported by job_view: status and jobs need not build its row types
    from perpbot_db.store import job_detail


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _row(row: Any) -> dict[str, Any]:
    return {k: _plain(v) for k, v in dataclasses.asdict(row).items()}


def status_snapshot(conn: ReadConnection) -> dict[str, Any]:
    """System state, the scheduler leader, jobs by status, per exchange (equity, safe
    mode, capital, jobs) and the protection locks in force."""
    state = reads.system_state(conn)
    leader = reads.leader(conn)
    counts = reads.job_count_by_status(conn)
    by_exchange = reads.job_count_by_exchange_status(conn)
    exchanges = [
        {**_row(row), "jobs": by_exchange.get(row.name, {})}
        for row in reads.exchanges_with_capital(conn)
    ]
    return {
        "system": _row(state),
        "leader": None if leader is None else _row(leader),
        "jobs": {status: counts.get(status, 0) for status in JOB_STATUSES},
        "jobs_total": sum(counts.values()),
        "exchanges": exchanges,
        "locks": [_row(lock) for lock in reads.active_locks(conn)],
    }


def job_rows(conn: ReadConnection, *, status: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest jobs, each with its last decision: code, context and a short reason."""
    rows = reads.newest_jobs(conn, reads.JobListParams(status=status, limit=limit))
    return [{**_row(row), "decision_reason": short_reason(row.decision_context)} for row in rows]


@dataclass(frozen=True)
class Why:
    """Why a job is where it is: for a pending job the hold the last tick stored."""

    status: str
    code: str | None
    context: Mapping[str, Any] | None
    deadline: str | None
    text: str


def why(job: job_detail.JobRow) -> Why:
    deadline = None if job.deadline is None else job.deadline.isoformat()
    until = f"; deadline {deadline}" if deadline else "; no deadline"
    ctx = job.decision_context
    if job.status == JobStatus.PENDING:
        if job.decision_code is None:
            text = "pending: no tick has judged it yet" + until
        elif job.decision_code == DecisionCode.ADMITTED:
            # scored admissible, then not reached: the tick stopped at a global limit
            reason = short_reason(ctx, limit=400)
            text = "pending: passed every check when last scored" + (
                f" ({reason})" if reason else ""
            )
            text += "; waiting for room (concurrency, capital) at a next tick" + until
        else:
            reason = short_reason(ctx, limit=400)
            text = f"pending: held by {job.decision_code}" + (f" ({reason})" if reason else "")
            text += until
        return Why(job.status, job.decision_code, ctx, deadline, text)
    if job.status == JobStatus.EXPIRED:
        held = None if ctx is None else ctx.get("held_code")
        held_ctx = None if ctx is None else ctx.get("held_context")
        text = f"expired at its deadline {deadline}"
        if held:
            shown = short_reason(held_ctx, limit=400) if isinstance(held_ctx, Mapping) else ""
            text += f"; last held by {held}" + (f" ({shown})" if shown else "")
        else:
            text += "; never held (no tick judged it in time)"
        return Why(job.status, held, held_ctx, deadline, text)
    if job.status == JobStatus.ADMITTED:
        text = "admitted: waiting for a worker to claim it" + (
            "" if job.run_after is None else f" (runs after {job.run_after.isoformat()})"
        )
    elif job.status == JobStatus.RUNNING:
        lease = None if job.lease_expires_at is None else job.lease_expires_at.isoformat()
        text = f"running on {job.worker_id or '?'} (lease until {lease or '?'})"
    else:
        reason = short_reason(ctx, limit=400)
        text = f"{job.status}" + (f": {job.decision_code}" if job.decision_code else "")
        text += f" ({reason})" if reason else ""
    return Why(job.status, job.decision_code, ctx, deadline, text)


@dataclass(frozen=True)
class JobView:
    job: job_detail.JobRow
    legs: list[job_detail.LegRow]
    reservations: list[job_detail.ReservationRow]
    events: list[job_detail.EventRow]
    why: Why

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": _row(self.job),
            "why": _row(self.why),
            "legs": [_row(leg) for leg in self.legs],
            "reservations": [_row(r) for r in self.reservations],
            "events": [_row(e) for e in self.events],
        }


def job_view(conn: ReadConnection, job_id: int) -> JobView | None:
    """One job with its legs, reservations and event timeline (None: no such job)."""
    from perpbot_db.store import job_detail

    ref = job_detail.JobRef(job_id)
    job = job_detail.job_by_id(conn, ref)
    if job is None:
        return None
    return JobView(
        job=job,
        legs=job_detail.legs_of_job(conn, ref),
        reservations=job_detail.reservations_of_job(conn, ref),
        events=job_detail.events_of_job(conn, ref),
        why=why(job),
    )
