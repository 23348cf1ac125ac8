"""perpbot db archive and the status of archived jobs, through the command line."""

from __future__ import annotations

import json

from sqlalchemy import Engine

from perpbot_db.settings import Settings
from tests.builders import Cli, run_to_completion


def test_archived_jobs_still_count_in_status_and_listing(
    engine: Engine, fast: Settings, cli: Cli
) -> None:
    ids = run_to_completion(engine, fast, 3)
    result = cli("db", "archive", "--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"jobs": 3, "batches": 1}
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"]["completed"] == 3
    listed = [json.loads(line) for line in cli("jobs", "--json").stdout.splitlines()]
    assert [row["id"] for row in listed] == sorted(ids, reverse=True)
    assert all(row["legs"] for row in listed)


def test_archive_cli_refuses_a_negative_age(cli: Cli) -> None:
    result = cli("db", "archive", "--older-than", "-1")
    assert result.returncode != 0
    assert "--older-than" in result.stderr
