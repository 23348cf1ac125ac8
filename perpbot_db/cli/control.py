"""Operator control: pause, resume, halt, risk mode, cancel, audit and the overrides.

Each is audited (``control_events``) by the service it calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from perpbot_db.cli.app import (
    Actor,
    Reason,
    actor_or_user,
    app,
    connected,
    fail,
    out,
    override_app,
    settings_or_exit,
)
from perpbot_db.domain.lifecycle import RiskMode

if TYPE_CHECKING:
    from sqlalchemy import Engine


@contextlib.contextmanager
def _control() -> Iterator[Engine]:
    from perpbot_db.services import control

    settings = settings_or_exit()
    with connected(settings) as engine:
        try:
            yield engine
        except control.ControlError as exc:
            raise fail(str(exc), 1) from None


@app.command()
def pause(reason: Reason, actor: Actor = "") -> None:
    """Stop admitting jobs (running ones finish)."""
    from perpbot_db.services import control

    with _control() as engine:
        control.pause(engine, actor=actor_or_user(actor), reason=reason)
    out.print("paused")


@app.command()
def resume(reason: Reason, actor: Actor = "") -> None:
    """Admit jobs again after a pause."""
    from perpbot_db.services import control

    with _control() as engine:
        control.resume(engine, actor=actor_or_user(actor), reason=reason)
    out.print("running")


@app.command()
def halt(reason: Reason, actor: Actor = "") -> None:
    """Halt the system; only `override clear-halt` lifts it."""
    from perpbot_db.services import control

    with _control() as engine:
        moved = control.halt(engine, actor=actor_or_user(actor), reason=reason)
    out.print("halted" if moved else "already halted")


@app.command("risk-mode")
def risk_mode(
    mode: Annotated[RiskMode, typer.Argument(help="The new mode.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Switch the risk mode (weights and limits); scores follow within a few ticks."""
    from perpbot_db.services import control

    with _control() as engine:
        previous = control.set_risk_mode(engine, mode, actor=actor_or_user(actor), reason=reason)
    out.print(f"risk mode {previous.value} -> {mode.value}")


@app.command()
def audit(as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False) -> None:
    """Check DESIGN.md's invariants; exit 1 on any breach."""
    import json

    from perpbot_db.services import audit as audit_mod

    settings = settings_or_exit()
    with connected(settings) as engine, engine.connect() as conn:
        breaches = audit_mod.run_audit(
            conn,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            worst_loss_bps=settings.job_worst_loss_bps,
        )
    for breach in breaches:
        if as_json:
            print(json.dumps({"invariant": breach.invariant, "name": breach.name, **breach.detail}))
        else:
            out.print(str(breach), markup=False, highlight=False)
    if breaches:
        raise typer.Exit(1)
    if not as_json:
        out.print(f"all {len(audit_mod.CHECKS) + 1} invariant checks hold")


@app.command("cancel")
def cancel_cmd(
    job_id: Annotated[int, typer.Argument(min=1, help="A pending or admitted job.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Cancel a pending or admitted job (its capital is released); running jobs finish."""
    from perpbot_db.services import cancel, control

    settings = settings_or_exit()
    with connected(settings) as engine:
        try:
            was = cancel.cancel(engine, job_id, actor=actor_or_user(actor), reason=reason)
        except control.ControlError as exc:  # CancelError included
            raise fail(str(exc), 1) from None
    out.print(f"job {job_id} cancelled (was {was.value})")


@override_app.command("clear-halt")
def override_clear_halt(reason: Reason, actor: Actor = "") -> None:
    """Run again after a halt (status manual_override until `resume`-d normally)."""
    from perpbot_db.services import control

    with _control() as engine:
        control.clear_halt(engine, actor=actor_or_user(actor), reason=reason)
    out.print("halt cleared: manual_override")


@override_app.command("leave-safe-mode")
def override_leave_safe_mode(
    exchange: Annotated[str, typer.Argument(help="Exchange name.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Take an exchange out of safe mode."""
    from perpbot_db.services import control

    with _control() as engine:
        control.leave_safe_mode(engine, exchange, actor=actor_or_user(actor), reason=reason)
    out.print(f"{exchange} left safe mode")


@override_app.command("force-admit")
def override_force_admit(
    job_id: Annotated[int, typer.Argument(min=1, help="A pending job.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Let one pending job pass soft limits and the score threshold (hard limits still apply)."""
    from perpbot_db.services import control

    with _control() as engine:
        control.force_admit(engine, job_id, actor=actor_or_user(actor), reason=reason)
    out.print(f"job {job_id} may pass soft limits")
