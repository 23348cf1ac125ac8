"""The risk limits in force: synced from the settings, changed at run time, audited.

The defaults are :data:`perpbot_db.domain.risk.LIMITS`; the settings'
``[risk.MODE]`` tables change them; the limits in force are ``risk_limits`` rows,
so every scheduler on every host judges with the same limits and SQL can audit
them.  Only ``perpbot db upgrade`` and ``perpbot run`` bring the rows in line with
the settings (:func:`sync`), and ``perpbot risk set`` changes one at run time
(:func:`set_limit`); each change is a ``risk_limit_changed`` control event with
old -> new and where it came from.  A limit without a row is its default.  The
tick reads the rows once per tick (:func:`in_force`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from sqlalchemy import Connection, Engine

from perpbot_db.domain import risk
from perpbot_db.domain.lifecycle import RiskMode
from perpbot_db.services.control import ControlError, require_actor_and_reason
from perpbot_db.settings import Settings
from perpbot_db.store import control_events, system
from perpbot_db.store import risk_limits as store

ACTION = "risk_limit_changed"


class RiskLimitError(ControlError):
    """A limit or value that breaks the rules; the message names the setting."""


def text_of(value: Decimal | None) -> str | None:
    """A limit as an operator writes it (no exponent, no trailing zeros)."""
    if value is None:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class ModeChange:
    """What a sync or a ``risk set`` changes in one mode; one control event each."""

    mode: RiskMode
    changes: Mapping[str, tuple[Decimal | None, Decimal]]  # name -> (old or no row, new)

    def diff(self) -> str:
        return ", ".join(
            f"{name} {text_of(old) or 'default'} -> {text_of(new)}"
            for name, (old, new) in self.changes.items()
        )

    def details(self) -> dict[str, list[str | None]]:
        return {name: [text_of(old), text_of(new)] for name, (old, new) in self.changes.items()}


@dataclass(frozen=True)
class SyncReport:
    source: str  # the settings file, or "environment only"
    changes: tuple[ModeChange, ...] = ()
    skipped: str | None = None  # why the table was left as it is

    def summary(self) -> str:
        return ", ".join(f"{c.mode.value} ({', '.join(c.changes)})" for c in self.changes)


def _rows_by_mode(
    rows: Sequence[store.RiskLimitRow | store.LimitValue],
) -> dict[RiskMode, dict[str, Decimal]]:
    by_mode: dict[RiskMode, dict[str, Decimal]] = {}
    for row in rows:
        by_mode.setdefault(row.mode, {})[row.name] = row.value
    return by_mode


def plan_sync(
    rows: Sequence[store.RiskLimitRow], wanted: Mapping[RiskMode, risk.ModeLimits]
) -> list[ModeChange]:
    """The changes that bring the rows in line with ``wanted``: every limit of every
    mode gets a row with the wanted value (pure)."""
    have = _rows_by_mode(rows)
    plan: list[ModeChange] = []
    for mode, limits in wanted.items():
        current = have.get(mode, {})
        changes = {
            name: (current.get(name), value)
            for name, value in risk.limit_values(limits).items()
            if current.get(name) != value
        }
        if changes:
            plan.append(ModeChange(mode, changes))
    return plan


def _write(
    conn: Connection, change: ModeChange, *, actor: str, reason: str, **details: object
) -> None:
    store.risk_limit_upsert(
        conn,
        [store.LimitValue(change.mode, name, new) for name, (_, new) in change.changes.items()],
        actor=actor,
    )
    control_events.insert(
        conn,
        actor=actor,
        action=ACTION,
        reason=reason,
        details=json.dumps({"mode": change.mode.value, "changes": change.details(), **details}),
    )


def sync(
    engine: Engine, settings: Settings, *, source: str, actor: str = "perpbot", command: str
) -> SyncReport:
    """Bring ``risk_limits`` in line with the settings, one audited event per mode changed.

    ``source`` names the settings read (the file).  With no exchange configured the
    settings are taken for missing (as the exchange sync does) and nothing is touched.
    """
    if not settings.exchanges:
        return SyncReport(source, skipped=f"no exchange configured in {source}")
    wanted = settings.risk_limits()
    with engine.begin() as conn:
        store.risk_limits_lock(conn)
        plan = plan_sync(store.risk_limit_all(conn), wanted)
        for change in plan:
            _write(
                conn,
                change,
                actor=actor,
                reason=f"{change.mode.value} risk limits set from {source}: {change.diff()}",
                source=source,
                command=command,
            )
    return SyncReport(source, tuple(plan))


def limits_from_rows(
    rows: Sequence[store.RiskLimitRow | store.LimitValue],
    base: Mapping[RiskMode, risk.ModeLimits] = risk.LIMITS,
) -> Mapping[RiskMode, risk.ModeLimits]:
    """The limits in force: ``base`` with the rows applied.  Raises
    :class:`perpbot_db.domain.risk.LimitError` naming ``MODE.LIMIT`` when the rows
    break a rule (only a hand-written row can: every writer here validates)."""
    have = _rows_by_mode(rows)
    limits: dict[RiskMode, risk.ModeLimits] = {}
    for mode, defaults in base.items():
        try:
            limits[mode] = risk.with_limits(defaults, have.get(mode, {}))
        except risk.LimitError as exc:
            raise risk.LimitError(f"{mode.value}.{exc.name}", exc.message) from None
    return MappingProxyType(limits)


@functools.lru_cache(maxsize=4)
def _over_defaults(values: tuple[store.LimitValue, ...]) -> Mapping[RiskMode, risk.ModeLimits]:
    """:func:`limits_from_rows` over the defaults, remembered: the rows change rarely and
    building four validated modes costs more than reading them (a pure function of
    immutable values; an error is not remembered)."""
    return limits_from_rows(values)


def in_force(
    conn: Connection, base: Mapping[RiskMode, risk.ModeLimits] = risk.LIMITS
) -> Mapping[RiskMode, risk.ModeLimits]:
    """The limits in force, read in one small query (the tick's read, once per tick)."""
    values = store.risk_limit_values(conn)
    if base is risk.LIMITS:
        return _over_defaults(values)
    return limits_from_rows(values, base)


def parse_value(name: str, value: str) -> Decimal:
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise RiskLimitError(f"{name}: {value!r} is not a number") from None
    return number


def set_limit(
    engine: Engine, mode: RiskMode, name: str, value: Decimal, *, actor: str, reason: str
) -> ModeChange | None:
    """Change one limit of one mode now (:func:`set_limits`)."""
    return set_limits(engine, mode, {name: value}, actor=actor, reason=reason)


def set_limits(
    engine: Engine,
    mode: RiskMode,
    values: Mapping[str, Decimal],
    *,
    actor: str,
    reason: str,
) -> ModeChange | None:
    """Change limits of one mode now, together (the weights must still sum to 1), in
    one audited control event; the next tick judges with them.

    Validated with the settings' rules against the mode's other limits in force;
    a bad limit or value raises :class:`RiskLimitError` naming it, and nothing is
    written.  None when every value is already in force (nothing written either).
    """
    if not values:
        raise RiskLimitError("LIMIT VALUE: name at least one limit and its value")
    for name in values:
        if name not in risk.LIMIT_NAMES:
            raise RiskLimitError(
                f"risk.{mode.value}.{name}: unknown limit (one of {', '.join(risk.LIMIT_NAMES)})"
            )
    require_actor_and_reason(actor, reason)
    with engine.begin() as conn:
        store.risk_limits_lock(conn)
        rows = store.risk_limit_all(conn)
        try:
            current = limits_from_rows(rows)[mode]
        except risk.LimitError as exc:
            raise RiskLimitError(f"risk.{exc.name}: {exc.message}") from None
        try:
            risk.with_limits(current, values)
        except risk.LimitError as exc:
            raise RiskLimitError(f"risk.{mode.value}.{exc.name}: {exc.message}") from None
        old = risk.limit_values(current)
        changes = {name: (old[name], new) for name, new in values.items() if old[name] != new}
        if not changes:
            return None
        change = ModeChange(mode, changes)
        _write(
            conn,
            change,
            actor=actor,
            reason=reason,
            command="risk set",
        )
    return change


@dataclass(frozen=True)
class LimitInForce:
    """One line of ``perpbot risk limits``."""

    mode: RiskMode
    name: str
    value: Decimal
    default: Decimal
    updated_at: datetime | None = None  # None: no row, the default is in force
    updated_by: str | None = None

    @property
    def differs(self) -> bool:
        return self.value != self.default

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "limit": self.name,
            "value": text_of(self.value),
            "default": text_of(self.default),
            "differs": self.differs,
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "updated_by": self.updated_by,
        }


def mode_in_force(conn: Connection) -> RiskMode:
    return RiskMode(system.get(conn).risk_mode)


def table(conn: Connection, mode: RiskMode | None = None) -> list[LimitInForce]:
    """The limits in force, mode by mode in table order (reads only)."""
    rows = {(r.mode, r.name): r for r in store.risk_limit_all(conn)}
    lines: list[LimitInForce] = []
    for each, defaults in risk.LIMITS.items():
        if mode is not None and each is not mode:
            continue
        for name, default in risk.limit_values(defaults).items():
            row = rows.get((each, name))
            lines.append(
                LimitInForce(
                    each,
                    name,
                    default if row is None else row.value,
                    default,
                    None if row is None else row.updated_at,
                    None if row is None else row.updated_by,
                )
            )
    return lines
