"""Daily counters: volume, fees, PnL, loss and jobs per UTC day, globally and per exchange."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.domain.execution import CounterDelta
from perpbot_db.store import rows


@dataclass(frozen=True, slots=True)
class GlobalDay:
    """Today's global counters as the tick's protections read them."""

    realized_pnl_usd: Decimal
    loss_used_usd: Decimal
    jobs_failed: int


_GLOBAL_DAY = text(
    f"SELECT {rows.columns(GlobalDay)} FROM daily_counters WHERE day = :day AND scope = 'global'"
)


def global_day(conn: Connection, *, day: date) -> GlobalDay | None:
    """The global counters of ``day`` (None: nothing finished that day)."""
    row = conn.execute(_GLOBAL_DAY, {"day": day}).first()
    return None if row is None else GlobalDay(*row)


@dataclass(frozen=True, slots=True)
class LossAfterFinish:
    """After a finish's deltas: today's global loss, the loss limit, the system status and
    risk mode, and the transaction's clock (``now``)."""

    loss_used_usd: Decimal
    daily_loss_limit_usd: Decimal
    status: str
    risk_mode: str
    now: datetime


ADD_BATCH = text(
    """
    WITH added AS (
        INSERT INTO daily_counters AS d (
            day, scope, volume_usd, fees_usd, realized_pnl_usd, loss_used_usd,
            jobs_completed, jobs_failed, updated_at
        )
        SELECT (now() AT TIME ZONE 'UTC')::date, u.*, now() FROM unnest(
            CAST(:scope AS text[]), CAST(:volume_usd AS numeric[]), CAST(:fees_usd AS numeric[]),
            CAST(:realized_pnl_usd AS numeric[]), CAST(:loss_used_usd AS numeric[]),
            CAST(:jobs_completed AS int[]), CAST(:jobs_failed AS int[])
        ) AS u(scope, volume, fees, pnl, loss, completed, failed)
        ORDER BY u.scope
        ON CONFLICT (day, scope) DO UPDATE SET
            volume_usd = d.volume_usd + EXCLUDED.volume_usd,
            fees_usd = d.fees_usd + EXCLUDED.fees_usd,
            realized_pnl_usd = d.realized_pnl_usd + EXCLUDED.realized_pnl_usd,
            loss_used_usd = d.loss_used_usd + EXCLUDED.loss_used_usd,
            jobs_completed = d.jobs_completed + EXCLUDED.jobs_completed,
            jobs_failed = d.jobs_failed + EXCLUDED.jobs_failed,
            updated_at = now()
        RETURNING scope, loss_used_usd
    ), tally AS (
        UPDATE workers SET jobs_finished = jobs_finished + :finished WHERE id = :worker
    )
    SELECT a.loss_used_usd, s.daily_loss_limit_usd, s.status, s.risk_mode, now() AS now
    FROM added a CROSS JOIN system_state s WHERE a.scope = 'global'
    """
)


def add_finished(
    conn: Connection, *, worker_id: str, finished: int, deltas: Sequence[CounterDelta]
) -> LossAfterFinish:
    """Add a finish's deltas (one per scope, ``global`` among them) to today's rows, scopes in
    one order (no deadlock between workers), and ``finished`` to the worker's tally, in one
    statement.  Returns today's global loss, the loss limit, the system status and risk mode,
    and the transaction's clock."""
    params: dict[str, object] = {
        **rows.arrays(CounterDelta, sorted(deltas, key=lambda d: d.scope)),
        "worker": worker_id,
        "finished": finished,
    }
    return LossAfterFinish(*conn.execute(ADD_BATCH, params).one())
