"""`perpbot audit`: every check holds on a healthy database and catches its breach."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from perpbot_db import audit, scheduler
from perpbot_db.settings import Settings
from tests.conftest import Cli
from tests.test_scheduler import config, job, put_market, submit


def breaches(engine: Engine, limit: int = 50) -> set[tuple[int, str]]:
    with engine.connect() as conn:
        return {(b.invariant, b.name) for b in audit.run_audit(conn, max_concurrent_jobs=limit)}


@pytest.fixture
def admitted_job(engine: Engine, settings: Settings) -> int:
    put_market(engine)
    ids = submit(engine, settings, [job(1), job(2)])
    report = scheduler.run_tick(engine, config())
    assert report.admitted == ids
    return ids[0]


def test_healthy_database_after_a_tick_passes_every_check(
    engine: Engine, admitted_job: int, cli: Cli
) -> None:
    assert breaches(engine) == set()
    done = cli("audit")
    assert done.returncode == 0 and "invariant checks hold" in done.stdout


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "UPDATE exchanges SET equity_usd = 1000 WHERE name = 'okx'",  # a crash in equity
            {(1, "exchange in-flight cap"), (1, "single-job cap"), (1, "tier budget")},
        ),
        (
            "UPDATE capital_reservations SET status = 'released', released_at = now(), "
            "release_reason = 'bug' WHERE job_id = :j",
            {(2, "capital held iff admitted or running")},
        ),
        (
            "UPDATE hedge_jobs SET status = 'pending' WHERE id = :j",  # no event, capital kept
            {(2, "capital held iff admitted or running"), (3, "events form a lifecycle path")},
        ),
        (
            "UPDATE hedge_jobs SET status = 'running', worker_id = 'w', "
            "lease_expires_at = now() WHERE status = 'admitted'",
            {(3, "events form a lifecycle path"), (6, "running jobs in total")},
        ),
        (
            "UPDATE legs SET filled_quantity = quantity, status = 'filled' "
            "WHERE job_id = :j AND leg_index = 0; "
            "UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE id = :j",
            {
                (2, "capital held iff admitted or running"),
                (3, "events form a lifecycle path"),
                (8, "finished job flat or flagged unhedged"),
            },
        ),
    ],
)
def test_each_breach_is_reported_by_its_invariant(
    engine: Engine, admitted_job: int, sql: str, expected: set[tuple[int, str]]
) -> None:
    with engine.begin() as conn:
        for statement in sql.split("; "):
            conn.execute(text(statement), {"j": admitted_job})
    assert breaches(engine, limit=1) == expected


def test_cli_audit_exits_1_and_prints_the_breach(
    engine: Engine, admitted_job: int, cli: Cli
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE hedge_jobs SET status = 'pending' WHERE id = :j"), {"j": admitted_job}
        )
    done = cli("audit")
    assert done.returncode == 1
    assert f"job_id={admitted_job}" in done.stdout
    assert "invariant 3" in done.stdout
