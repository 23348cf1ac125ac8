"""The hedge-job state machine, written once.

Statuses are the words of DESIGN.md's lifecycle.  The database holds them as
text with a CHECK built from :data:`JOB_STATUSES`, and every transition the
code makes must be an edge of :data:`TRANSITIONS`; ``None`` is the state
before a job exists (its first ``job_events`` row goes ``null -> pending``).
"""

from __future__ import annotations

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

P, A, R = JobStatus.PENDING, JobStatus.ADMITTED, JobStatus.RUNNING
TRANSITIONS: frozenset[tuple[JobStatus | None, JobStatus]] = frozenset(
    {
        (None, P),
        (P, A),
        (P, JobStatus.REJECTED),
        (P, JobStatus.EXPIRED),
        (P, JobStatus.CANCELLED),
        (A, R),
        (A, JobStatus.CANCELLED),
        (A, JobStatus.EXPIRED),
        (R, JobStatus.COMPLETED),
        (R, JobStatus.FAILED),
        (JobStatus.FAILED, P),  # retryable cause, attempts left, after a backoff
    }
)


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


def sql_in(values: tuple[str, ...] | list[str]) -> str:
    """``'a', 'b'`` for a CHECK constraint built from an enum."""
    return ", ".join(f"'{v}'" for v in values)
