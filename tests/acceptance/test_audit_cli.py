"""perpbot audit through the command line: exit codes and what it prints."""

from __future__ import annotations

from sqlalchemy import Engine, text

from tests.builders import Cli, breaches


def test_healthy_database_after_a_tick_passes_every_check(
    engine: Engine, admitted_job: int, cli: Cli
) -> None:
    assert breaches(engine) == set()
    done = cli("audit")
    assert done.returncode == 0 and "invariant checks hold" in done.stdout


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
