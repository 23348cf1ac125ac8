"""Operator control: pause, resume, halt, risk mode, overrides — each audited.

Every action is one transaction: a guarded UPDATE of the control row (or an
exchange, or a job) and one ``control_events`` row with who, what and why.
An override never passes a hard limit: force-admit only lifts the score
threshold and soft penalties for one job; capital, concurrency, market data
and the five risk hard limits still decide.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, Engine

from perpbot_db.domain.lifecycle import RiskMode, SystemStatus
from perpbot_db.domain.protections import SYSTEM_TARGET, Scope
from perpbot_db.store import locks, queries


class ControlError(Exception):
    """The action does not apply in the current state; the message says why."""


def _audit(conn: Any, actor: str, action: str, reason: str, **details: Any) -> None:
    queries.control_event_insert(
        conn, actor=actor, action=action, reason=reason, details=json.dumps(details, default=str)
    )


def require_actor_and_reason(actor: str, reason: str) -> None:
    if not actor.strip():
        raise ControlError("actor: must name who acts")
    if not reason.strip():
        raise ControlError("reason: must say why (it is audited)")


def pause(engine: Engine, *, actor: str, reason: str) -> None:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        state = queries.system_state_lock(conn)
        moved = queries.system_state_set_status(
            conn,
            from_statuses=[SystemStatus.RUNNING, SystemStatus.MANUAL_OVERRIDE],
            to_status=SystemStatus.PAUSED,
            actor=actor,
        )
        if not moved:
            raise ControlError(f"system is {state['status']}, not running: nothing to pause")
        _audit(conn, actor, "pause", reason, previous=state["status"])


def resume(engine: Engine, *, actor: str, reason: str) -> None:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        state = queries.system_state_lock(conn)
        if state["status"] == SystemStatus.HALTED:
            raise ControlError(
                f"system is halted ({state['halt_reason']}): clear the halt with "
                "`perpbot override clear-halt --reason ...`"
            )
        moved = queries.system_state_set_status(
            conn, from_statuses=[SystemStatus.PAUSED], to_status=SystemStatus.RUNNING, actor=actor
        )
        if not moved:
            raise ControlError(f"system is {state['status']}, not paused: nothing to resume")
        _audit(conn, actor, "resume", reason, previous=state["status"])


def halt(engine: Engine, *, actor: str, reason: str) -> bool:
    """Halt the system (operator or automatic protection); False if already halted."""
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        queries.system_state_lock(conn)
        return halt_in(conn, actor=actor, reason=reason)


def halt_in(conn: Connection, *, actor: str, reason: str, **details: Any) -> bool:
    """Halt inside the caller's transaction, audited; False if already halted."""
    previous = queries.system_state_get(conn)["status"]
    moved = queries.system_state_set_status(
        conn,
        from_statuses=[SystemStatus.RUNNING, SystemStatus.PAUSED, SystemStatus.MANUAL_OVERRIDE],
        to_status=SystemStatus.HALTED,
        halt_reason=reason,
        actor=actor,
    )
    if moved:
        _audit(conn, actor, "halt", reason, previous=previous, **details)
    return moved


def clear_halt(engine: Engine, *, actor: str, reason: str) -> None:
    """Override: a halted system runs again, under ``manual_override`` until resumed normally."""
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        state = queries.system_state_lock(conn)
        moved = queries.system_state_set_status(
            conn,
            from_statuses=[SystemStatus.HALTED],
            to_status=SystemStatus.MANUAL_OVERRIDE,
            actor=actor,
            reset_failures=True,
        )
        if not moved:
            raise ControlError(f"system is {state['status']}, not halted: nothing to clear")
        released = locks.protection_lock_release(
            conn, scope=Scope.SYSTEM, target=SYSTEM_TARGET, actor=actor
        )
        _audit(
            conn,
            actor,
            "override_clear_halt",
            reason,
            halt_reason=state["halt_reason"],
            locks_released=[lock.id for lock in released],
        )


def set_risk_mode(engine: Engine, mode: RiskMode, *, actor: str, reason: str) -> RiskMode:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        previous = queries.system_state_set_risk_mode(conn, risk_mode=mode.value, actor=actor)
        _audit(conn, actor, "risk_mode", reason, previous=previous, mode=mode.value)
    return RiskMode(previous)


def leave_safe_mode(engine: Engine, exchange: str, *, actor: str, reason: str) -> None:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        if exchange not in queries.exchange_names_enabled(conn):
            raise ControlError(f"exchange: unknown exchange {exchange!r}")
        had = queries.exchange_leave_safe_mode(conn, exchange)
        if had is None:
            raise ControlError(f"exchange {exchange} is not in safe mode")
        released = locks.protection_lock_release(
            conn, scope=Scope.EXCHANGE, target=exchange, actor=actor
        )
        _audit(
            conn,
            actor,
            "override_leave_safe_mode",
            reason,
            exchange=exchange,
            safe_mode_reason=had,
            locks_released=[lock.id for lock in released],
        )


def force_admit(engine: Engine, job_id: int, *, actor: str, reason: str) -> None:
    """Let one pending job pass soft limits and the score threshold (never a hard limit)."""
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        if not queries.job_force_admit(conn, job_id=job_id, actor=actor):
            raise ControlError(f"job {job_id} is not pending")
        _audit(conn, actor, "override_force_admit", reason, job_id=job_id)
