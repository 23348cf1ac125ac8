"""Every SQL statement of the queue in one place, each a function named ``<entity>_<verb>``.

Batched statements take parallel arrays and ``unnest`` them, so one round trip
writes a whole batch.  Numbers travel as text and are cast to ``numeric`` in
SQL: no float ever touches money.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, text

# -- exchanges ---------------------------------------------------------------

_EXCHANGE_UPSERT = text(
    """
    INSERT INTO exchanges AS e (
        name, equity_usd, starting_equity_usd, volume_share, arbitrage_share, reserve_share,
        single_job_cap, inflight_cap, max_concurrent_jobs, max_inflight_notional_usd, enabled
    )
    VALUES (
        :name, :equity_usd, :equity_usd, :volume_share, :arbitrage_share, :reserve_share,
        :single_job_cap, :inflight_cap, :max_concurrent_jobs, :max_inflight_notional_usd, true
    )
    ON CONFLICT (name) DO UPDATE SET
        equity_usd = CASE WHEN e.starting_equity_usd <> EXCLUDED.starting_equity_usd
                          THEN EXCLUDED.equity_usd ELSE e.equity_usd END,
        starting_equity_usd = EXCLUDED.starting_equity_usd,
        volume_share = EXCLUDED.volume_share,
        arbitrage_share = EXCLUDED.arbitrage_share,
        reserve_share = EXCLUDED.reserve_share,
        single_job_cap = EXCLUDED.single_job_cap,
        inflight_cap = EXCLUDED.inflight_cap,
        max_concurrent_jobs = EXCLUDED.max_concurrent_jobs,
        max_inflight_notional_usd = EXCLUDED.max_inflight_notional_usd,
        enabled = true,
        updated_at = now()
    """
)


def exchange_upsert(conn: Connection, rows: list[dict[str, Any]]) -> int:
    if rows:
        conn.execute(_EXCHANGE_UPSERT, rows)
    return len(rows)


def exchange_disable_unlisted(conn: Connection, names: list[str]) -> int:
    result = conn.execute(
        text(
            "UPDATE exchanges SET enabled = false, updated_at = now() "
            "WHERE enabled AND NOT (name = ANY(CAST(:names AS text[])))"
        ),
        {"names": names},
    )
    return int(result.rowcount)


def exchange_list(conn: Connection) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                """
                SELECT e.name, e.enabled, e.equity_usd, e.safe_mode, e.safe_mode_reason,
                       e.max_concurrent_jobs,
                       coalesce(r.reserved_usd, 0) AS reserved_usd,
                       coalesce(r.reservations, 0) AS active_reservations
                FROM exchanges e
                LEFT JOIN (
                    SELECT exchange, sum(amount_usd) AS reserved_usd, count(*) AS reservations
                    FROM capital_reservations WHERE status = 'active' GROUP BY exchange
                ) r ON r.exchange = e.name
                ORDER BY e.name
                """
            )
        )
        .mappings()
        .all()
    )


def exchange_names_enabled(conn: Connection) -> set[str]:
    return set(conn.execute(text("SELECT name FROM exchanges WHERE enabled")).scalars())


# -- hedge jobs: submission --------------------------------------------------


def job_allocate_ids(conn: Connection, count: int) -> list[int]:
    """Reserve ``count`` job ids in one round trip (legs' client order ids need them)."""
    return list(
        conn.execute(
            text(
                "SELECT nextval(pg_get_serial_sequence('hedge_jobs', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": count},
        ).scalars()
    )


_JOB_SUBMIT_BATCH = text(
    """
    WITH new_jobs AS (
        INSERT INTO hedge_jobs (
            id, strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
            expected_volume_usd, risk_score, latency_score, vol_score, funding_score,
            liquidity_score, max_attempts, deadline, idempotency_key, metadata
        )
        SELECT * FROM unnest(
            CAST(:id AS bigint[]), CAST(:strategy AS text[]), CAST(:symbol AS text[]),
            CAST(:notional_usd AS numeric[]), CAST(:expected_edge_bps AS numeric[]),
            CAST(:expected_pnl_usd AS numeric[]), CAST(:expected_volume_usd AS numeric[]),
            CAST(:risk_score AS numeric[]), CAST(:latency_score AS numeric[]),
            CAST(:vol_score AS numeric[]), CAST(:funding_score AS numeric[]),
            CAST(:liquidity_score AS numeric[]), CAST(:max_attempts AS integer[]),
            CAST(:deadline AS timestamptz[]), CAST(:idempotency_key AS text[]),
            CAST(:metadata AS jsonb[])
        )
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id, symbol
    ),
    new_legs AS (
        INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, client_order_id)
        SELECT l.job_id, l.leg_index, l.exchange, j.symbol, l.side, l.quantity, l.client_order_id
        FROM unnest(
            CAST(:leg_job_id AS bigint[]), CAST(:leg_index AS smallint[]),
            CAST(:leg_exchange AS text[]), CAST(:leg_side AS text[]),
            CAST(:leg_quantity AS numeric[]), CAST(:leg_client_order_id AS text[])
        ) AS l(job_id, leg_index, exchange, side, quantity, client_order_id)
        JOIN new_jobs j ON j.id = l.job_id
    ),
    new_events AS (
        INSERT INTO job_events (job_id, from_status, to_status, actor, reason)
        SELECT id, NULL, :to_status, :actor, 'submitted' FROM new_jobs
    )
    SELECT id FROM new_jobs
    """
)


def job_submit_batch(
    conn: Connection,
    jobs: dict[str, list[Any]],
    legs: dict[str, list[Any]],
    *,
    to_status: str,
    actor: str,
) -> set[int]:
    """Insert jobs, their legs and one ``null -> pending`` event each, in one statement.

    ``jobs`` and ``legs`` are parallel arrays (legs keyed by ``job_id``).  A job
    whose idempotency key already exists, in the table or earlier in the same
    batch, is skipped with its legs.  Returns the ids actually inserted.
    """
    params: dict[str, Any] = dict(jobs)
    params.update({f"leg_{k}" if k != "leg_index" else k: v for k, v in legs.items()})
    params.update(to_status=to_status, actor=actor)
    return set(conn.execute(_JOB_SUBMIT_BATCH, params).scalars())


def job_ids_by_idempotency_key(conn: Connection, keys: list[str]) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT idempotency_key, id FROM hedge_jobs "
            "WHERE idempotency_key = ANY(CAST(:keys AS text[]))"
        ),
        {"keys": keys},
    )
    return {key: job_id for key, job_id in rows}


# -- reads ---------------------------------------------------------------------


def job_count_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(text("SELECT status, count(*) FROM hedge_jobs GROUP BY status"))
    return {status: int(n) for status, n in rows}


def job_count_by_exchange_status(conn: Connection) -> dict[str, dict[str, int]]:
    """Jobs per exchange they touch and status (a job counts once per exchange)."""
    rows = conn.execute(
        text(
            """
            SELECT l.exchange, j.status, count(DISTINCT j.id)
            FROM legs l JOIN hedge_jobs j ON j.id = l.job_id
            WHERE l.attempt = 1
            GROUP BY l.exchange, j.status
            """
        )
    )
    out: dict[str, dict[str, int]] = {}
    for exchange, status, n in rows:
        out.setdefault(exchange, {})[status] = int(n)
    return out


def job_list(conn: Connection, *, status: str | None, limit: int) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                """
                SELECT j.id, j.strategy, j.symbol, j.notional_usd, j.final_score, j.status,
                       j.attempts, j.created_at, j.finished_at, j.idempotency_key,
                       j.decision_code,
                       (SELECT string_agg(
                                   l.side || ' ' || trim_scale(l.quantity)::text
                                   || '@' || l.exchange,
                                   ', ' ORDER BY l.leg_index)
                        FROM legs l WHERE l.job_id = j.id AND l.attempt = 1) AS legs
                FROM hedge_jobs j
                WHERE CAST(:status AS text) IS NULL OR j.status = CAST(:status AS text)
                ORDER BY j.id DESC
                LIMIT :limit
                """
            ),
            {"status": status, "limit": limit},
        )
        .mappings()
        .all()
    )


def system_state_get(conn: Connection) -> RowMapping:
    return (
        conn.execute(
            text(
                "SELECT status, risk_mode, daily_loss_limit_usd, halt_reason, "
                "consecutive_failures, max_consecutive_failures, updated_at, updated_by "
                "FROM system_state"
            )
        )
        .mappings()
        .one()
    )


# -- market data ---------------------------------------------------------------

_MARKET_SNAPSHOT_UPSERT_BATCH = text(
    """
    INSERT INTO market_snapshots AS m (
        exchange, symbol, bid, ask, last, funding_rate, volatility, latency_ms, observed_at
    )
    SELECT * FROM unnest(
        CAST(:exchange AS text[]), CAST(:symbol AS text[]), CAST(:bid AS numeric[]),
        CAST(:ask AS numeric[]), CAST(:last AS numeric[]), CAST(:funding_rate AS numeric[]),
        CAST(:volatility AS numeric[]), CAST(:latency_ms AS numeric[]),
        CAST(:observed_at AS timestamptz[])
    )
    ON CONFLICT (exchange, symbol) DO UPDATE SET
        bid = EXCLUDED.bid, ask = EXCLUDED.ask, last = EXCLUDED.last,
        funding_rate = EXCLUDED.funding_rate, volatility = EXCLUDED.volatility,
        latency_ms = EXCLUDED.latency_ms, observed_at = EXCLUDED.observed_at
    WHERE EXCLUDED.observed_at >= m.observed_at
    """
)


def market_snapshot_upsert_batch(conn: Connection, columns: dict[str, list[Any]]) -> int:
    """Upsert snapshots; an older observation never replaces a newer one."""
    return int(conn.execute(_MARKET_SNAPSHOT_UPSERT_BATCH, columns).rowcount)


# -- control -------------------------------------------------------------------

_SYSTEM_STATE_SET = text(
    """
    UPDATE system_state
    SET status = :to_status, halt_reason = :halt_reason,
        consecutive_failures = CASE WHEN :reset_failures THEN 0 ELSE consecutive_failures END,
        updated_at = now(), updated_by = :actor
    WHERE status = ANY(CAST(:from_statuses AS text[]))
    RETURNING status
    """
)


def system_state_set_status(
    conn: Connection,
    *,
    from_statuses: list[str],
    to_status: str,
    actor: str,
    halt_reason: str | None = None,
    reset_failures: bool = False,
) -> bool:
    """Move the control row, guarded by the statuses it may come from."""
    row = conn.execute(
        _SYSTEM_STATE_SET,
        {
            "from_statuses": from_statuses,
            "to_status": to_status,
            "halt_reason": halt_reason,
            "actor": actor,
            "reset_failures": reset_failures,
        },
    ).first()
    return row is not None


def system_state_set_risk_mode(conn: Connection, *, risk_mode: str, actor: str) -> str:
    """Set the risk mode; returns the previous one."""
    return str(
        conn.execute(
            text(
                "UPDATE system_state s SET risk_mode = :mode, updated_at = now(), "
                "updated_by = :actor FROM (SELECT risk_mode FROM system_state FOR UPDATE) old "
                "RETURNING old.risk_mode"
            ),
            {"mode": risk_mode, "actor": actor},
        ).scalar_one()
    )


def system_state_lock(conn: Connection) -> RowMapping:
    """The control row, locked for the rest of the transaction."""
    return (
        conn.execute(
            text(
                "SELECT status, risk_mode, daily_loss_limit_usd, halt_reason, "
                "consecutive_failures, max_consecutive_failures FROM system_state FOR UPDATE"
            )
        )
        .mappings()
        .one()
    )


def control_event_insert(
    conn: Connection, *, actor: str, action: str, reason: str, details: str = "{}"
) -> int:
    return int(
        conn.execute(
            text(
                "INSERT INTO control_events (actor, action, reason, details) "
                "VALUES (:actor, :action, :reason, CAST(:details AS jsonb)) RETURNING id"
            ),
            {"actor": actor, "action": action, "reason": reason, "details": details},
        ).scalar_one()
    )


def exchange_leave_safe_mode(conn: Connection, name: str) -> str | None:
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


def exchange_enter_safe_mode(
    conn: Connection, *, name: str, reason: str, until: datetime | None
) -> bool:
    """Enter safe mode (idempotent: an exchange already in it keeps its first reason)."""
    result = conn.execute(
        text(
            "UPDATE exchanges SET safe_mode = true, safe_mode_reason = :reason, "
            "safe_mode_until = :until, updated_at = now() WHERE name = :name AND NOT safe_mode"
        ),
        {"name": name, "reason": reason, "until": until},
    )
    return bool(result.rowcount)


def job_force_admit(conn: Connection, *, job_id: int, actor: str) -> bool:
    result = conn.execute(
        text(
            "UPDATE hedge_jobs SET override_by = :actor, updated_at = now() "
            "WHERE id = :id AND status = 'pending'"
        ),
        {"id": job_id, "actor": actor},
    )
    return bool(result.rowcount)
