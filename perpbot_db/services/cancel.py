"""Cancelling a job: pending or admitted jobs end ``cancelled``; running ones are not interrupted.

An admitted job holds capital: its reservations are released in the same
transaction that cancels it (DESIGN.md: capital is released only in the
transaction that ends the job).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from perpbot_db.domain.decisions import Decision, DecisionCode
from perpbot_db.domain.lifecycle import JobAction, JobStatus
from perpbot_db.services.control import ControlError, require_actor_and_reason
from perpbot_db.store import archive, jobs, reservations, transitions


class CancelError(ControlError):
    """The job cannot be cancelled; the message says why."""


def cancel(engine: Engine, job_id: int, *, actor: str, reason: str) -> JobStatus:
    """Cancel one job; returns the status it had."""
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        status = jobs.status_for_update(conn, job_id)
        if status is None:
            archived = archive.archived_status(conn, job_id)
            if archived is not None:
                raise CancelError(f"job {job_id} is already {archived} (archived)")
            raise CancelError(f"job {job_id} does not exist")
        current = JobStatus(status)
        if current is JobStatus.RUNNING:
            raise CancelError(f"job {job_id} is running: a running job is not interrupted mid-leg")
        if current not in (JobStatus.PENDING, JobStatus.ADMITTED):
            raise CancelError(f"job {job_id} is already {current.value}")
        now = datetime.now(UTC)
        outcome = transitions.Outcome(
            job_id, Decision(DecisionCode.CANCELLED, {"by": actor, "reason": reason})
        )
        moved = transitions.move(
            conn,
            JobAction.CANCEL,
            [outcome],
            actor=actor,
            reason=reason,
            now=now,
            from_status=current,
        )
        assert moved == [job_id], "the row is locked: it cannot have moved"
        if current is JobStatus.ADMITTED:
            reservations.release_for_jobs(conn, job_ids=[job_id], reason="cancelled", now=now)
    return current
