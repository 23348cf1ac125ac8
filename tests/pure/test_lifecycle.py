"""The state machine, written once: the edge tables, paths, and the generated diagram."""

from __future__ import annotations

from pathlib import Path

import pytest

from perpbot_db.domain import lifecycle
from perpbot_db.domain.lifecycle import (
    FINISH_PATHS,
    FINISHED,
    JOB_EDGES,
    RECOVERY_PATHS,
    STARTING,
    SYSTEM_EDGES,
    TRANSITIONS,
    JobAction,
    JobStatus,
    SystemAction,
    SystemStatus,
    is_transition,
    is_valid_path,
    path_steps,
)

P, A, R = JobStatus.PENDING, JobStatus.ADMITTED, JobStatus.RUNNING
DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def test_lifecycle_edges_are_those_of_the_design() -> None:
    assert (None, P) in TRANSITIONS
    assert is_transition(P, A) and is_transition(A, R) and is_transition(R, JobStatus.COMPLETED)
    assert is_transition(JobStatus.FAILED, P)  # retry after a backoff
    assert not is_transition(P, R)  # never run without admission (no capital)
    assert not is_transition(JobStatus.COMPLETED, P)
    assert not is_transition(R, JobStatus.CANCELLED)  # running jobs are not interrupted
    assert not is_transition(A, JobStatus.EXPIRED)  # deadlines bound the wait for admission
    for status in FINISHED - {JobStatus.FAILED}:
        assert not any(edge[0] == status for edge in TRANSITIONS), f"{status} is final"


def test_every_action_names_exactly_one_edge_of_its_table() -> None:
    assert set(JOB_EDGES) == set(JobAction)
    assert set(SYSTEM_EDGES) == set(SystemAction)
    assert all(edge.action is action for action, edge in JOB_EDGES.items())
    assert all(edge.action is action for action, edge in SYSTEM_EDGES.items())
    assert all(edge.target not in edge.sources for edge in JOB_EDGES.values())
    assert all(edge.target not in edge.sources for edge in SYSTEM_EDGES.values())
    # only a submission starts from nothing
    assert [a for a, e in JOB_EDGES.items() if None in e.sources] == [JobAction.SUBMIT]


def test_system_edges_are_those_of_the_control_actions() -> None:
    halt = SYSTEM_EDGES[SystemAction.HALT]
    assert halt.target is SystemStatus.HALTED and SystemStatus.HALTED not in halt.sources
    assert SYSTEM_EDGES[SystemAction.CLEAR_HALT].sources == (SystemStatus.HALTED,)
    assert SYSTEM_EDGES[SystemAction.RESUME].sources == (SystemStatus.PAUSED,)  # not halted
    assert SystemStatus.HALTED not in STARTING and SystemStatus.PAUSED not in STARTING
    # every status is reachable from running, the initial one
    reached, frontier = {SystemStatus.RUNNING}, [SystemStatus.RUNNING]
    while frontier:
        status = frontier.pop()
        for edge in SYSTEM_EDGES.values():
            if status in edge.sources and edge.target not in reached:
                reached.add(edge.target)
                frontier.append(edge.target)
    assert reached == set(SystemStatus)


@pytest.mark.parametrize("paths", [FINISH_PATHS, RECOVERY_PATHS], ids=["worker", "recovery"])
def test_every_end_of_an_attempt_is_a_path_of_edges_from_running(
    paths: dict[JobStatus, tuple[JobAction, ...]],
) -> None:
    for end, path in paths.items():
        steps = path_steps(path, R)
        assert steps[0][1] is R and steps[-1][2] is end
        assert is_valid_path([(None, P), (P, A), (A, R), *[(a, b) for _, a, b in steps]])
    assert set(paths) == {JobStatus.COMPLETED, JobStatus.FAILED, P}


def test_a_path_that_does_not_chain_is_refused() -> None:
    with pytest.raises(ValueError, match="retry: does not start at running"):
        path_steps((JobAction.RETRY,), R)


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


def test_the_diagram_shows_every_edge_of_both_tables() -> None:
    text = lifecycle.mermaid()
    for edge in JOB_EDGES.values():
        for source in edge.sources:
            start = "[*]" if source is None else source.value
            assert any(
                line.strip().startswith(f"{start} --> {edge.target.value}:")
                and edge.action.value in line
                for line in text.splitlines()
            ), edge
    for sys_edge in SYSTEM_EDGES.values():
        for s in sys_edge.sources:
            assert f"{s.value} --> {sys_edge.target.value}: {sys_edge.action.value}" in text


def test_docs_lifecycle_is_generated_from_the_tables() -> None:
    assert DOC.read_text() == lifecycle.document(), (
        "docs/lifecycle.md is out of date: regenerate it with "
        "`python -m perpbot_db.domain.lifecycle > docs/lifecycle.md`"
    )
