"""The archive: finished jobs leave the hot tables with their legs and reservations,
stay visible through the ``_all`` views and audits, and never lose history; their
events stay in ``job_events``, which never gives a row up."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from perpbot_db.services import archive, audit, cancel, tick
from perpbot_db.settings import Settings
from perpbot_db.store.schema import ARCHIVED_TABLES
from tests.builders import admitted, config, job, put_market, run_to_completion, submit, work

TABLES = ARCHIVED_TABLES


def counts(engine: Engine) -> dict[str, tuple[int, int]]:
    """Per table: (live rows, archived rows)."""
    with engine.connect() as conn:
        return {
            t: (
                conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one(),
                conn.execute(text(f"SELECT count(*) FROM {t}_archive")).scalar_one(),
            )
            for t in TABLES
        }


def snapshot(engine: Engine) -> dict[str, list[Any]]:
    """Every row of every table, live and archived together, in a stable order."""
    with engine.connect() as conn:
        return {
            t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}_all ORDER BY id"))]
            for t in TABLES
        }


def event_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM job_events ORDER BY id"))]


def breaches(engine: Engine) -> list[audit.Breach]:
    with engine.connect() as conn:
        return audit.run_audit(conn, max_concurrent_jobs=1000)


def test_finished_jobs_move_with_their_rows_and_views_keep_every_row(
    engine: Engine, fast: Settings
) -> None:
    run_to_completion(engine, fast, 3)
    before = snapshot(engine)
    events = event_rows(engine)
    assert len(before["legs"]) == 6 and len(events) >= 12

    report = archive.archive_finished(engine, after_s=0, batch=2)

    assert report == archive.ArchiveReport(jobs=3, batches=2)  # 2 + 1: the short batch stops
    assert counts(engine) == {t: (0, len(rows)) for t, rows in before.items()}
    assert snapshot(engine) == before  # same rows, same values, through the views
    assert event_rows(engine) == events  # events stay where they are
    assert breaches(engine) == []


def test_recently_finished_and_unfinished_jobs_stay(engine: Engine, fast: Settings) -> None:
    done = run_to_completion(engine, fast, 2)
    put_market(engine)
    waiting = submit(engine, fast, [job(100 + i) for i in range(2)])  # pending
    report = archive.archive_finished(engine, after_s=3600, batch=100)
    assert report.jobs == 0
    with engine.begin() as conn:  # finished long ago, as far as the archive can tell
        conn.execute(text("UPDATE hedge_jobs SET finished_at = finished_at - interval '2 hours'"))
    assert archive.archive_finished(engine, after_s=3600, batch=100).jobs == 2
    with engine.connect() as conn:
        live = set(conn.execute(text("SELECT id FROM hedge_jobs")).scalars())
        archived = set(conn.execute(text("SELECT id FROM hedge_jobs_archive")).scalars())
    assert live == set(waiting) and archived == set(done)


def test_job_still_holding_capital_is_not_archived(engine: Engine, fast: Settings) -> None:
    [job_id] = admitted(engine, fast, 1)
    with engine.begin() as conn:  # a bug elsewhere: finished, capital still held
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = 'cancelled', finished_at = now() - interval '1h' "
                "WHERE id = :j"
            ),
            {"j": job_id},
        )
    assert archive.archive_finished(engine, after_s=0, batch=10).jobs == 0
    assert counts(engine)["hedge_jobs"] == (1, 0)  # the evidence stays where the audit sees it
    found = {(b.invariant, b.name) for b in breaches(engine)}
    assert (2, "capital held iff admitted or running") in found


def test_events_of_archived_jobs_stay_and_still_refuse_delete(
    engine: Engine, fast: Settings
) -> None:
    [job_id] = run_to_completion(engine, fast, 1)
    archive.archive_finished(engine, after_s=0, batch=10)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('job_events_archive')")).scalar() is None
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM job_events WHERE job_id = :j"), {"j": job_id})
    assert [e[3:5] for e in event_rows(engine)] == [
        (None, "pending"),
        ("pending", "admitted"),
        ("admitted", "running"),
        ("running", "completed"),
    ]


def test_resubmitted_idempotency_key_finds_the_archived_job(engine: Engine, fast: Settings) -> None:
    [job_id] = run_to_completion(engine, fast, 1)  # idempotency key "t-0"
    archive.archive_finished(engine, after_s=0, batch=10)
    put_market(engine)
    assert submit(engine, fast, [job(0)]) == [job_id]  # the same job, not a second one
    assert counts(engine)["hedge_jobs"] == (0, 1)


def test_cancel_of_archived_job_says_it_finished(engine: Engine, fast: Settings) -> None:
    [job_id] = run_to_completion(engine, fast, 1)
    archive.archive_finished(engine, after_s=0, batch=10)
    with pytest.raises(cancel.CancelError, match=f"job {job_id} is already completed .archived"):
        cancel.cancel(engine, job_id, actor="ops", reason="test")
    with pytest.raises(cancel.CancelError, match="does not exist"):
        cancel.cancel(engine, job_id + 1000, actor="ops", reason="test")


def test_audit_catches_an_unfinished_job_in_the_archive(engine: Engine, fast: Settings) -> None:
    put_market(engine)
    [job_id] = submit(engine, fast, [job(0)])
    with engine.begin() as conn:  # copy a pending job by hand: the archiver never would
        conn.execute(text("INSERT INTO hedge_jobs_archive SELECT * FROM hedge_jobs"))
    found = [b for b in breaches(engine) if b.name == "archive holds finished jobs only, once"]
    assert [b.detail["job_id"] for b in found] == [str(job_id)]


def test_scheduler_maintenance_archives_while_jobs_flow(engine: Engine, fast: Settings) -> None:
    """Archive between ticks and finishes: later jobs still admit, run and audit clean."""
    for round_ in range(3):
        put_market(engine)
        ids = submit(engine, fast, [job(10 * round_ + i) for i in range(3)])
        assert sorted(tick.run_tick(engine, config()).admitted) == sorted(ids)
        work(engine, fast)
        archive.archive_finished(engine, after_s=0, batch=2)
    assert counts(engine)["hedge_jobs"] == (0, 9)
    assert breaches(engine) == []


def test_archive_statements_use_indexes_not_scans(engine: Engine, fast: Settings) -> None:
    """Over a few thousand rows the copy picks jobs by the finished_at index and the delete
    finds every child row by job id: no sequential scan grows with the hot tables."""
    from datetime import UTC, datetime

    from perpbot_db.store import archive as archive_store

    submit(engine, fast, [job(i, idempotency_key=None) for i in range(3000)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE id % 10 <> 0"
            )
        )
        conn.execute(
            text(
                "INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd, status, "
                "released_at, release_reason) "
                "SELECT id, 'binance', 'arbitrage', 100, 'released', now(), 'completed' "
                "FROM hedge_jobs"
            )
        )
        for table in TABLES:
            conn.execute(text(f"ANALYZE {table}"))
        plans = {}
        for name, sql, params in (
            ("copy", archive_store.COPY_FINISHED, {"before": datetime.now(UTC), "limit": 50}),
            ("delete", archive_store.DELETE_COPIED, {"ids": [1, 2, 3]}),
        ):
            rows = conn.execute(text("EXPLAIN " + sql.text), params).scalars()
            plans[name] = "\n".join(rows)
        conn.rollback()
    assert "ix_hedge_jobs_finished_at" in plans["copy"], plans["copy"]
    assert "Seq Scan on hedge_jobs" not in plans["copy"], plans["copy"]
    assert "Seq Scan" not in plans["delete"], plans["delete"]
    assert "ix_capital_reservations_job_id" in plans["delete"], plans["delete"]
