"""The migrated schema: agreement with the models, reversibility, and rules kept by the database."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from perpbot_db.runtime import migrate
from perpbot_db.runtime.db import engine_for
from perpbot_db.store.schema import ARCHIVED_TABLES, Base

CONTRACT_COLUMNS = {
    "exchanges": {"name", "equity_usd", "safe_mode"},
    "hedge_jobs": {
        "id", "strategy", "symbol", "notional_usd", "final_score", "status", "attempts",
        "created_at", "finished_at",
    },
    "legs": {
        "id", "job_id", "exchange", "symbol", "side", "quantity", "client_order_id", "status",
        "filled_quantity", "avg_price", "fee_usd",
    },
    "capital_reservations": {"id", "job_id", "exchange", "tier", "amount_usd", "status"},
    "daily_counters": {
        "day", "scope", "volume_usd", "fees_usd", "realized_pnl_usd", "loss_used_usd",
        "jobs_completed", "jobs_failed",
    },
    "job_events": {"id", "job_id", "at", "from_status", "to_status", "actor", "reason", "details"},
    "system_state": {"status", "risk_mode", "daily_loss_limit_usd", "halt_reason"},
    "market_snapshots": {
        "exchange", "symbol", "bid", "ask", "last", "funding_rate", "volatility", "latency_ms",
        "observed_at",
    },
}  # fmt: skip


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_migrated_schema_matches_models_exactly(engine: Engine) -> None:
    assert _diff(engine) == []


def test_check_constraints_in_models_exist_in_database(engine: Engine) -> None:
    with engine.connect() as conn:
        in_db = set(
            conn.execute(text("SELECT conname FROM pg_constraint WHERE contype = 'c'")).scalars()
        )
    in_models = {
        str(c.name)
        for table in Base.metadata.tables.values()
        for c in table.constraints
        if c.__class__.__name__ == "CheckConstraint"
    }
    assert in_models, "models declare CHECK constraints"
    assert in_models <= in_db


def test_contract_tables_and_columns_exist(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, columns in CONTRACT_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        assert columns <= present, f"{table} lacks {columns - present}"


def test_money_columns_are_numeric_never_float(engine: Engine) -> None:
    with engine.connect() as conn:
        floats = conn.execute(
            text(
                "SELECT table_name || '.' || column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() "
                "AND data_type IN ('real', 'double precision')"
            )
        ).scalars()
        assert list(floats) == []
        usd_types = set(
            conn.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND column_name LIKE '%\\_usd'"
                )
            ).scalars()
        )
    assert usd_types == {"numeric"}


def test_upgrade_downgrade_upgrade_round_trips(empty_db_url) -> None:  # type: ignore[no-untyped-def]
    engine = engine_for(empty_db_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert _diff(engine) == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM system_state")).scalar() == 1
    finally:
        engine.dispose()


def _job(conn, **overrides: object) -> int:  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "strategy": "arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": 100,
        "expected_volume_usd": 200,
        "status": "pending",
        "deadline": "2099-01-01T00:00:00Z",
    }
    values.update(overrides)
    cols = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    return int(
        conn.execute(
            text(f"INSERT INTO hedge_jobs ({cols}) VALUES ({params}) RETURNING id"), values
        ).scalar_one()
    )


def _leg(conn, job_id: int, coid: str, **overrides: object) -> None:  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "job_id": job_id,
        "leg_index": 0,
        "exchange": "binance",
        "symbol": "BTC/USDT:USDT",
        "side": "buy",
        "quantity": 1,
        "client_order_id": coid,
    }
    values.update(overrides)
    cols = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    conn.execute(text(f"INSERT INTO legs ({cols}) VALUES ({params})"), values)


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"status": "done"}, "ck_hedge_jobs_status"),
        ({"strategy": "yolo"}, "ck_hedge_jobs_strategy"),
        ({"notional_usd": 0}, "ck_hedge_jobs_notional_pos"),
        ({"notional_usd": -5}, "ck_hedge_jobs_notional_pos"),
        ({"risk_score": 101}, "ck_hedge_jobs_scores_0_100"),
        ({"final_score": -1}, "ck_hedge_jobs_scores_0_100"),
        ({"status": "completed"}, "ck_hedge_jobs_finished_at"),
        ({"status": "running"}, "ck_hedge_jobs_running_has_lease"),
        ({"symbol": "BTCUSDT"}, "ck_hedge_jobs_symbol"),
        ({"attempts": 4, "max_attempts": 3}, "ck_hedge_jobs_attempts"),
        ({"deadline": None}, "ck_hedge_jobs_pending_has_deadline"),
    ],
)
def test_database_refuses_job_breaking_a_rule(
    engine: Engine, overrides: dict[str, object], constraint: str
) -> None:
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        _job(conn, **overrides)


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"side": "long"}, "ck_legs_side"),
        ({"quantity": 0}, "ck_legs_quantity_pos"),
        ({"filled_quantity": 2}, "ck_legs_filled_within_quantity"),
        ({"client_order_id": "has space"}, "ck_legs_client_order_id_format"),
        ({"client_order_id": "x" * 33}, "ck_legs_client_order_id_format"),
        ({"status": "lost"}, "ck_legs_status"),
    ],
)
def test_database_refuses_leg_breaking_a_rule(
    engine: Engine, overrides: dict[str, object], constraint: str
) -> None:
    with engine.begin() as conn:
        job_id = _job(conn)
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        _leg(conn, job_id, overrides.pop("client_order_id", "pb1L0A1"), **overrides)  # type: ignore[arg-type]


def test_client_order_id_is_unique_across_jobs(engine: Engine) -> None:
    with engine.begin() as conn:
        first, second = _job(conn), _job(conn)
        _leg(conn, first, "pb77L0A1")
    with pytest.raises(IntegrityError, match="uq_legs_client_order_id"), engine.begin() as conn:
        _leg(conn, second, "pb77L0A1", leg_index=1)


def test_idempotency_key_is_unique(engine: Engine) -> None:
    with engine.begin() as conn:
        _job(conn, idempotency_key="k-1")
    with (
        pytest.raises(IntegrityError, match="uq_hedge_jobs_idempotency_key"),
        engine.begin() as conn,
    ):
        _job(conn, idempotency_key="k-1")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE job_events SET reason = 'rewritten'",
        "DELETE FROM job_events",
        "TRUNCATE job_events",
    ],
)
def test_job_events_refuse_update_delete_truncate(engine: Engine, statement: str) -> None:
    with engine.begin() as conn:
        job_id = _job(conn)
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, from_status, to_status, actor, reason) "
                "VALUES (:j, NULL, 'pending', 'test', 'submitted')"
            ),
            {"j": job_id},
        )
    with pytest.raises(DBAPIError, match="job_events is append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT reason FROM job_events")).scalars().all() == ["submitted"]


def test_system_state_holds_exactly_one_row(engine: Engine) -> None:
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO system_state (id) VALUES (false)"))
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, risk_mode FROM system_state")).one()
    assert tuple(row) == ("running", "balanced")


def test_halted_system_needs_a_reason(engine: Engine) -> None:
    with pytest.raises(IntegrityError, match="ck_system_state_halt_reason"), engine.begin() as conn:
        conn.execute(text("UPDATE system_state SET status = 'halted'"))


def test_one_active_reservation_per_job_and_exchange(engine: Engine) -> None:
    insert = text(
        "INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd) "
        "VALUES (:j, 'binance', 'volume', 10)"
    )
    with engine.begin() as conn:
        job_id = _job(conn)
        conn.execute(insert, {"j": job_id})
    duplicate = "uq_capital_reservations_active_job_exchange"
    with pytest.raises(IntegrityError, match=duplicate), engine.begin() as conn:
        conn.execute(insert, {"j": job_id})


def test_hot_path_partial_indexes_exist(engine: Engine) -> None:
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'hedge_jobs'")
        )
        rows = {name: definition for name, definition in result}
    assert "WHERE (status = 'pending'::text)" in rows["ix_hedge_jobs_pending_score"]
    assert "WHERE (status = 'admitted'::text)" in rows["ix_hedge_jobs_admitted"]
    assert "WHERE (status = 'running'::text)" in rows["ix_hedge_jobs_running_lease"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE control_events SET reason = 'rewritten'",
        "DELETE FROM control_events",
        "TRUNCATE control_events",
    ],
)
def test_control_events_refuse_update_delete_truncate(engine: Engine, statement: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO control_events (actor, action, reason) VALUES ('ops', 'pause', 'x')")
        )
    with pytest.raises(DBAPIError, match="control_events is append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        reasons = conn.execute(text("SELECT reason FROM control_events WHERE actor = 'ops'"))
        assert reasons.scalars().all() == ["x"]  # (the template's exchanges: audited sync)


@pytest.mark.parametrize("table", ARCHIVED_TABLES)
def test_archive_has_the_live_tables_columns_in_order(engine: Engine, table: str) -> None:
    """The archive copies rows with ``SELECT *`` and the ``_all`` views union them: a column
    added to a live table must be added to its archive (and the view recreated) too."""

    def columns(name: str) -> list[tuple[str, str, str]]:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = :t "
                    "ORDER BY ordinal_position"
                ),
                {"t": name},
            )
            return [(a, b, c) for a, b, c in rows]

    live = columns(table)
    assert live and columns(f"{table}_archive") == live
    assert [(a, b) for a, b, _ in columns(f"{table}_all")] == [(a, b) for a, b, _ in live]


def test_every_foreign_key_has_an_index_leading_with_its_column(engine: Engine) -> None:
    """A delete of a parent row checks (or cascades to) its children by the foreign key:
    without an index each deleted row scans the child table (the archive deletes many)."""
    with engine.connect() as conn:
        missing = conn.execute(
            text(
                """
                SELECT c.conrelid::regclass::text || '.' || a.attname
                FROM pg_constraint c
                JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                WHERE c.contype = 'f' AND cardinality(c.conkey) = 1
                  AND c.confrelid::regclass::text = ANY(:tables)
                  AND NOT EXISTS (
                      SELECT FROM pg_index i
                      WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])
                """
            ),
            {"tables": list(ARCHIVED_TABLES)},
        ).scalars()
        assert list(missing) == []
