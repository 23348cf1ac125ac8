"""Every SQL statement of the queue in one place, each a function named ``<entity>_<verb>``.

Batched statements take parallel arrays and ``unnest`` them, so one round trip
writes a whole batch.  Numbers travel as text and are cast to ``numeric`` in
SQL: no float ever touches money.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
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


#: Advisory lock key serialising exchange syncs (``db upgrade``, daemon starts).
EXCHANGE_SYNC_LOCK_KEY = 0x70657270_7379  # "perpsy"


def exchange_sync_lock(conn: Connection) -> None:
    """Serialise syncs for this transaction: each sees the table the previous one left."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EXCHANGE_SYNC_LOCK_KEY})


def exchange_config_all(conn: Connection) -> Sequence[RowMapping]:
    """Every exchange's configured limits, as the settings sync compares them."""
    return (
        conn.execute(
            text(
                "SELECT name, enabled, starting_equity_usd, volume_share, arbitrage_share, "
                "reserve_share, single_job_cap, inflight_cap, max_concurrent_jobs, "
                "max_inflight_notional_usd FROM exchanges ORDER BY name"
            )
        )
        .mappings()
        .all()
    )


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


def _array_literal(values: Sequence[object], *, quote: bool = True) -> str:
    """A PostgreSQL array literal (``{"a","b",NULL}``) for ``CAST(:x AS type[])``.

    The driver's own list adaptation quotes element by element with regular
    expressions, which cost more CPU than validating the jobs (measured: 4.5 s of
    10 s writing 50,000 jobs); this is two ``str.replace`` per element.  Every
    element is quoted, so any text survives (NUL never reaches here: validation
    refuses it), and ``None`` is ``NULL``.  ``quote=False`` is for numbers only
    (ints, and decimals as text), which need no quoting."""
    if not quote:
        return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"
    return (
        "{"
        + ",".join(
            "NULL" if v is None else '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


#: The submission's text columns: quoted in their array literals (the rest are numbers).
_SUBMIT_TEXT = frozenset(
    {"strategy", "symbol", "deadline", "idempotency_key", "metadata"}
    | {"exchange", "side", "client_order_id"}
)


_JOB_SUBMIT_BATCH = text(
    """
    WITH new_jobs AS (
        INSERT INTO hedge_jobs (
            id, strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
            expected_volume_usd, risk_score, latency_score, vol_score, funding_score,
            liquidity_score, max_attempts, deadline, idempotency_key, metadata
        )
        SELECT u.id, u.strategy, u.symbol, u.notional_usd, u.expected_edge_bps,
               u.expected_pnl_usd, u.expected_volume_usd, u.risk_score, u.latency_score,
               u.vol_score, u.funding_score, u.liquidity_score, u.max_attempts,
               COALESCE(u.deadline,
                        statement_timestamp() + make_interval(secs => :max_pending_s)),
               u.idempotency_key, u.metadata
        FROM unnest(
            CAST(:id AS bigint[]), CAST(:strategy AS text[]), CAST(:symbol AS text[]),
            CAST(:notional_usd AS numeric[]), CAST(:expected_edge_bps AS numeric[]),
            CAST(:expected_pnl_usd AS numeric[]), CAST(:expected_volume_usd AS numeric[]),
            CAST(:risk_score AS numeric[]), CAST(:latency_score AS numeric[]),
            CAST(:vol_score AS numeric[]), CAST(:funding_score AS numeric[]),
            CAST(:liquidity_score AS numeric[]), CAST(:max_attempts AS integer[]),
            CAST(:deadline AS timestamptz[]), CAST(:idempotency_key AS text[]),
            CAST(:metadata AS jsonb[])
        ) AS u(id, strategy, symbol, notional_usd, expected_edge_bps, expected_pnl_usd,
               expected_volume_usd, risk_score, latency_score, vol_score, funding_score,
               liquidity_score, max_attempts, deadline, idempotency_key, metadata)
        WHERE u.idempotency_key IS NULL
           OR NOT EXISTS (SELECT FROM hedge_jobs_archive a
                          WHERE a.idempotency_key = u.idempotency_key)
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
    max_pending_s: float,
) -> set[int]:
    """Insert jobs, their legs and one ``null -> pending`` event each, in one statement.

    ``jobs`` and ``legs`` are parallel arrays (legs keyed by ``job_id``).  A job
    whose idempotency key already exists, in the table, its archive or earlier
    in the same batch, is skipped with its legs.  Returns the ids actually
    inserted.  A batch with keys holds :func:`archive_lock` (shared) first, so no
    job moves to the archive between the two checks.  A job without a deadline
    gets one ``max_pending_s`` after this statement (database clock): every
    pending job has a deadline.
    """
    params: dict[str, Any] = {
        k: _array_literal(v, quote=k in _SUBMIT_TEXT) for k, v in jobs.items()
    }
    params.update(
        {
            f"leg_{k}" if k != "leg_index" else k: _array_literal(v, quote=k in _SUBMIT_TEXT)
            for k, v in legs.items()
        }
    )
    params.update(to_status=to_status, actor=actor, max_pending_s=max_pending_s)
    return set(conn.execute(_JOB_SUBMIT_BATCH, params).scalars())


def job_ids_by_idempotency_key(conn: Connection, keys: list[str]) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT idempotency_key, id FROM hedge_jobs_all "
            "WHERE idempotency_key = ANY(CAST(:keys AS text[]))"
        ),
        {"keys": keys},
    )
    return {key: job_id for key, job_id in rows}


# -- reads ---------------------------------------------------------------------


def job_count_by_status(conn: Connection) -> dict[str, int]:
    """Every job ever submitted, live or archived, by status."""
    rows = conn.execute(text("SELECT status, count(*) FROM hedge_jobs_all GROUP BY status"))
    return {status: int(n) for status, n in rows}


def job_count_by_exchange_status(conn: Connection) -> dict[str, dict[str, int]]:
    """Jobs per exchange they touch and status (a job counts once per exchange)."""
    rows = conn.execute(
        text(
            """
            SELECT l.exchange, j.status, count(DISTINCT j.id)
            FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id
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
                        FROM legs_all l WHERE l.job_id = j.id AND l.attempt = 1) AS legs
                FROM hedge_jobs_all j
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
       OR (m.observed_at > statement_timestamp() + make_interval(secs => :max_future_skew_s)
           AND EXCLUDED.observed_at
               <= statement_timestamp() + make_interval(secs => :max_future_skew_s))
    """
)


def market_snapshot_upsert_batch(
    conn: Connection, columns: dict[str, list[Any]], *, max_future_skew_s: float
) -> int:
    """Upsert snapshots (one per key); an older observation never replaces a newer one.

    Except a stored one from the future: a row observed more than
    ``max_future_skew_s`` ahead of the database clock (a skewed feed's) is
    replaced by any observation within that bound, so one bad clock cannot block
    every later snapshot of its key."""
    params: dict[str, Any] = dict(columns, max_future_skew_s=max_future_skew_s)
    return int(conn.execute(_MARKET_SNAPSHOT_UPSERT_BATCH, params).rowcount)


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


def system_state_lock(conn: Connection, *, shared: bool = False) -> RowMapping:
    """The control row, locked for the rest of the transaction.

    ``shared`` (the tick): a share lock, taken alongside the workers' claims,
    which read the row ``FOR SHARE`` too; a halt or pause waits for both, so
    nothing starts after a halt has committed.
    """
    lock = "FOR SHARE" if shared else "FOR UPDATE"
    return (
        conn.execute(
            text(
                "SELECT status, risk_mode, daily_loss_limit_usd, halt_reason, "
                f"consecutive_failures, max_consecutive_failures FROM system_state {lock}"
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
                # clock_timestamp(): written after the guarded UPDATE got its lock, so an
                # event's time orders it after every claim that could not see it.
                "INSERT INTO control_events (at, actor, action, reason, details) "
                "VALUES (clock_timestamp(), :actor, :action, :reason, CAST(:details AS jsonb)) "
                "RETURNING id"
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


# -- the admission tick ----------------------------------------------------------

#: Advisory lock key serialising ticks across every scheduler process and host.
TICK_LOCK_KEY = 0x70657270_6274  # "perpbt"


def scheduler_try_lock(conn: Connection) -> bool:
    """Take the tick lock for this transaction, or return False if another tick holds it."""
    return bool(
        conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": TICK_LOCK_KEY}).scalar()
    )


def db_now(conn: Connection) -> datetime:
    """The database clock: one clock for every host."""
    value: datetime = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
    return value


_JOB_EXPIRE_OVERDUE = text(
    """
    WITH expired AS (
        UPDATE hedge_jobs j
        SET status = 'expired', finished_at = :now, updated_at = :now,
            decision_code = 'deadline_passed',
            decision_context = jsonb_strip_nulls(jsonb_build_object(
                'deadline', j.deadline, 'held_code', j.decision_code,
                'held_context', j.decision_context))
        WHERE j.status = 'pending' AND j.deadline IS NOT NULL AND j.deadline <= :now
        RETURNING j.id, j.decision_context
    )
    INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
    SELECT id, :now, 'pending', 'expired', :actor,
           'deadline passed' || coalesce(', held: ' || (decision_context ->> 'held_code'), ''),
           'deadline_passed', decision_context
    FROM expired
    RETURNING job_id
    """
)


def job_expire_overdue(conn: Connection, *, now: datetime, actor: str) -> list[int]:
    """pending -> expired for every job whose deadline has passed (uses the deadline index),
    with the last reason it was held (``held_code``, ``held_context``) in its context."""
    return list(conn.execute(_JOB_EXPIRE_OVERDUE, {"now": now, "actor": actor}).scalars())


_JOB_COLUMNS_FOR_RISK = """
    j.id, j.strategy, j.symbol, j.notional_usd, j.expected_edge_bps, j.expected_pnl_usd,
    j.expected_volume_usd, j.risk_score, j.latency_score, j.vol_score, j.funding_score,
    j.liquidity_score, j.final_score, j.decision_code, j.override_by,
    l.exchanges, l.sides, l.quantities
"""

_LEGS_LATERAL = """
    CROSS JOIN LATERAL (
        SELECT array_agg(exchange ORDER BY leg_index) AS exchanges,
               array_agg(side ORDER BY leg_index) AS sides,
               array_agg(quantity ORDER BY leg_index) AS quantities
        FROM legs WHERE job_id = j.id AND attempt = 1
    ) l
"""

_JOB_SELECT_FOR_RESCORE = text(
    f"""
    SELECT {_JOB_COLUMNS_FOR_RISK}
    FROM (
        SELECT * FROM hedge_jobs WHERE status = 'pending' AND scored_at < :scored_before
        ORDER BY scored_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
    ) j
    {_LEGS_LATERAL}
    """
)


def job_select_for_rescore(
    conn: Connection, *, limit: int, scored_before: datetime
) -> Sequence[RowMapping]:
    """Pending jobs scored longest ago and before ``scored_before`` (never-scored first),
    locked, with their legs."""
    return (
        conn.execute(_JOB_SELECT_FOR_RESCORE, {"limit": limit, "scored_before": scored_before})
        .mappings()
        .all()
    )


_JOB_SELECT_CANDIDATES = text(
    f"""
    SELECT {_JOB_COLUMNS_FOR_RISK}
    FROM (
        SELECT * FROM hedge_jobs j
        WHERE status = 'pending' AND final_score IS NOT NULL AND run_after <= :now
          AND (CAST(:after_score AS numeric) IS NULL OR final_score < :after_score
               OR (final_score = :after_score AND id > :after_id))
          AND (override_by IS NOT NULL OR decision_code IS NULL
               OR decision_code <> ALL(CAST(:held_codes AS text[])))
          -- every leg on an open market: a scalar subquery, checked row by row as the
          -- index hands rows over in score order (a NOT EXISTS would be turned into an
          -- anti-join over every pending job's legs, then sorted: 10x slower at 1M)
          AND (SELECT bool_and(
                   l.exchange || ' ' || j.symbol = ANY(CAST(:markets AS text[]))
                   OR (j.strategy = ANY(CAST(:reducing_strategies AS text[]))
                       AND l.exchange || ' ' || j.symbol
                           = ANY(CAST(:reducing_markets AS text[]))))
               FROM legs l WHERE l.job_id = j.id AND l.attempt = 1)
        ORDER BY final_score DESC NULLS LAST, id
        LIMIT :limit FOR UPDATE SKIP LOCKED
    ) j
    {_LEGS_LATERAL}
    ORDER BY j.final_score DESC, j.id
    """
)


@dataclass(frozen=True)
class CandidateWindow:
    """Which pending jobs may be candidates: every leg on an open market (``"<exchange>
    <symbol>"``), or on a safe-mode exchange's market for a risk-reducing strategy; not
    held for a job-level reason since its last re-score (``held_codes``, unless an
    operator forced it); after ``after`` (score, id) when paging."""

    markets: Sequence[str]
    reducing_markets: Sequence[str]
    reducing_strategies: Sequence[str]
    held_codes: Sequence[str]
    after: tuple[Decimal, int] | None = None


def job_select_candidates(
    conn: Connection, *, now: datetime, limit: int, window: CandidateWindow
) -> Sequence[RowMapping]:
    """Due, scored pending jobs in the window, best score first, locked (SKIP LOCKED), with
    their legs.  Keyset paging: pass the last row's (final_score, id) as ``window.after``."""
    after_score, after_id = window.after if window.after is not None else (None, None)
    params = {
        "now": now,
        "limit": limit,
        "after_score": None if after_score is None else str(after_score),
        "after_id": after_id,
        "held_codes": list(window.held_codes),
        "markets": list(window.markets),
        "reducing_markets": list(window.reducing_markets),
        "reducing_strategies": list(window.reducing_strategies),
    }
    return conn.execute(_JOB_SELECT_CANDIDATES, params).mappings().all()


_JOB_RESCORE_BATCH = text(
    """
    UPDATE hedge_jobs j
    SET final_score = coalesce(u.score, j.final_score), scored_at = :now, decision_code = u.code,
        decision_context = u.context
    FROM unnest(
        CAST(:id AS bigint[]), CAST(:score AS numeric[]), CAST(:code AS text[]),
        CAST(:context AS jsonb[])
    ) AS u(id, score, code, context)
    WHERE j.id = u.id AND j.status = 'pending'
    """
)


def job_rescore_batch(
    conn: Connection,
    *,
    now: datetime,
    ids: list[int],
    scores: list[str | None],
    codes: list[str],
    contexts: list[str],
) -> int:
    """Store new scores (None keeps the old one) and the latest decision of pending jobs."""
    if not ids:
        return 0
    result = conn.execute(
        _JOB_RESCORE_BATCH,
        {"now": now, "id": ids, "score": scores, "code": codes, "context": contexts},
    )
    return int(result.rowcount)


_JOB_TRANSITION_BATCH = text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:id AS bigint[]), CAST(:score AS numeric[]), CAST(:code AS text[]),
            CAST(:context AS jsonb[])
        ) AS u(id, score, code, context)
    ),
    moved AS (
        UPDATE hedge_jobs j
        SET status = :to_status,
            final_score = coalesce(u.score, j.final_score),
            scored_at = CASE WHEN u.score IS NULL THEN j.scored_at ELSE :now END,
            decision_code = u.code, decision_context = u.context,
            admitted_at = CASE WHEN :to_status = 'admitted' THEN :now ELSE j.admitted_at END,
            finished_at = CASE WHEN :finishes THEN :now ELSE j.finished_at END,
            updated_at = :now
        FROM u
        WHERE j.id = u.id AND j.status = :from_status
        RETURNING j.id, u.code, u.context
    )
    INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
    SELECT id, :now, :from_status, :to_status, :actor, :reason, code, context FROM moved
    RETURNING job_id
    """
)


def job_transition_batch(
    conn: Connection,
    *,
    from_status: str,
    to_status: str,
    finishes: bool,
    actor: str,
    reason: str,
    now: datetime,
    ids: list[int],
    codes: list[str],
    contexts: list[str],
    scores: list[str | None],
) -> list[int]:
    """Move jobs along one lifecycle edge, guarded by ``from_status``, with one event each.

    Returns the ids that moved; a job no longer in ``from_status`` is left alone.
    Callers go through :mod:`perpbot_db.store.transitions`, which checks the edge.
    """
    if not ids:
        return []
    return list(
        conn.execute(
            _JOB_TRANSITION_BATCH,
            {
                "from_status": from_status,
                "to_status": to_status,
                "finishes": finishes,
                "actor": actor,
                "reason": reason,
                "now": now,
                "id": ids,
                "code": codes,
                "context": contexts,
                "score": scores,
            },
        ).scalars()
    )


_RESERVATION_INSERT_BATCH = text(
    """
    INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd, created_at)
    SELECT job_id, exchange, tier, amount, :now FROM unnest(
        CAST(:job_id AS bigint[]), CAST(:exchange AS text[]), CAST(:tier AS text[]),
        CAST(:amount AS numeric[])
    ) AS u(job_id, exchange, tier, amount)
    """
)


def reservation_insert_batch(
    conn: Connection,
    *,
    now: datetime,
    job_ids: list[int],
    exchanges: list[str],
    tiers: list[str],
    amounts: list[str],
) -> None:
    if job_ids:
        conn.execute(
            _RESERVATION_INSERT_BATCH,
            {
                "now": now,
                "job_id": job_ids,
                "exchange": exchanges,
                "tier": tiers,
                "amount": amounts,
            },
        )


def exchange_books(conn: Connection, *, day: date) -> Sequence[RowMapping]:
    """Every exchange: limits, active reservations by tier, in-flight jobs, PnL of ``day``."""
    return (
        conn.execute(
            text(
                """
                SELECT e.name, e.enabled, e.equity_usd, e.volume_share, e.arbitrage_share,
                       e.reserve_share, e.single_job_cap, e.inflight_cap, e.safe_mode,
                       e.safe_mode_reason, e.safe_mode_until, e.max_concurrent_jobs,
                       e.max_inflight_notional_usd, e.consecutive_failures,
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
            ),
            {"day": day},
        )
        .mappings()
        .all()
    )


# Two counts, each on its partial index: an IN across states would scan the table.
_JOB_INFLIGHT_TOTALS = text(
    "SELECT count(*), coalesce(sum(notional_usd), 0) FROM ("
    "  SELECT notional_usd FROM hedge_jobs WHERE status = 'admitted'"
    "  UNION ALL SELECT notional_usd FROM hedge_jobs WHERE status = 'running') j"
)


def job_inflight_totals(conn: Connection) -> tuple[int, Decimal]:
    """Admitted plus running jobs: how many, and their notional (USD) together."""
    count, notional = conn.execute(_JOB_INFLIGHT_TOTALS).one()
    return int(count), Decimal(notional)


def market_snapshot_all(conn: Connection) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                "SELECT exchange, symbol, bid, ask, last, funding_rate, volatility, latency_ms, "
                "observed_at FROM market_snapshots"
            )
        )
        .mappings()
        .all()
    )


def blacklist_active(conn: Connection, *, now: datetime) -> Sequence[RowMapping]:
    return (
        conn.execute(
            text(
                "SELECT kind, target, code, reason, expires_at FROM blacklist "
                "WHERE lifted_at IS NULL AND expires_at > :now"
            ),
            {"now": now},
        )
        .mappings()
        .all()
    )


def blacklist_insert(
    conn: Connection,
    *,
    kind: str,
    target: str,
    code: str,
    reason: str,
    created_by: str,
    now: datetime,
    expires_at: datetime,
    details: str = "{}",
) -> None:
    conn.execute(
        text(
            "INSERT INTO blacklist (kind, target, code, reason, created_by, created_at, "
            "expires_at, details) VALUES (:kind, :target, :code, :reason, :by, :now, :exp, "
            "CAST(:details AS jsonb))"
        ),
        {
            "kind": kind,
            "target": target,
            "code": code,
            "reason": reason,
            "by": created_by,
            "now": now,
            "exp": expires_at,
            "details": details,
        },
    )


def exchange_safe_mode_expired(conn: Connection, *, now: datetime) -> list[str]:
    """Leave safe mode where its timed cool-down has passed; returns those exchanges."""
    return list(
        conn.execute(
            text(
                "UPDATE exchanges SET safe_mode = false, safe_mode_reason = NULL, "
                "safe_mode_until = NULL, consecutive_failures = 0, updated_at = :now "
                "WHERE safe_mode AND safe_mode_until IS NOT NULL AND safe_mode_until <= :now "
                "RETURNING name"
            ),
            {"now": now},
        ).scalars()
    )


def daily_counter_global(conn: Connection, *, day: date) -> RowMapping | None:
    return (
        conn.execute(
            text(
                "SELECT realized_pnl_usd, loss_used_usd, jobs_failed FROM daily_counters "
                "WHERE day = :day AND scope = 'global'"
            ),
            {"day": day},
        )
        .mappings()
        .first()
    )


#: NOTIFY channels: hints only, polling stays the source of truth.
CHANNEL_SUBMITTED = "perpbot_submitted"
CHANNEL_ADMITTED = "perpbot_admitted"


def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Sent inside the caller's transaction: delivered only if it commits."""
    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


# -- cancel ----------------------------------------------------------------------


def job_status_lock(conn: Connection, job_id: int) -> str | None:
    """The job's status, its row locked for the rest of the transaction (None: no such job)."""
    value = conn.execute(
        text("SELECT status FROM hedge_jobs WHERE id = :id FOR UPDATE"), {"id": job_id}
    ).scalar()
    return None if value is None else str(value)


def job_archived_status(conn: Connection, job_id: int) -> str | None:
    """The final status of an archived job (None: not in the archive)."""
    value = conn.execute(
        text("SELECT status FROM hedge_jobs_archive WHERE id = :id"), {"id": job_id}
    ).scalar()
    return None if value is None else str(value)


def reservation_release_for_jobs(
    conn: Connection, *, job_ids: list[int], reason: str, now: datetime
) -> int:
    """Release the active reservations of jobs that end (in the transaction that ends them)."""
    result = conn.execute(
        text(
            "UPDATE capital_reservations SET status = 'released', released_at = :now, "
            "release_reason = :reason "
            "WHERE job_id = ANY(CAST(:ids AS bigint[])) AND status = 'active'"
        ),
        {"ids": job_ids, "reason": reason, "now": now},
    )
    return int(result.rowcount)


# -- workers: claim, lease, finish ----------------------------------------------------

#: Workers NOTIFY this when jobs finish: capacity is free, the scheduler may admit more.
CHANNEL_FINISHED = "perpbot_finished"

#: System statuses in which new work may start (admission and claims alike).
STARTING_STATUSES = ("running", "manual_override")

_LEG_COLUMNS = """
    l.id, l.job_id, l.leg_index, l.attempt, l.exchange, l.symbol, l.side, l.quantity,
    l.reduce_only, l.unwinds_leg_id, l.client_order_id, l.status, l.filled_quantity,
    l.avg_price, l.fee_usd, l.exchange_order_id, l.error
"""


def worker_register(
    conn: Connection, *, worker_id: str, host: str, pid: int, concurrency: int
) -> None:
    conn.execute(
        text(
            "INSERT INTO workers (id, host, pid, concurrency) VALUES (:id, :host, :pid, :c) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL"
        ),
        {"id": worker_id, "host": host, "pid": pid, "c": concurrency},
    )


_WORKER_HEARTBEAT = text(
    """
    WITH renewed AS (
        UPDATE hedge_jobs SET lease_expires_at = now() + make_interval(secs => :lease_s)
        WHERE status = 'running' AND worker_id = :worker
        RETURNING id
    ), beat AS (
        UPDATE workers SET heartbeat_at = now() WHERE id = :worker RETURNING id
    )
    SELECT count(*) FROM renewed
    """
)


def worker_heartbeat(conn: Connection, *, worker_id: str, lease_s: float) -> int:
    """Renew the lease of every job the worker runs; count them."""
    return int(
        conn.execute(_WORKER_HEARTBEAT, {"worker": worker_id, "lease_s": lease_s}).scalar_one()
    )


def worker_stop(conn: Connection, *, worker_id: str) -> None:
    conn.execute(text("UPDATE workers SET stopped_at = now() WHERE id = :id"), {"id": worker_id})


_JOB_CLAIM_BATCH = text(
    f"""
    WITH starting AS (
        SELECT status FROM system_state
        WHERE status = ANY(CAST(:starting AS text[])) FOR SHARE
    ), picked AS (
        SELECT id FROM hedge_jobs
        WHERE status = 'admitted' AND EXISTS (SELECT FROM starting)
        ORDER BY admitted_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE hedge_jobs j
        SET status = 'running', worker_id = :worker, attempts = j.attempts + 1,
            lease_expires_at = now() + make_interval(secs => :lease_s),
            started_at = now(), updated_at = now()
        FROM picked p WHERE j.id = p.id AND j.status = 'admitted'
        RETURNING j.id, j.attempts, j.max_attempts
    ), events AS (
        INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
        SELECT id, now(), 'admitted', 'running', :worker, 'claimed', 'claimed',
               jsonb_build_object('attempt', attempts)
        FROM claimed
    ), sent AS (
        UPDATE legs l SET status = 'sent', sent_at = now(), updated_at = now()
        FROM claimed c WHERE l.job_id = c.id AND l.attempt = c.attempts AND l.status = 'pending'
        RETURNING l.*
    )
    SELECT c.attempts AS job_attempt, c.max_attempts, {_LEG_COLUMNS}
    FROM claimed c JOIN sent l ON l.job_id = c.id
    ORDER BY l.job_id, l.leg_index
    """
)


def job_claim_batch(
    conn: Connection, *, worker_id: str, limit: int, lease_s: float
) -> Sequence[RowMapping]:
    """admitted -> running for up to ``limit`` jobs in one statement, their legs marked sent.

    Marking a leg ``sent`` before its order goes out is what makes a crash safe:
    whoever finds the job later asks the exchange before doing anything else.
    Nothing is claimed unless the system is running (a halt or pause stops starts).
    """
    return (
        conn.execute(
            _JOB_CLAIM_BATCH,
            {
                "worker": worker_id,
                "limit": limit,
                "lease_s": lease_s,
                "starting": list(STARTING_STATUSES),
            },
        )
        .mappings()
        .all()
    )


_JOB_RECOVER_EXPIRED = text(
    f"""
    WITH picked AS (
        SELECT id, worker_id AS lost_worker, lease_expires_at AS lost_lease FROM hedge_jobs
        WHERE status = 'running' AND lease_expires_at < now()
        ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED
    ), stolen AS (
        UPDATE hedge_jobs j
        SET worker_id = :worker, lease_expires_at = now() + make_interval(secs => :lease_s),
            updated_at = now()
        FROM picked p
        WHERE j.id = p.id AND j.status = 'running' AND j.lease_expires_at < now()
        RETURNING j.id, j.attempts, j.max_attempts, p.lost_worker, p.lost_lease
    )
    SELECT c.attempts AS job_attempt, c.max_attempts, c.lost_worker, c.lost_lease, {_LEG_COLUMNS}
    FROM stolen c JOIN legs l ON l.job_id = c.id AND l.attempt = c.attempts
    ORDER BY l.job_id, l.leg_index
    """
)


def job_recover_expired(
    conn: Connection, *, worker_id: str, limit: int, lease_s: float
) -> Sequence[RowMapping]:
    """Take over running jobs whose lease expired: the status and lease are re-checked in the
    statement that writes the new owner, so a worker renewing in time keeps its job."""
    return (
        conn.execute(
            _JOB_RECOVER_EXPIRED, {"worker": worker_id, "limit": limit, "lease_s": lease_s}
        )
        .mappings()
        .all()
    )


def handed_back_owner(worker_id: str) -> str:
    """The owner a job is handed back to: neither the worker's heartbeat nor its finish
    matches it again, and recovery takes it once its lease is past."""
    return f"{worker_id}:handed-back"


def job_lease_hand_back(
    conn: Connection,
    *,
    worker_id: str,
    job_ids: Sequence[int],
    not_before: datetime | None = None,
) -> int:
    """Give up jobs this worker cannot finish: the owner becomes ``<worker>:handed-back``, so
    neither its heartbeat nor its finish touches them again, and the lease ends at once, or
    at ``not_before`` (the expiry of orders whose fate is unknown: until then such an order
    may still reach the venue, so recovery must not decide it never will); recovery
    reconciles them next."""
    result = conn.execute(
        text(
            "UPDATE hedge_jobs SET lease_expires_at = greatest(now() - interval '1 microsecond', "
            "CAST(:not_before AS timestamptz)), worker_id = :owner, updated_at = now() "
            "WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'running' "
            "AND worker_id = :worker"
        ),
        {
            "ids": list(job_ids),
            "worker": worker_id,
            "owner": handed_back_owner(worker_id),
            "not_before": not_before,
        },
    )
    return int(result.rowcount)


def job_lease_hand_back_all(conn: Connection, *, worker_id: str) -> int:
    """Give up every job still running under this worker's id while it holds none in hand.

    A claim whose commit went through but whose answer was lost with the connection
    leaves such jobs behind (their legs marked ``sent``, nothing sent), and so does a
    batch cut off after its orders left: recovery asks the exchange and settles them.
    Their lease is left to run out, not cut short: it outlasts every order the fence
    let out, so recovery asks only once those orders can no longer arrive."""
    result = conn.execute(
        text(
            "UPDATE hedge_jobs SET worker_id = :owner, updated_at = now() "
            "WHERE status = 'running' AND worker_id = :worker"
        ),
        {"worker": worker_id, "owner": handed_back_owner(worker_id)},
    )
    return int(result.rowcount)


@dataclass(frozen=True)
class LeaseFence:
    """What a lease fence decided, job by job, in the statement that wrote it.

    ``held``: still this worker's at the expected attempt with enough lease
    left; their orders may go out, expiring at ``db_now + min_left_s``.
    ``handed_back``: still this worker's but with too little lease left (it
    stalled): handed back to recovery, send nothing.
    Any other asked job was recovered (or finished) from under the worker:
    write nothing.  ``db_now``: the database clock at the fence (``None`` only
    when an unwind fence found no job at all).
    """

    held: list[int]
    handed_back: list[int]
    db_now: datetime | None

    def lost(self, job_ids: Iterable[int]) -> list[int]:
        """The asked jobs that are neither held nor handed back."""
        kept = {*self.held, *self.handed_back}
        return [job_id for job_id in job_ids if job_id not in kept]


def _fence_ctes(asked: str) -> str:
    """The fence as two CTEs over ``asked`` (``id``, ``attempt``): ``fence`` reads which of
    them this worker still holds at that attempt and whether each has more than
    ``min_left_s`` of lease left (``held``); ``handed`` hands the others it still owns
    back to recovery.  A held job is only read, never written: the lease it has already
    outlasts every order the fence lets out (they expire ``min_left_s`` after it), and
    recovery takes a job only once its lease is past, re-checked as it writes."""
    return f"""
    fence AS (
        SELECT j.id, j.lease_expires_at > now() + make_interval(secs => :min_left_s) AS held
        FROM hedge_jobs j JOIN {asked} a ON j.id = a.id AND j.attempts = a.attempt
        WHERE j.status = 'running' AND j.worker_id = :worker
    ), handed AS (
        UPDATE hedge_jobs j SET worker_id = :handed_back,
            lease_expires_at = now() - interval '1 microsecond', updated_at = now()
        FROM fence f
        WHERE j.id = f.id AND NOT f.held AND j.status = 'running' AND j.worker_id = :worker
        RETURNING j.id
    )
    """


_JOB_LEASE_FENCE = text(
    f"""
    WITH asked AS (
        SELECT * FROM unnest(CAST(:job_id AS bigint[]), CAST(:attempt AS integer[]))
            AS a(id, attempt)
    ), {_fence_ctes("asked")}
    SELECT now() AS db_now,
           coalesce((SELECT array_agg(id ORDER BY id) FROM fence WHERE held), '{{}}') AS held,
           coalesce((SELECT array_agg(id ORDER BY id) FROM handed), '{{}}') AS handed_back
    """
)


def job_lease_fence(
    conn: Connection,
    *,
    worker_id: str,
    job_ids: Sequence[int],
    attempts: Sequence[int],
    min_left_s: float,
) -> LeaseFence:
    """The fence right before a batch's orders leave, in one statement.

    A job is held when it is still ``running``, owned by ``worker_id``, at the
    attempt whose orders are about to go (``attempts``, aligned with
    ``job_ids``), with more than ``min_left_s`` of lease left.  Still owned but
    with less left: handed back to recovery in the same statement, so a worker
    that stalled between its claim and its send never sends.  Recovery takes a
    job over by changing its owner in one guarded statement once its lease is
    past, so a held job cannot be recovered before ``db_now + min_left_s``, and
    the orders' expiry is no later than that.  Held jobs are only read: the
    common path writes nothing.
    """
    row = (
        conn.execute(
            _JOB_LEASE_FENCE,
            {
                "job_id": list(job_ids),
                "attempt": list(attempts),
                "worker": worker_id,
                "handed_back": handed_back_owner(worker_id),
                "min_left_s": min_left_s,
            },
        )
        .mappings()
        .one()
    )
    return LeaseFence(list(row["held"]), list(row["handed_back"]), row["db_now"])


_LEG_INSERT_UNWINDS = text(
    f"""
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:job_id AS bigint[]), CAST(:leg_index AS smallint[]), CAST(:attempt AS smallint[]),
            CAST(:exchange AS text[]), CAST(:symbol AS text[]), CAST(:side AS text[]),
            CAST(:quantity AS numeric[]), CAST(:unwinds AS bigint[]),
            CAST(:client_order_id AS text[])
        ) AS u(job_id, leg_index, attempt, exchange, symbol, side, quantity, unwinds,
               client_order_id)
    ), asked AS (
        SELECT DISTINCT job_id AS id, attempt FROM u
    ), {_fence_ctes("asked")}, inserted AS (
        INSERT INTO legs (job_id, leg_index, attempt, exchange, symbol, side, quantity,
                          reduce_only, unwinds_leg_id, client_order_id, status, sent_at)
        SELECT u.job_id, u.leg_index, u.attempt, u.exchange, u.symbol, u.side, u.quantity, true,
               u.unwinds, u.client_order_id, 'sent', now()
        FROM u JOIN fence f ON f.id = u.job_id AND f.held
        RETURNING id, job_id, leg_index, client_order_id
    )
    SELECT true AS held, job_id, id, leg_index, client_order_id, now() AS db_now FROM inserted
    UNION ALL
    SELECT false, id, NULL, NULL, NULL, now() FROM handed
    """
)


def leg_insert_unwinds(
    conn: Connection,
    *,
    worker_id: str,
    columns: dict[str, list[Any]],
    min_left_s: float,
) -> tuple[list[RowMapping], LeaseFence]:
    """Record unwind orders as ``sent`` before they go out, behind the same fence as
    :func:`job_lease_fence` (one statement): only for jobs this worker still holds at the
    unwinds' attempt with more than ``min_left_s`` of lease left; a job still owned with
    less left is handed back.  Returns the legs written and the fence."""
    rows = (
        conn.execute(
            _LEG_INSERT_UNWINDS,
            {
                "worker": worker_id,
                "handed_back": handed_back_owner(worker_id),
                "min_left_s": min_left_s,
                **columns,
            },
        )
        .mappings()
        .all()
    )
    legs = [row for row in rows if row["held"]]
    fence = LeaseFence(
        held=sorted({row["job_id"] for row in legs}),
        handed_back=sorted(row["job_id"] for row in rows if not row["held"]),
        db_now=rows[0]["db_now"] if rows else None,
    )
    return legs, fence


_JOB_FINISH_BATCH = text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:id AS bigint[]), CAST(:to_status AS text[]), CAST(:code AS text[]),
            CAST(:context AS jsonb[]), CAST(:result AS jsonb[]), CAST(:unhedged AS boolean[]),
            CAST(:backoff_s AS float8[])
        ) AS u(id, to_status, code, context, result, unhedged, backoff_s)
    ), moved AS (
        UPDATE hedge_jobs j
        SET status = u.to_status, decision_code = u.code, decision_context = u.context,
            result = u.result, unhedged = j.unhedged OR u.unhedged,
            finished_at = CASE WHEN u.to_status = 'pending' THEN NULL ELSE now() END,
            run_after = CASE WHEN u.to_status = 'pending'
                             THEN now() + make_interval(secs => u.backoff_s) ELSE j.run_after END,
            scored_at = CASE WHEN u.to_status = 'pending' THEN '-infinity' ELSE j.scored_at END,
            lease_expires_at = NULL, updated_at = now()
        FROM u
        WHERE j.id = u.id AND j.status = 'running' AND j.worker_id = :worker
        RETURNING j.id, u.to_status, u.code, u.context
    ), events AS (
        INSERT INTO job_events (job_id, at, from_status, to_status, actor, reason, code, details)
        SELECT m.id, now(), e.from_status, e.to_status, :worker, e.reason, m.code, m.context
        FROM moved m CROSS JOIN LATERAL (VALUES
            ('running', CASE WHEN m.to_status = 'pending' THEN 'failed' ELSE m.to_status END,
             'attempt ended'),
            ('failed', 'pending', 'retry after backoff')
        ) AS e(from_status, to_status, reason)
        WHERE e.from_status = 'running' OR m.to_status = 'pending'
    ), released AS (
        UPDATE capital_reservations
        SET status = 'released', released_at = now(), release_reason = 'job ' || m.to_status
        FROM moved m WHERE job_id = m.id AND status = 'active'
    ), booked AS (
        UPDATE legs l
        SET status = v.status, filled_quantity = v.filled, avg_price = v.avg_price,
            fee_usd = v.fee, exchange_order_id = v.exchange_order_id, error = v.error,
            realized_pnl_usd = v.pnl, booked_at = now(), updated_at = now()
        FROM unnest(
            CAST(:leg_id AS bigint[]), CAST(:leg_status AS text[]), CAST(:leg_filled AS numeric[]),
            CAST(:leg_avg_price AS numeric[]), CAST(:leg_fee AS numeric[]),
            CAST(:leg_exchange_order_id AS text[]), CAST(:leg_error AS text[]),
            CAST(:leg_pnl AS numeric[])
        ) AS v(id, status, filled, avg_price, fee, exchange_order_id, error, pnl)
        WHERE l.id = v.id AND l.job_id IN (SELECT id FROM moved)
    ), next_legs AS (
        INSERT INTO legs (job_id, leg_index, attempt, exchange, symbol, side, quantity,
                          client_order_id)
        SELECT n.job_id, n.leg_index, n.attempt, n.exchange, n.symbol, n.side, n.quantity,
               n.client_order_id
        FROM unnest(
            CAST(:next_job_id AS bigint[]), CAST(:next_leg_index AS smallint[]),
            CAST(:next_attempt AS smallint[]), CAST(:next_exchange AS text[]),
            CAST(:next_symbol AS text[]), CAST(:next_side AS text[]),
            CAST(:next_quantity AS numeric[]), CAST(:next_client_order_id AS text[])
        ) AS n(job_id, leg_index, attempt, exchange, symbol, side, quantity, client_order_id)
        WHERE n.job_id IN (SELECT id FROM moved WHERE to_status = 'pending')
    )
    SELECT id FROM moved
    """
)


def job_finish_batch(
    conn: Connection,
    *,
    worker_id: str,
    jobs: dict[str, list[Any]],
    legs: dict[str, list[Any]],
    next_legs: dict[str, list[Any]],
) -> list[int]:
    """End attempts in one statement, guarded by status ``running`` and this worker's id.

    For each job that moved: its events (``running -> failed -> pending`` for a
    retry), its reservations released, its orders' fills and PnL booked, and a
    retry's fresh legs.  A job recovered from under this worker is left alone;
    returns the ids that moved (only those may be counted).
    """
    if not jobs["id"]:
        return []
    params: dict[str, Any] = {"worker": worker_id, **jobs, **legs, **next_legs}
    return list(conn.execute(_JOB_FINISH_BATCH, params).scalars())


_DAILY_COUNTER_ADD_BATCH = text(
    """
    WITH added AS (
        INSERT INTO daily_counters AS d (
            day, scope, volume_usd, fees_usd, realized_pnl_usd, loss_used_usd,
            jobs_completed, jobs_failed, updated_at
        )
        SELECT (now() AT TIME ZONE 'UTC')::date, u.*, now() FROM unnest(
            CAST(:scope AS text[]), CAST(:volume AS numeric[]), CAST(:fees AS numeric[]),
            CAST(:pnl AS numeric[]), CAST(:loss AS numeric[]), CAST(:completed AS int[]),
            CAST(:failed AS int[])
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


def daily_counter_add_batch(
    conn: Connection, *, worker_id: str, finished: int, columns: dict[str, list[Any]]
) -> RowMapping:
    """Add a finish's deltas to today's rows (scopes in one order: no deadlock between
    workers); returns today's global loss, the loss limit, the system status and risk
    mode, and the transaction's clock (``now``)."""
    return (
        conn.execute(
            _DAILY_COUNTER_ADD_BATCH, {"worker": worker_id, "finished": finished, **columns}
        )
        .mappings()
        .one()
    )


def exchange_failure_streaks(
    conn: Connection, *, names: list[str], resets: list[bool], adds: list[int]
) -> Sequence[RowMapping]:
    """Consecutive failed jobs per exchange (reset by a success); only rows that change."""
    return (
        conn.execute(
            text(
                "UPDATE exchanges e SET consecutive_failures = v.new, updated_at = now() "
                "FROM (SELECT x.name, CASE WHEN u.reset THEN 0 ELSE x.consecutive_failures END "
                "      + u.add AS new FROM unnest(CAST(:names AS text[]), "
                "      CAST(:resets AS boolean[]), CAST(:adds AS int[])) AS u(name, reset, add) "
                "      JOIN exchanges x ON x.name = u.name ORDER BY x.name) v "
                "WHERE e.name = v.name AND e.consecutive_failures <> v.new "
                "RETURNING e.name, e.consecutive_failures"
            ),
            {"names": names, "resets": resets, "adds": adds},
        )
        .mappings()
        .all()
    )


def system_state_failure_streak(conn: Connection, *, reset: bool, add: int) -> RowMapping | None:
    """The global streak of failed attempts; the row is written (and locked) only on change,
    so a run of successes never touches it.  Returns the new values, None if unchanged."""
    return (
        conn.execute(
            text(
                "UPDATE system_state SET consecutive_failures = "
                "  CASE WHEN :reset THEN 0 ELSE consecutive_failures END + :add "
                "WHERE consecutive_failures <> CASE WHEN :reset THEN 0 "
                "  ELSE consecutive_failures END + :add "
                "RETURNING consecutive_failures, max_consecutive_failures, status"
            ),
            {"reset": reset, "add": add},
        )
        .mappings()
        .first()
    )


# -- archive: finished jobs leave the hot tables ------------------------------------

#: ``pg_advisory_xact_lock`` keys (two-int form) of the archive: exclusive while
#: jobs move, shared while a submission checks idempotency keys.
_ARCHIVE_LOCK = "hashtext('perpbot.archive'), 0"


def archive_lock(conn: Connection, *, shared: bool) -> None:
    """Until the transaction ends: exclusive for the archiver, shared for submitters."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(text(f"SELECT {fn}({_ARCHIVE_LOCK})"))


def archive_try_lock(conn: Connection) -> bool:
    """The archiver's exclusive lock until the transaction ends, or False at once if a
    submission holds it shared: the archiver never queues in front of submitters."""
    return bool(conn.execute(text(f"SELECT pg_try_advisory_xact_lock({_ARCHIVE_LOCK})")).scalar())


_JOB_ARCHIVE_COPY = text(
    """
    WITH picked AS (
        SELECT j.id FROM hedge_jobs j
        WHERE j.finished_at < :before
          AND NOT EXISTS (SELECT FROM capital_reservations r
                          WHERE r.job_id = j.id AND r.status = 'active')
        ORDER BY j.finished_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ),
    jobs AS (
        INSERT INTO hedge_jobs_archive
        SELECT * FROM hedge_jobs WHERE id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING id
    ),
    legs AS (
        INSERT INTO legs_archive SELECT * FROM legs WHERE job_id = ANY(ARRAY(SELECT id FROM picked))
    ),
    reservations AS (
        INSERT INTO capital_reservations_archive
        SELECT * FROM capital_reservations WHERE job_id = ANY(ARRAY(SELECT id FROM picked))
    )
    SELECT id FROM jobs
    """
)

_JOB_ARCHIVE_DELETE = text(
    """
    WITH legs AS (DELETE FROM legs WHERE job_id = ANY(CAST(:ids AS bigint[]))),
    reservations AS (
        DELETE FROM capital_reservations WHERE job_id = ANY(CAST(:ids AS bigint[]))
    ),
    jobs AS (DELETE FROM hedge_jobs WHERE id = ANY(CAST(:ids AS bigint[])) RETURNING id)
    SELECT count(*) FROM jobs
    """
)


def job_archive_batch(conn: Connection, *, before: datetime, limit: int) -> list[int]:
    """Move up to ``limit`` jobs finished before ``before`` to the archive tables.

    Two statements in the caller's transaction (which holds :func:`archive_lock`):
    the first locks the jobs (``SKIP LOCKED``; a job that still holds an active
    reservation stays) and copies them with their legs and reservations; the
    second deletes those rows (events stay in ``job_events``, which is
    insert-only and off the hot path).  The job rows stay locked in between, and a
    finished job's rows are not written by anyone else.  Returns the moved ids.
    """
    ids = list(conn.execute(_JOB_ARCHIVE_COPY, {"before": before, "limit": limit}).scalars())
    if ids:
        deleted = conn.execute(_JOB_ARCHIVE_DELETE, {"ids": ids}).scalar_one()
        if deleted != len(ids):  # the rows are locked: this would be a bug, so roll back
            raise RuntimeError(f"copied {len(ids)} jobs to the archive but deleted {deleted}")
    return ids
