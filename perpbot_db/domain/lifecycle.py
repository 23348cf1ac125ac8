"""The hedge-job and system state machines, written once.

Statuses are the words of DESIGN.md's lifecycle.  The database holds them as
text with a CHECK built from :data:`JOB_STATUSES`.  Every status change the code
makes is an edge of :data:`JOB_EDGES` or :data:`SYSTEM_EDGES`, named by the action
that takes it; the statements that take them are built from these tables, all in
:mod:`perpbot_db.store.transitions`, each writing its event (``job_events`` with
the action, or ``control_events``) in the same statement.  ``None`` is the state
before a job exists (its first ``job_events`` row goes ``null -> pending``).

Decisions this table records:

* **hold is not an edge.**  The tick keeps a pending job pending and stores why
  (its decision code); no status changes and no event is written (a tick re-scores
  thousands of jobs: an event each would swamp ``job_events``).
* **admitted -> expired is not an edge.**  Deadlines bound the wait for
  admission; an admitted job holds capital and is claimed, or cancelled.
* **A retry passes through failed.**  An attempt that fills nothing with attempts
  left ends ``failed`` and is retried at once, in the finish statement itself:
  ``running -[fail]-> failed -[retry]-> pending``, two events, one statement
  (:data:`FINISH_PATHS`).  No job ever rests in ``failed`` with a retry ahead.
* **A recovery ends an attempt with its own actions** (``recover_complete``,
  ``recover_fail``), so the events tell a recovered job from one its worker
  finished.  Taking over an expired lease changes the owner, not the status.

``python -m perpbot_db.domain.lifecycle`` prints both tables as Mermaid state
diagrams (docs/lifecycle.md holds them; a test keeps it up to date).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    ADMITTED = "admitted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Strategy(StrEnum):
    VOLUME = "volume"
    ARB = "arb"
    FUNDING_ARB = "funding_arb"
    HEDGE_REBALANCE = "hedge_rebalance"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class LegStatus(StrEnum):
    PENDING = "pending"  # not sent; the exchange has never seen its client order id
    SENT = "sent"  # may have reached the exchange: ask before doing anything else
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"


class CapitalTier(StrEnum):
    VOLUME = "volume"  # S1
    ARBITRAGE = "arbitrage"  # S2
    RESERVE = "reserve"  # S3


class ReservationStatus(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"


class SystemStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    MANUAL_OVERRIDE = "manual_override"


class RiskMode(StrEnum):
    CONSERVATIVE = "conservative"
    BALANCED = "balanced"
    AGGRESSIVE = "aggressive"
    VOLUME_FOCUSED = "volume_focused"


JOB_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
FINISHED: frozenset[JobStatus] = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.REJECTED,
        JobStatus.CANCELLED,
        JobStatus.EXPIRED,
    }
)
HOLDS_CAPITAL: frozenset[JobStatus] = frozenset({JobStatus.ADMITTED, JobStatus.RUNNING})


class JobAction(StrEnum):
    """What moves a job: each names one edge of :data:`JOB_EDGES`."""

    SUBMIT = "submit"
    EXPIRE = "expire"
    ADMIT = "admit"
    REJECT = "reject"
    CANCEL = "cancel"
    CLAIM = "claim"
    COMPLETE = "complete"
    FAIL = "fail"
    RETRY = "retry"
    RECOVER_COMPLETE = "recover_complete"
    RECOVER_FAIL = "recover_fail"


JOB_ACTIONS: tuple[str, ...] = tuple(a.value for a in JobAction)

#: The events that refuse a job (the tick's) and that fail an attempt (a worker's or
#: recovery's): what the console counts by code over the last hour.  A partial index on
#: ``job_events`` holds exactly these (``ix_job_events_refusals``, migration 0015), so
#: reading them costs what they are, not what every other event of the hour is.
DENIAL_ACTIONS: tuple[str, ...] = (JobAction.REJECT.value, JobAction.EXPIRE.value)
FAILURE_ACTIONS: tuple[str, ...] = (JobAction.FAIL.value, JobAction.RECOVER_FAIL.value)
REFUSAL_ACTIONS: tuple[str, ...] = DENIAL_ACTIONS + FAILURE_ACTIONS


class SystemAction(StrEnum):
    """What moves the control row; the words are the ``control_events`` actions."""

    PAUSE = "pause"
    RESUME = "resume"
    HALT = "halt"
    CLEAR_HALT = "override_clear_halt"


@dataclass(frozen=True)
class JobEdge:
    """``action`` moves a job from any of ``sources`` to ``target``; ``says`` what does it."""

    action: JobAction
    sources: tuple[JobStatus | None, ...]
    target: JobStatus
    says: str


@dataclass(frozen=True)
class SystemEdge:
    action: SystemAction
    sources: tuple[SystemStatus, ...]
    target: SystemStatus
    says: str


P, A, R = JobStatus.PENDING, JobStatus.ADMITTED, JobStatus.RUNNING

#: Every edge of the job lifecycle, by the action that takes it (DESIGN.md's diagram).
JOB_EDGES: Mapping[JobAction, JobEdge] = {
    e.action: e
    for e in (
        JobEdge(JobAction.SUBMIT, (None,), P, "submit: job, legs and event in one statement"),
        JobEdge(JobAction.EXPIRE, (P,), JobStatus.EXPIRED, "tick: deadline passed"),
        JobEdge(JobAction.ADMIT, (P,), A, "tick: admitted, capital reserved"),
        JobEdge(JobAction.REJECT, (P,), JobStatus.REJECTED, "tick: can never pass"),
        JobEdge(JobAction.CANCEL, (P, A), JobStatus.CANCELLED, "operator (capital released)"),
        JobEdge(JobAction.CLAIM, (A,), R, "worker claims (lease)"),
        JobEdge(JobAction.COMPLETE, (R,), JobStatus.COMPLETED, "worker: attempt hedged"),
        JobEdge(JobAction.FAIL, (R,), JobStatus.FAILED, "worker: attempt failed"),
        JobEdge(JobAction.RETRY, (JobStatus.FAILED,), P, "retryable, attempts left, backoff"),
        JobEdge(JobAction.RECOVER_COMPLETE, (R,), JobStatus.COMPLETED, "recovery: lease expired"),
        JobEdge(JobAction.RECOVER_FAIL, (R,), JobStatus.FAILED, "recovery: lease expired"),
    )
}

#: Every edge of the system status (the control row), by its ``control_events`` action.
SYSTEM_EDGES: Mapping[SystemAction, SystemEdge] = {
    e.action: e
    for e in (
        SystemEdge(
            SystemAction.PAUSE,
            (SystemStatus.RUNNING, SystemStatus.MANUAL_OVERRIDE),
            SystemStatus.PAUSED,
            "operator: nothing starts",
        ),
        SystemEdge(SystemAction.RESUME, (SystemStatus.PAUSED,), SystemStatus.RUNNING, "operator"),
        SystemEdge(
            SystemAction.HALT,
            (SystemStatus.RUNNING, SystemStatus.PAUSED, SystemStatus.MANUAL_OVERRIDE),
            SystemStatus.HALTED,
            "operator, or a protection: daily loss, failure streak",
        ),
        SystemEdge(
            SystemAction.CLEAR_HALT,
            (SystemStatus.HALTED,),
            SystemStatus.MANUAL_OVERRIDE,
            "operator override",
        ),
    )
}

#: System statuses in which new work may start: the tick admits, workers claim.
STARTING: frozenset[SystemStatus] = frozenset({SystemStatus.RUNNING, SystemStatus.MANUAL_OVERRIDE})

#: How an attempt ends, by the status its job ends in: the edges its finish takes, in order
#: (a worker's finish, and a recovery's).
FINISH_PATHS: Mapping[JobStatus, tuple[JobAction, ...]] = {
    JobStatus.COMPLETED: (JobAction.COMPLETE,),
    JobStatus.FAILED: (JobAction.FAIL,),
    P: (JobAction.FAIL, JobAction.RETRY),
}
RECOVERY_PATHS: Mapping[JobStatus, tuple[JobAction, ...]] = {
    JobStatus.COMPLETED: (JobAction.RECOVER_COMPLETE,),
    JobStatus.FAILED: (JobAction.RECOVER_FAIL,),
    P: (JobAction.RECOVER_FAIL, JobAction.RETRY),
}

#: The (from, to) pairs of :data:`JOB_EDGES`: what ``perpbot audit`` accepts as a step.
TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    (source, e.target) for e in JOB_EDGES.values() for source in e.sources
)


def job_edge(action: JobAction) -> JobEdge:
    return JOB_EDGES[action]


def system_edge(action: SystemAction) -> SystemEdge:
    return SYSTEM_EDGES[action]


def path_steps(
    path: tuple[JobAction, ...], start: JobStatus
) -> list[tuple[JobAction, JobStatus, JobStatus]]:
    """``(action, from, to)`` for each edge of ``path`` taken from ``start``; ValueError when
    an edge does not start where the previous one ended."""
    steps = []
    current = start
    for action in path:
        edge = JOB_EDGES[action]
        if current not in edge.sources:
            raise ValueError(f"{action}: does not start at {current}")
        steps.append((action, current, edge.target))
        current = edge.target
    return steps


def is_transition(from_status: JobStatus | None, to_status: JobStatus) -> bool:
    return (from_status, to_status) in TRANSITIONS


def is_valid_path(statuses: list[tuple[JobStatus | None, JobStatus]]) -> bool:
    """True when consecutive events chain and every step is a lifecycle edge."""
    current: JobStatus | None = None
    for from_status, to_status in statuses:
        if from_status != current or not is_transition(from_status, to_status):
            return False
        current = to_status
    return current is not None


def mermaid() -> str:
    """Both state machines as Mermaid state diagrams (the body of docs/lifecycle.md)."""
    out = ["## Jobs", "", "```mermaid", "stateDiagram-v2"]
    labels: dict[tuple[str, str], list[str]] = {}
    for e in JOB_EDGES.values():
        for source in e.sources:
            key = ("[*]" if source is None else source.value, e.target.value)
            labels.setdefault(key, []).append(e.action.value)
    out += [f"    {a} --> {b}: {' / '.join(names)}" for (a, b), names in labels.items()]
    finals = [s for s in JobStatus if s in FINISHED]
    out += [f"    {s.value} --> [*]" for s in finals]
    out += ["```", "", "| action | from | to | taken by |", "|---|---|---|---|"]
    for e in JOB_EDGES.values():
        sources = ", ".join("(none)" if s is None else s.value for s in e.sources)
        out.append(f"| `{e.action.value}` | {sources} | {e.target.value} | {e.says} |")
    out += ["", "An attempt ends along one of these paths (one statement, one event per edge):", ""]
    for name, paths in (("worker", FINISH_PATHS), ("recovery", RECOVERY_PATHS)):
        for status, path in paths.items():
            out.append(
                f"* {name}, job ends {status.value}: `running` -> "
                + " -> ".join(f"[{a.value}] `{b.value}`" for a, _, b in path_steps(path, R))
            )
    out += ["", "## System", "", "```mermaid", "stateDiagram-v2", "    [*] --> running"]
    for s in SYSTEM_EDGES.values():
        out += [
            f"    {source.value} --> {s.target.value}: {s.action.value}" for source in s.sources
        ]
    out += ["```", "", "| action | from | to | taken by |", "|---|---|---|---|"]
    for s in SYSTEM_EDGES.values():
        sources = ", ".join(x.value for x in s.sources)
        out.append(f"| `{s.action.value}` | {sources} | {s.target.value} | {s.says} |")
    starting = ", ".join(sorted(x.value for x in STARTING))
    out += ["", f"Work starts (the tick admits, workers claim) only in: {starting}."]
    return "\n".join(out) + "\n"


DOC_HEADER = """# The lifecycle

Generated from the tables in `perpbot_db/domain/lifecycle.py` (`JOB_EDGES`,
`SYSTEM_EDGES`): do not edit by hand; regenerate with

    python -m perpbot_db.domain.lifecycle > docs/lifecycle.md

Every status change is one of these edges, taken by one statement of
`perpbot_db/store/transitions.py` that names the status it expects and writes
its event (`job_events.action`, or `control_events`) in the same statement.

"""


def document() -> str:
    return DOC_HEADER + mermaid()


def sql_in(values: tuple[str, ...] | list[str]) -> str:
    """``'a', 'b'`` for a CHECK constraint built from an enum."""
    return ", ".join(f"'{v}'" for v in values)


if __name__ == "__main__":
    print(document(), end="")
