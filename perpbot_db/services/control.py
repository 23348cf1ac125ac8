"""Operator control: pause, resume, halt, risk mode, overrides — each audited.

Every action is one transaction: a guarded UPDATE of the control row (or an
exchange, or a job) and one ``control_events`` row with who, what and why.  A
status change is one statement of :mod:`perpbot_db.store.transitions` (the edge
and its event together, from :data:`perpbot_db.domain.lifecycle.SYSTEM_EDGES`).
An override never passes a hard limit: force-admit only lifts the score
threshold and soft penalties for one job; capital, concurrency, market data
and the five risk hard limits still decide.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine

from perpbot_db.domain.lifecycle import RiskMode, SystemAction, SystemStatus
from perpbot_db.domain.protections import SYSTEM_TARGET, Scope
from perpbot_db.store import control_events, exchanges, jobs, locks, system, transitions


class ControlError(Exception):
    """The action does not apply in the current state; the message says why."""


def _audit(conn: Any, actor: str, action: str, reason: str, **details: Any) -> None:
    control_events.insert(
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
        state = system.lock(conn)
        if transitions.system_move(conn, SystemAction.PAUSE, actor=actor, reason=reason) is None:
            raise ControlError(f"system is {state.status}, not running: nothing to pause")


def resume(engine: Engine, *, actor: str, reason: str) -> None:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        state = system.lock(conn)
        if state.status == SystemStatus.HALTED:
            raise ControlError(
                f"system is halted ({state.halt_reason}): clear the halt with "
                "`perpbot override clear-halt --reason ...`"
            )
        if transitions.system_move(conn, SystemAction.RESUME, actor=actor, reason=reason) is None:
            raise ControlError(f"system is {state.status}, not paused: nothing to resume")


def halt(engine: Engine, *, actor: str, reason: str) -> bool:
    """Halt the system (operator or automatic protection); False if already halted."""
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        system.lock(conn)
        return halt_in(conn, actor=actor, reason=reason)


def halt_in(conn: Connection, *, actor: str, reason: str, **details: Any) -> bool:
    """Halt inside the caller's transaction, audited; False if already halted."""
    previous = transitions.system_move(
        conn, SystemAction.HALT, actor=actor, reason=reason, halt_reason=reason, details=details
    )
    return previous is not None


def clear_halt(engine: Engine, *, actor: str, reason: str) -> None:
    """Override: a halted system runs again, under ``manual_override`` until resumed normally."""
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        state = system.lock(conn)
        # the control row is locked first, as protect.run_once does: no deadlock on the locks;
        # if the system is not halted the transaction rolls back and no lock is released
        released = locks.protection_lock_release(
            conn, scope=Scope.SYSTEM, target=SYSTEM_TARGET, actor=actor
        )
        moved = transitions.system_move(
            conn,
            SystemAction.CLEAR_HALT,
            actor=actor,
            reason=reason,
            reset_failures=True,
            details={
                "halt_reason": state.halt_reason,
                "locks_released": [lock.id for lock in released],
            },
        )
        if moved is None:
            raise ControlError(f"system is {state.status}, not halted: nothing to clear")


def set_risk_mode(engine: Engine, mode: RiskMode, *, actor: str, reason: str) -> RiskMode:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        previous = system.set_risk_mode(conn, risk_mode=mode.value, actor=actor)
        _audit(conn, actor, "risk_mode", reason, previous=previous, mode=mode.value)
    return RiskMode(previous)


def set_daily_loss_limit(engine: Engine, limit_usd: Decimal, *, actor: str, reason: str) -> Decimal:
    """Set the daily loss limit (audited); returns the previous one.  The next tick's
    protections compare today's loss with it."""
    require_actor_and_reason(actor, reason)
    if not limit_usd.is_finite() or limit_usd <= 0:
        raise ControlError(f"daily_loss_limit_usd: must be above 0, got {limit_usd}")
    with engine.begin() as conn:
        previous = system.set_daily_loss_limit(conn, limit_usd=limit_usd, actor=actor)
        _audit(conn, actor, "daily_loss_limit", reason, previous=previous, limit_usd=limit_usd)
    return previous


def leave_safe_mode(engine: Engine, exchange: str, *, actor: str, reason: str) -> None:
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        if exchange not in exchanges.names_enabled(conn):
            raise ControlError(f"exchange: unknown exchange {exchange!r}")
        had = exchanges.leave_safe_mode(conn, exchange)
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
        if not jobs.set_operator_override(conn, job_id=job_id, actor=actor):
            raise ControlError(f"job {job_id} is not pending")
        _audit(conn, actor, "override_force_admit", reason, job_id=job_id)
