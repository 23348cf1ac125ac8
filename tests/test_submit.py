"""Submission into PostgreSQL: what lands, what does not, and idempotency."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.jobspec import client_order_id
from perpbot_db.settings import Settings
from perpbot_db.submit import submit_lines

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def job(i: int = 0, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "strategy": "funding_arb",
        "symbol": "BTC/USDT:USDT",
        "notional_usd": 5000,
        "expected_edge_bps": 12.5,
        "expected_pnl_usd": 6.25,
        "legs": [
            {"exchange": "binance", "side": "buy", "quantity": 0.05},
            {"exchange": "okx", "side": "sell", "quantity": 0.05},
        ],
        "idempotency_key": f"key-{i}",
        "metadata": {"source": "test", "i": i},
    }
    base.update(overrides)
    return base


def lines(*jobs: dict[str, Any]) -> list[str]:
    return [json.dumps(j) + "\n" for j in jobs]


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT count(*) FROM hedge_jobs")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM legs")).scalar_one(),
            conn.execute(text("SELECT count(*) FROM job_events")).scalar_one(),
        )


def test_valid_jobs_land_with_legs_and_one_pending_event_each(
    engine: Engine, settings: Settings
) -> None:
    result = submit_lines(engine, lines(job(1), job(2)), settings, NOW)
    assert (result.inserted, result.existing, result.problems) == (2, 0, [])
    assert counts(engine) == (2, 4, 2)
    with engine.connect() as conn:
        events = conn.execute(
            text("SELECT from_status, to_status, actor, reason FROM job_events ORDER BY id")
        ).all()
        row = conn.execute(
            text(
                "SELECT status, notional_usd, expected_volume_usd, attempts, metadata "
                "FROM hedge_jobs WHERE id = :id"
            ),
            {"id": result.job_ids[0]},
        ).one()
    assert [tuple(e) for e in events] == [(None, "pending", "submit", "submitted")] * 2
    assert row.status == "pending"
    assert str(row.notional_usd) == "5000.00000000"
    assert str(row.expected_volume_usd) == "10000.00000000"  # notional on each of two legs
    assert row.attempts == 0
    assert row.metadata == {"source": "test", "i": 1}


def test_each_leg_gets_deterministic_client_order_id_from_job_leg_and_attempt(
    engine: Engine, settings: Settings
) -> None:
    result = submit_lines(engine, lines(job(1)), settings, NOW)
    job_id = result.job_ids[0]
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT leg_index, attempt, client_order_id, exchange, side, symbol "
                "FROM legs WHERE job_id = :id ORDER BY leg_index"
            ),
            {"id": job_id},
        ).all()
    assert [r.client_order_id for r in rows] == [
        client_order_id("pb", job_id, 0, 1),
        client_order_id("pb", job_id, 1, 1),
    ]
    assert [(r.exchange, r.side, r.symbol) for r in rows] == [
        ("binance", "buy", "BTC/USDT:USDT"),
        ("okx", "sell", "BTC/USDT:USDT"),
    ]


def test_repeated_idempotency_key_returns_existing_job(engine: Engine, settings: Settings) -> None:
    first = submit_lines(engine, lines(job(1)), settings, NOW)
    again = submit_lines(engine, lines(job(1, notional_usd=999)), settings, NOW)
    assert again.inserted == 0 and again.existing == 1
    assert again.job_ids == first.job_ids
    assert counts(engine) == (1, 2, 1)


def test_same_idempotency_key_twice_in_one_input_inserts_once(
    engine: Engine, settings: Settings
) -> None:
    result = submit_lines(engine, lines(job(1), job(2), job(1)), settings, NOW)
    assert (result.inserted, result.existing) == (2, 1)
    assert result.job_ids[0] == result.job_ids[2]
    assert counts(engine) == (2, 4, 2)


def test_jobs_without_idempotency_key_are_all_inserted(engine: Engine, settings: Settings) -> None:
    result = submit_lines(
        engine, lines(job(1, idempotency_key=None), job(1, idempotency_key=None)), settings, NOW
    )
    assert result.inserted == 2
    assert len(set(result.job_ids)) == 2


def test_any_bad_line_writes_nothing_and_reports_every_bad_line(
    engine: Engine, settings: Settings
) -> None:
    bad_qty = job(2)
    bad_qty["legs"][1]["quantity"] = 0
    self_match = job(4)
    self_match["legs"][1]["exchange"] = "binance"
    raw = [*lines(job(1), bad_qty, job(3), self_match), "not json\n", "\n"]
    result = submit_lines(engine, raw, settings, NOW)
    assert not result.written
    assert counts(engine) == (0, 0, 0)
    by_line = {(p.line, p.field) for p in result.problems}
    assert (2, "legs[1].quantity") in by_line
    assert (4, "legs[1]") in by_line
    assert (5, "job") in by_line
    assert {p.line for p in result.problems} == {2, 4, 5}
    assert result.lines == 5  # the blank line is not a job


def test_skip_invalid_inserts_the_valid_lines(engine: Engine, settings: Settings) -> None:
    raw = lines(job(1), job(2, notional_usd=-1), job(3))
    result = submit_lines(engine, raw, settings, NOW, skip_invalid=True)
    assert result.written
    assert (result.inserted, len(result.problems)) == (2, 1)
    assert result.problems[0].line == 2 and result.problems[0].field == "notional_usd"
    assert counts(engine) == (2, 4, 2)


def test_unconfigured_exchange_is_rejected_against_the_database(
    engine: Engine, settings: Settings
) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE exchanges SET enabled = false WHERE name = 'okx'"))
    result = submit_lines(engine, lines(job(1)), settings, NOW)
    assert not result.written
    assert [(p.field, "okx" in p.message) for p in result.problems] == [("legs[1].exchange", True)]


def test_deadline_is_checked_against_the_given_now(engine: Engine, settings: Settings) -> None:
    past = (NOW - timedelta(seconds=1)).isoformat()
    future = (NOW + timedelta(minutes=5)).isoformat()
    rejected = submit_lines(engine, lines(job(1, deadline=past)), settings, NOW)
    accepted = submit_lines(engine, lines(job(2, deadline=future)), settings, NOW)
    assert [p.field for p in rejected.problems] == ["deadline"]
    assert accepted.inserted == 1
    with engine.connect() as conn:
        deadline = conn.execute(text("SELECT deadline FROM hedge_jobs")).scalar_one()
    assert deadline == NOW + timedelta(minutes=5)


@pytest.mark.parametrize(("batch_size", "writers"), [(1, 1), (3, 2), (7, 4), (1000, 2)])
def test_batching_and_parallel_writers_keep_every_job_once_in_input_order(
    engine: Engine, settings: Settings, batch_size: int, writers: int
) -> None:
    tuned = settings.model_copy(update={"submit_batch_size": batch_size, "submit_writers": writers})
    jobs = [job(i) for i in range(25)] + [job(3)]  # one repeat
    progress: list[tuple[str, int]] = []
    result = submit_lines(
        engine, lines(*jobs), tuned, NOW, progress=lambda phase, n: progress.append((phase, n))
    )
    assert (result.inserted, result.existing) == (25, 1)
    assert result.job_ids[26 - 1] == result.job_ids[3]
    assert counts(engine) == (25, 50, 25)
    with engine.connect() as conn:
        keys = dict(
            (k, i) for k, i in conn.execute(text("SELECT idempotency_key, id FROM hedge_jobs"))
        )
    assert [keys[f"key-{i}"] for i in range(25)] == result.job_ids[:25]
    assert sum(n for phase, n in progress if phase == "insert") == 26


def test_decimal_precision_survives_to_numeric_columns(engine: Engine, settings: Settings) -> None:
    precise = job(1, notional_usd="1234.56789012")
    precise["legs"][0]["quantity"] = "0.123456789012"
    precise["legs"][1]["quantity"] = "0.123456789012"
    result = submit_lines(engine, lines(precise), settings, NOW)
    assert result.inserted == 1
    with engine.connect() as conn:
        notional = conn.execute(text("SELECT notional_usd::text FROM hedge_jobs")).scalar_one()
        qty = conn.execute(text("SELECT DISTINCT quantity::text FROM legs")).scalar_one()
    assert notional == "1234.56789012"
    assert qty == "0.123456789012"
