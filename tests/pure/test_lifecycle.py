"""The state machine, written once: edges, paths, and the guarded transition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from perpbot_db.domain.decisions import Decision, DecisionCode
from perpbot_db.domain.lifecycle import (
    FINISHED,
    TRANSITIONS,
    JobStatus,
    is_transition,
    is_valid_path,
)
from perpbot_db.store import transitions

P, A, R = JobStatus.PENDING, JobStatus.ADMITTED, JobStatus.RUNNING


def test_lifecycle_edges_are_those_of_the_design() -> None:
    assert (None, P) in TRANSITIONS
    assert is_transition(P, A) and is_transition(A, R) and is_transition(R, JobStatus.COMPLETED)
    assert is_transition(JobStatus.FAILED, P)  # retry after a backoff
    assert not is_transition(P, R)  # never run without admission (no capital)
    assert not is_transition(JobStatus.COMPLETED, P)
    assert not is_transition(R, JobStatus.CANCELLED)  # running jobs are not interrupted
    for status in FINISHED - {JobStatus.FAILED}:
        assert not any(edge[0] == status for edge in TRANSITIONS), f"{status} is final"


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        ([(None, P), (P, A), (A, R), (R, JobStatus.COMPLETED)], True),
        ([(None, P), (P, JobStatus.REJECTED)], True),
        ([(None, P), (P, A), (A, R), (R, JobStatus.FAILED), (JobStatus.FAILED, P)], True),
        ([(None, P), (A, R)], False),  # does not chain
        ([(None, P), (P, R)], False),  # not an edge
        ([(P, A)], False),  # does not start at creation
        ([], False),
    ],
)
def test_event_paths_are_valid_only_when_they_chain_along_edges(
    path: list[tuple[JobStatus | None, JobStatus]], valid: bool
) -> None:
    assert is_valid_path(path) is valid


def test_move_refuses_an_edge_outside_the_lifecycle(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="not a lifecycle edge"):
        transitions.move(
            conn,
            P,
            R,
            [transitions.Outcome(1, Decision(DecisionCode.ADMITTED))],
            actor="test",
            reason="x",
            now=datetime.now(UTC),
        )


def test_move_is_guarded_by_the_expected_status(engine: Engine) -> None:
    with engine.begin() as conn:
        job_id = conn.execute(
            text(
                "INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd, "
                "status, finished_at) VALUES ('arb', 'BTC/USDT:USDT', 1, 2, 'cancelled', now()) "
                "RETURNING id"
            )
        ).scalar_one()
        moved = transitions.move(
            conn,
            P,
            JobStatus.REJECTED,
            [transitions.Outcome(job_id, Decision(DecisionCode.SPREAD_HARD_LIMIT))],
            actor="test",
            reason="hard limit",
            now=datetime.now(UTC),
        )
        events = conn.execute(text("SELECT count(*) FROM job_events")).scalar_one()
        status = conn.execute(
            text("SELECT status FROM hedge_jobs WHERE id = :j"), {"j": job_id}
        ).scalar_one()
    assert moved == [] and events == 0 and status == "cancelled"
