"""Exchange accounts: their configured capital and limits, safe mode, failure streaks.

The capital and limit columns are spelled once, as the fields of
:class:`ExchangeLimits`: the settings sync writes them, admission reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import Connection, Row, text

from perpbot_db.store import rows

#: The scale of the ``numeric`` columns (schema ``Money`` and ``Ratio``): a configured value is
#: rounded to it before it is compared with the stored one.
MONEY_SCALE = Decimal("1e-8")
RATIO_SCALE = Decimal("1e-5")


@dataclass(frozen=True, slots=True)
class ExchangeLimits:
    """An exchange account's configured capital and limits, as ``[exchanges.NAME]`` sets them.

    ``starting_equity_usd`` is the configured equity; the tracked ``equity_usd`` starts
    from it and is reset to it when it changes."""

    starting_equity_usd: Decimal
    volume_share: Decimal
    arbitrage_share: Decimal
    reserve_share: Decimal
    single_job_cap: Decimal
    inflight_cap: Decimal
    max_concurrent_jobs: int
    max_inflight_notional_usd: Decimal | None

    def rounded(self) -> ExchangeLimits:
        """The values as the columns store them (money to 8 places, ratios to 5)."""

        def q(value: Decimal, scale: Decimal) -> Decimal:
            return value.quantize(scale, rounding=ROUND_HALF_UP)

        cap = self.max_inflight_notional_usd
        return ExchangeLimits(
            starting_equity_usd=q(self.starting_equity_usd, MONEY_SCALE),
            volume_share=q(self.volume_share, RATIO_SCALE),
            arbitrage_share=q(self.arbitrage_share, RATIO_SCALE),
            reserve_share=q(self.reserve_share, RATIO_SCALE),
            single_job_cap=q(self.single_job_cap, RATIO_SCALE),
            inflight_cap=q(self.inflight_cap, RATIO_SCALE),
            max_concurrent_jobs=self.max_concurrent_jobs,
            max_inflight_notional_usd=None if cap is None else q(cap, MONEY_SCALE),
        )


#: The limit columns, in :class:`ExchangeLimits` order.
LIMIT_COLUMNS = rows.names(ExchangeLimits)
_LIMITS = len(LIMIT_COLUMNS)


def _limits(row: Row[tuple[object, ...]] | tuple[object, ...], start: int) -> ExchangeLimits:
    return ExchangeLimits(*row[start : start + _LIMITS])  # type: ignore[arg-type]


# -- the settings sync -------------------------------------------------------------------

_UPSERT = text(
    f"""
    INSERT INTO exchanges AS e (name, equity_usd, {", ".join(LIMIT_COLUMNS)}, enabled)
    VALUES (:name, :starting_equity_usd, {", ".join(":" + c for c in LIMIT_COLUMNS)}, true)
    ON CONFLICT (name) DO UPDATE SET
        equity_usd = CASE WHEN e.starting_equity_usd <> EXCLUDED.starting_equity_usd
                          THEN EXCLUDED.equity_usd ELSE e.equity_usd END,
        {", ".join(f"{c} = EXCLUDED.{c}" for c in LIMIT_COLUMNS)},
        enabled = true,
        updated_at = now()
    """
)


def upsert_enabled(conn: Connection, accounts: Sequence[tuple[str, ExchangeLimits]]) -> int:
    """Insert or update (and enable) exchanges by name with their configured limits.

    A new exchange's tracked equity starts at its starting equity; an existing one keeps
    its tracked equity unless its starting equity changed.  Returns how many were written."""
    if accounts:
        conn.execute(
            _UPSERT,
            [{"name": name, **rows.values(lim)} for name, lim in accounts],
        )
    return len(accounts)


def disable_unlisted(conn: Connection, names: Sequence[str]) -> int:
    """Disable every enabled exchange not in ``names`` (never deleted); returns how many."""
    result = conn.execute(
        text(
            "UPDATE exchanges SET enabled = false, updated_at = now() "
            "WHERE enabled AND NOT (name = ANY(CAST(:names AS text[])))"
        ),
        {"names": list(names)},
    )
    return int(result.rowcount)


#: Advisory lock key serialising exchange syncs (``db upgrade``, daemon starts).
SYNC_LOCK_KEY = 0x70657270_7379  # "perpsy"


def sync_lock(conn: Connection) -> None:
    """Serialise syncs for this transaction: each sees the table the previous one left."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SYNC_LOCK_KEY})


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    """An exchange's configured limits as stored, and whether it is enabled."""

    name: str
    enabled: bool
    limits: ExchangeLimits


_CONFIGS = text(f"SELECT name, enabled, {', '.join(LIMIT_COLUMNS)} FROM exchanges ORDER BY name")


def configs(conn: Connection) -> list[ExchangeConfig]:
    """Every exchange's configured limits, as the settings sync compares them, by name."""
    return [ExchangeConfig(str(r[0]), bool(r[1]), _limits(r, 2)) for r in conn.execute(_CONFIGS)]


# -- reads ---------------------------------------------------------------------------------


def names_enabled(conn: Connection) -> set[str]:
    return {
        str(name)
        for name in conn.execute(text("SELECT name FROM exchanges WHERE enabled")).scalars()
    }


@dataclass(frozen=True, slots=True)
class ExchangeBookRow:
    """An exchange as admission sees it: equity, limits, active reservations by tier,
    in-flight jobs, safe mode, failure streak and the day's realized PnL."""

    name: str
    enabled: bool
    equity_usd: Decimal
    limits: ExchangeLimits
    safe_mode: bool
    safe_mode_reason: str | None
    safe_mode_until: datetime | None
    consecutive_failures: int
    pnl_today_usd: Decimal
    reserved_volume: Decimal
    reserved_arbitrage: Decimal
    reserved_reserve: Decimal
    inflight_jobs: int


_BOOKS = text(
    f"""
    SELECT e.name, e.enabled, e.equity_usd, {rows.columns(ExchangeLimits, "e")},
           e.safe_mode, e.safe_mode_reason, e.safe_mode_until, e.consecutive_failures,
           coalesce(d.realized_pnl_usd, 0) AS pnl_today_usd,
           coalesce(r.volume, 0) AS reserved_volume,
           coalesce(r.arbitrage, 0) AS reserved_arbitrage,
           coalesce(r.reserve, 0) AS reserved_reserve,
           coalesce(r.jobs, 0) AS inflight_jobs
    FROM exchanges e
    LEFT JOIN (
        SELECT exchange,
               sum(amount_usd) FILTER (WHERE tier = 'volume') AS volume,
               sum(amount_usd) FILTER (WHERE tier = 'arbitrage') AS arbitrage,
               sum(amount_usd) FILTER (WHERE tier = 'reserve') AS reserve,
               count(*) AS jobs
        FROM capital_reservations WHERE status = 'active' GROUP BY exchange
    ) r ON r.exchange = e.name
    LEFT JOIN daily_counters d ON d.scope = e.name AND d.day = :day
    ORDER BY e.name
    """
)


def books(conn: Connection, *, day: date) -> list[ExchangeBookRow]:
    """Every exchange: limits, active reservations by tier, in-flight jobs, PnL of ``day``."""
    out = []
    for r in conn.execute(_BOOKS, {"day": day}):
        rest = r[3 + _LIMITS :]
        out.append(ExchangeBookRow(r[0], r[1], r[2], _limits(r, 3), *rest))
    return out


# -- safe mode and failure streaks -------------------------------------------------------------


def enter_safe_mode(conn: Connection, *, name: str, reason: str, until: datetime | None) -> bool:
    """Enter safe mode (idempotent: an exchange already in it keeps its first reason)."""
    result = conn.execute(
        text(
            "UPDATE exchanges SET safe_mode = true, safe_mode_reason = :reason, "
            "safe_mode_until = :until, updated_at = now() WHERE name = :name AND NOT safe_mode"
        ),
        {"name": name, "reason": reason, "until": until},
    )
    return bool(result.rowcount)


def leave_safe_mode(conn: Connection, name: str) -> str | None:
    """Clear safe mode; returns the reason it had, or None when it was not in safe mode."""
    row = conn.execute(
        text(
            "UPDATE exchanges e SET safe_mode = false, safe_mode_reason = NULL, "
            "safe_mode_until = NULL, consecutive_failures = 0, updated_at = now() "
            "FROM (SELECT name, safe_mode_reason FROM exchanges WHERE name = :name FOR UPDATE) old "
            "WHERE e.name = old.name AND e.safe_mode RETURNING old.safe_mode_reason"
        ),
        {"name": name},
    ).first()
    return None if row is None else str(row[0])


def leave_expired_safe_mode(conn: Connection, *, now: datetime) -> list[str]:
    """Leave safe mode where its timed cool-down has passed; returns those exchanges."""
    return [
        str(name)
        for name in conn.execute(
            text(
                "UPDATE exchanges SET safe_mode = false, safe_mode_reason = NULL, "
                "safe_mode_until = NULL, consecutive_failures = 0, updated_at = :now "
                "WHERE safe_mode AND safe_mode_until IS NOT NULL AND safe_mode_until <= :now "
                "RETURNING name"
            ),
            {"now": now},
        ).scalars()
    ]


@dataclass(frozen=True, slots=True)
class StreakUpdate:
    """A finish's effect on one exchange's streak of failed jobs: reset it (a success),
    then add ``add`` failures."""

    name: str
    reset: bool
    add: int


@dataclass(frozen=True, slots=True)
class FailureStreak:
    name: str
    consecutive_failures: int


_RECORD_STREAKS = text(
    "UPDATE exchanges e SET consecutive_failures = v.new, updated_at = now() "
    "FROM (SELECT x.name, CASE WHEN u.reset THEN 0 ELSE x.consecutive_failures END "
    "      + u.add AS new FROM unnest(CAST(:name AS text[]), "
    "      CAST(:reset AS boolean[]), CAST(:add AS int[])) AS u(name, reset, add) "
    "      JOIN exchanges x ON x.name = u.name ORDER BY x.name) v "
    "WHERE e.name = v.name AND e.consecutive_failures <> v.new "
    "RETURNING e.name, e.consecutive_failures"
)


def record_failure_streaks(
    conn: Connection, updates: Sequence[StreakUpdate]
) -> list[FailureStreak]:
    """Write each exchange's streak of consecutive failed jobs (reset by a success), in one
    statement; only rows that change are written.  Returns the new streaks written."""
    if not updates:
        return []
    return [
        FailureStreak(*row)
        for row in conn.execute(_RECORD_STREAKS, rows.arrays(StreakUpdate, updates))
    ]
