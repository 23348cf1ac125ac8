from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_submit_sample_file_then_status_counts_pending(cli) -> None:
    done = cli("submit", str(EXAMPLES / "sample_jobs.jsonl"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["inserted"] == 10
    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["jobs"]["pending"] == 10
