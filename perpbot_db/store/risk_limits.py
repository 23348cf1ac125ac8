"""The statements of ``risk_limits``: the risk modes' limits in force.

Typed in and out: a statement takes :class:`LimitValue` values and returns
:class:`RiskLimitRow` rows, both defined here beside their SQL.  Values travel
as text and are cast to ``numeric`` in SQL, so a limit keeps every digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.domain.lifecycle import RiskMode

#: Advisory lock key serialising writers of ``risk_limits`` (syncs, ``perpbot risk set``).
RISK_LIMITS_LOCK_KEY = 0x70657270_726C  # "perprl"


@dataclass(frozen=True, slots=True)
class LimitValue:
    """One limit to write: ``name`` is one of ``perpbot_db.domain.risk.LIMIT_NAMES``."""

    mode: RiskMode
    name: str
    value: Decimal


@dataclass(frozen=True, slots=True)
class RiskLimitRow:
    """One ``risk_limits`` row."""

    mode: RiskMode
    name: str
    value: Decimal
    updated_at: datetime
    updated_by: str


def risk_limits_lock(conn: Connection) -> None:
    """Serialise writers for this transaction: each sees the rows the previous one left."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": RISK_LIMITS_LOCK_KEY})


_SELECT_ALL = text(
    "SELECT mode, name, value, updated_at, updated_by FROM risk_limits ORDER BY mode, name"
)


def risk_limit_all(conn: Connection) -> list[RiskLimitRow]:
    """Every limit in force that has a row, with who wrote it and when."""
    return [
        RiskLimitRow(RiskMode(mode), name, Decimal(value), updated_at, updated_by)
        for mode, name, value, updated_at, updated_by in conn.execute(_SELECT_ALL)
    ]


_SELECT_VALUES = text("SELECT mode, name, value FROM risk_limits ORDER BY mode, name")
_MODES = {mode.value: mode for mode in RiskMode}  # a dict lookup: an Enum call costs more


def risk_limit_values(conn: Connection) -> tuple[LimitValue, ...]:
    """The values in force that have a row, in a stable order: the tick's one read per
    tick (at most 96 rows); hashable, so an unchanged table is recognised."""
    return tuple(
        LimitValue(_MODES[mode], name, value) for mode, name, value in conn.execute(_SELECT_VALUES)
    )


_UPSERT = text(
    """
    INSERT INTO risk_limits AS r (mode, name, value, updated_at, updated_by)
    SELECT mode, name, CAST(value AS numeric), now(), :actor
    FROM unnest(CAST(:modes AS text[]), CAST(:names AS text[]), CAST(:values AS text[]))
         AS v(mode, name, value)
    ON CONFLICT (mode, name) DO UPDATE SET
        value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by
    WHERE r.value IS DISTINCT FROM EXCLUDED.value
    """
)


def risk_limit_upsert(conn: Connection, values: Sequence[LimitValue], *, actor: str) -> int:
    """Write the values (one statement); a row whose value is unchanged is left as it is.
    Returns the number of rows inserted or changed."""
    if not values:
        return 0
    result = conn.execute(
        _UPSERT,
        {
            "actor": actor,
            "modes": [v.mode.value for v in values],
            "names": [v.name for v in values],
            "values": [str(v.value) for v in values],
        },
    )
    return int(result.rowcount)
