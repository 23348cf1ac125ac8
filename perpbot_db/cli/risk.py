"""``perpbot risk``: the risk limits in force, a run-time change, the risk mode.

Only typer and the domain's enums are imported here; the database, the services
and rich are imported inside the commands, so ``perpbot --help`` does not pay for
them.  Shared helpers (settings, connection, printing) come from
:mod:`perpbot_db.cli.app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from perpbot_db.cli.app import (
    Actor,
    Reason,
    actor_or_user,
    app,
    connected,
    err,
    fail,
    out,
    settings_or_exit,
)
from perpbot_db.domain.lifecycle import RiskMode

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from perpbot_db.services.risk_limits import LimitInForce, SyncReport
    from perpbot_db.settings import Settings

risk_app = typer.Typer(
    help="Risk: the limits in force per mode, a change at run time, the risk mode.",
    no_args_is_help=True,
)

app.add_typer(risk_app, name="risk")


@risk_app.command("limits")
def limits(
    mode: Annotated[RiskMode | None, typer.Option("--mode", help="Only this mode.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON.")] = False,
) -> None:
    """Print the limits in force: mode x limit, value, default, and whether it differs.

    Reads only.  A limit is changed by the `[risk.MODE]` settings (applied by `db upgrade`
    and `run`) or at run time by `perpbot risk set`."""
    import json

    from perpbot_db.services import risk_limits

    settings = settings_or_exit()
    with connected(settings) as engine, engine.connect() as conn:
        lines = risk_limits.table(conn, mode)
        in_force = risk_limits.mode_in_force(conn).value
    if as_json:
        print(json.dumps({"risk_mode": in_force, "limits": [line.as_json() for line in lines]}))
        return
    out.print(_table(lines, in_force))


def _table(lines: list[LimitInForce], in_force: str) -> object:
    from rich.table import Table

    from perpbot_db.services.risk_limits import text_of

    table = Table(
        "mode",
        "limit",
        "value",
        "default",
        "differs",
        "updated",
        title=f"risk limits in force (risk mode {in_force})",
    )
    for line in lines:
        updated = "-"
        if line.updated_at is not None:
            updated = f"{line.updated_at:%Y-%m-%d %H:%M:%S} by {line.updated_by}"
        table.add_row(
            line.mode.value + (" *" if line.mode.value == in_force else ""),
            line.name,
            text_of(line.value),
            text_of(line.default),
            "yes" if line.differs else "",
            updated,
        )
    return table


@risk_app.command(
    "set",
    # a negative VALUE (-2) is a value, not an option
    context_settings={"ignore_unknown_options": True},
)
def set_(
    mode: Annotated[RiskMode, typer.Argument(help="The risk mode whose limits change.")],
    pairs: Annotated[
        list[str],
        typer.Argument(
            metavar="LIMIT VALUE [LIMIT VALUE ...]",
            help="Limits (see `perpbot risk limits`) and their new values.",
        ),
    ],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Change limits of one mode now (audited); the next tick judges with them.

    Validated with the settings' rules: a bad limit or value changes nothing.
    Weights change together (they must sum to 1): `weight_edge 0.3 weight_pnl 0.15`.
    The next `db upgrade` or `run` brings the limits back in line with the settings."""
    from perpbot_db.services import control, risk_limits

    settings = settings_or_exit()
    if len(pairs) % 2:
        raise fail(f"LIMIT VALUE: {pairs[-1]!r} has no value; nothing was written")
    try:
        values = {
            name: risk_limits.parse_value(f"risk.{mode.value}.{name}", value)
            for name, value in zip(pairs[::2], pairs[1::2], strict=True)
        }
        with connected(settings) as engine:
            change = risk_limits.set_limits(
                engine, mode, values, actor=actor_or_user(actor), reason=reason
            )
    except risk_limits.RiskLimitError as exc:
        raise fail(f"{exc}; nothing was written") from None
    except control.ControlError as exc:
        raise fail(str(exc), 1) from None
    if change is None:
        out.print(f"risk.{mode.value}: {' '.join(pairs)} in force already: nothing changed")
        return
    out.print(f"risk.{mode.value}: {change.diff()}", markup=False, highlight=False)


@risk_app.command("mode")
def mode_(
    mode: Annotated[RiskMode, typer.Argument(help="The new mode.")],
    reason: Reason,
    actor: Actor = "",
) -> None:
    """Switch the risk mode (weights and limits), like `perpbot risk-mode`."""

    from perpbot_db.cli.control import risk_mode

    risk_mode(mode, reason, actor)


def sync_limits(engine: Engine, settings: Settings, command: str) -> SyncReport:
    """``db upgrade`` and ``run``: bring ``risk_limits`` in line, print what changed."""
    from perpbot_db.runtime import migrate

    report = migrate.sync_risk_limits(engine, settings, actor=actor_or_user(None), command=command)
    if report.skipped:
        message = f"{report.skipped}: the risk limits were left as they are"
    elif report.changes:
        message = f"risk limits set from {report.source}: {report.summary()}"
    else:
        message = f"risk limits in line with {report.source}"
    err.print(message, markup=False, highlight=False)
    return report
