"""The read commands' pure parts: the schema head without Alembic, the URL for the
driver, and the one-line reason a job's last decision gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from perpbot_db.domain.decisions import short_reason
from perpbot_db.runtime import migrate, revisions
from perpbot_db.runtime.reader import ReadError, conninfo_from_url


def test_head_read_from_the_files_is_alembics_head() -> None:
    assert revisions.head_revision() == migrate.head_revision()


def _revision(path: Path, revision: str, down: str | None) -> None:
    down_text = "None" if down is None else f'"{down}"'
    path.write_text(f'revision: str = "{revision}"\ndown_revision: str | None = {down_text}\n')


def test_head_is_the_revision_nothing_revises_and_a_fork_is_refused(tmp_path: Path) -> None:
    _revision(tmp_path / "0001_a.py", "0001", None)
    _revision(tmp_path / "0002_b.py", "0002", "0001")
    _revision(tmp_path / "0003_c.py", "0003", "0002")
    assert revisions.head_revision(tmp_path) == "0003"
    _revision(tmp_path / "0004_d.py", "0004", "0002")
    with pytest.raises(ValueError, match="2 heads"):
        revisions.head_revision(tmp_path)


def test_behind_message_names_both_revisions_and_the_command() -> None:
    assert revisions.behind_message("0007", "0007") is None
    assert revisions.behind_message(None, "0007") == (
        "database schema is at revision none, this perpbot needs 0007: run `perpbot db upgrade`"
    )


@pytest.mark.parametrize(
    ("url", "conninfo"),
    [
        ("postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=require", "postgresql://u:p%40ss@h:5433/db?sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgres://u@h/db", "postgresql://u@h/db"),
    ],
)  # fmt: skip
def test_sqlalchemy_url_becomes_a_libpq_uri(url: str, conninfo: str) -> None:
    assert conninfo_from_url(url) == conninfo


def test_a_url_that_is_not_postgresql_is_refused_naming_the_setting() -> None:
    with pytest.raises(ReadError, match="setting database_url"):
        conninfo_from_url("mysql://u@h/db")


def test_short_reason_lists_the_context_and_puts_an_expired_jobs_hold_first() -> None:
    assert short_reason(None) == ""
    assert short_reason({"limit": 3, "running": 3}) == "limit=3 running=3"
    expired = {
        "deadline": "2026-12-02T06:00:00+00:00",
        "held_code": "market_data_missing",
        "held_context": {"symbol": "SOL/USDT:USDT"},
    }
    assert short_reason(expired, limit=200) == (
        "held market_data_missing (symbol=SOL/USDT:USDT), deadline=2026-12-02T06:00:00+00:00"
    )


def test_short_reason_is_cut_to_its_limit() -> None:
    text = short_reason({"detail": "x" * 200}, limit=40)
    assert len(text) == 40 and text.endswith("...")
