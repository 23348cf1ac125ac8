"""perpbot cancel through the command line."""

from __future__ import annotations

from tests.builders import Cli


def test_cli_cancel_unknown_job_exits_1_and_names_it(cli: Cli) -> None:
    done = cli("cancel", "999", "--reason", "typo")
    assert done.returncode == 1
    assert "job 999 does not exist" in done.stderr
    missing_reason = cli("cancel", "1")
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
