"""``perpbot job ID``'s view: the job, its legs, reservations and events, and why it waits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import Connection
from sqlalchemy import Engine, text

from perpbot_db.services import archive, overview, tick
from perpbot_db.settings import Settings
from tests.builders import config, job, put_market, submit


@pytest.fixture
def read(engine: Engine) -> Iterator[Connection[Any]]:
    """The bare driver connection the read commands use."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, Connection)
        conn.autocommit = True
        yield conn
    finally:
        raw.close()


def test_pending_job_says_which_hold_keeps_it_waiting_and_until_when(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    [job_id] = submit(
        engine, settings, [job(1, symbol="SOL/USDT:USDT", deadline=deadline.isoformat())]
    )
    assert tick.run_tick(engine, config()).held == {"market_data_missing": 1}

    view = overview.job_view(read, job_id)
    assert view is not None
    assert view.job.status == "pending" and view.job.decision_code == "market_data_missing"
    assert view.why.code == "market_data_missing"
    assert view.why.context == view.job.decision_context
    assert view.why.context is not None and view.why.context["symbol"] == "SOL/USDT:USDT"
    assert view.why.deadline == deadline.isoformat()
    assert view.why.text.startswith("pending: held by market_data_missing (")
    assert "symbol=SOL/USDT:USDT" in view.why.text
    assert view.why.text.endswith(f"; deadline {deadline.isoformat()}")
    assert [(leg.exchange, leg.side, str(leg.quantity)) for leg in view.legs] == [
        ("binance", "buy", "0.010000000000"),
        ("okx", "sell", "0.010000000000"),
    ]
    assert all(leg.client_order_id.startswith(settings.client_order_prefix) for leg in view.legs)
    assert view.reservations == []
    assert [(e.from_status, e.to_status) for e in view.events] == [(None, "pending")]


def test_pending_job_no_tick_has_judged_says_so(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    view = overview.job_view(read, job_id)
    assert view is not None and view.why.code is None
    assert view.why.text.startswith("pending: no tick has judged it yet; deadline ")


def test_pending_job_that_passed_every_check_waits_for_room(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    ids = submit(engine, settings, [job(i) for i in range(2)])
    [admitted] = tick.run_tick(engine, config(max_concurrent_jobs=1)).admitted
    [waiting] = [i for i in ids if i != admitted]
    view = overview.job_view(read, waiting)
    assert view is not None and view.job.status == "pending"
    assert view.job.decision_code == "admitted"
    assert view.why.text.startswith("pending: passed every check when last scored (")
    assert "waiting for room" in view.why.text


def test_admitted_job_shows_its_active_reservations_and_its_admission_event(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    assert tick.run_tick(engine, config()).admitted == [job_id]
    view = overview.job_view(read, job_id)
    assert view is not None
    assert view.why.text == "admitted: waiting for a worker to claim it" + (
        f" (runs after {view.job.run_after.isoformat()})"
    )
    assert sorted((r.exchange, r.status) for r in view.reservations) == [
        ("binance", "active"),
        ("okx", "active"),
    ]
    assert all(r.amount_usd > 0 and r.released_at is None for r in view.reservations)
    assert [(e.from_status, e.to_status) for e in view.events] == [
        (None, "pending"),
        ("pending", "admitted"),
    ]
    data = view.as_dict()
    assert data["job"]["id"] == job_id and data["why"]["code"] == "admitted"
    assert len(data["legs"]) == 2 and len(data["reservations"]) == 2 and len(data["events"]) == 2


def test_expired_job_names_the_hold_it_had_when_its_deadline_passed(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    deadline = datetime.now(UTC) + timedelta(minutes=1)
    [job_id] = submit(
        engine, settings, [job(1, symbol="SOL/USDT:USDT", deadline=deadline.isoformat())]
    )
    tick.run_tick(engine, config())  # held: no SOL market data
    held = overview.job_view(read, job_id)
    assert held is not None and held.why.code == "market_data_missing"
    tick.run_tick(engine, config(), now=deadline + timedelta(seconds=1))

    view = overview.job_view(read, job_id)
    assert view is not None
    assert view.job.status == "expired" and view.job.decision_code == "deadline_passed"
    assert view.why.code == "market_data_missing"
    assert view.why.context is not None and view.why.context["symbol"] == "SOL/USDT:USDT"
    assert view.why.text.startswith(f"expired at its deadline {deadline.isoformat()}")
    assert "last held by market_data_missing (" in view.why.text
    assert [e.to_status for e in view.events] == ["pending", "expired"]


def test_archived_job_reads_like_a_live_one_and_an_unknown_id_is_none(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = 'rejected', finished_at = now() - interval '1 day'"
                " WHERE id = :j"
            ),
            {"j": job_id},
        )
    assert archive.archive_finished(engine, after_s=60, batch=100).jobs == 1
    view = overview.job_view(read, job_id)
    assert view is not None and view.job.archived and view.job.status == "rejected"
    assert len(view.legs) == 2
    assert overview.job_view(read, job_id + 1000) is None
