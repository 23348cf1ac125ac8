"""The read commands' pure parts: the schema head without Alembic, the URL for the
driver, the one-line reason a job's last decision gives, the fast path's argument
parsing (the same as typer's) and the plain tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from perpbot_db.cli import reads, text
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


# -- the fast path parses as typer does -------------------------------------------------

_TOKENS = [
    "--json", "--json=1", "--status", "--status=pending", "pending", "PENDING", "expired",
    "--limit", "--limit=5", "5", "0", "1", "100000", "100001", "007", "+5", "-5", "x", "1.5",
    "9223372036854775808", "99999999999999999999", "--", "-", "-h", "--help", "--bogus", "",
]  # fmt: skip


@pytest.fixture(scope="module")
def typer_parse() -> Iterator[Callable[[list[str]], tuple[int, Any]]]:
    """Run typer's application on an argument list; the read commands record their call
    instead of reading: ``(exit code, (command, keyword arguments) or None)``."""
    from typer.testing import CliRunner

    from perpbot_db.cli.main import application

    app = application()
    runner = CliRunner()
    calls: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str) -> Callable[..., None]:
        return lambda **kwargs: calls.append((name, kwargs))

    def parse(argv: list[str]) -> tuple[int, Any]:
        calls.clear()
        with mock.patch.multiple(
            reads, status=recorder("status"), jobs=recorder("jobs"), job=recorder("job")
        ):
            result = runner.invoke(app, argv)
        assert len(calls) <= 1
        return result.exit_code, (calls[0] if calls else None)

    yield parse


@pytest.mark.parametrize(
    "argv",
    [
        ["status"], ["status", "--json"], ["jobs"], ["jobs", "--json"],
        ["jobs", "--status", "pending", "--limit", "5"], ["jobs", "--limit=100000", "--json"],
        ["jobs", "--status=expired"], ["job", "1"], ["job", "42", "--json"], ["job", "--json", "7"],
    ],
)  # fmt: skip
def test_the_usual_read_commands_take_the_fast_path_and_typer_reads_them_the_same(
    typer_parse: Callable[[list[str]], tuple[int, Any]], argv: list[str]
) -> None:
    fast = reads.parse(argv)
    assert fast is not None
    command, kwargs = fast
    assert typer_parse(argv) == (0, (command.name, kwargs))


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--help"], ["jobs", "--limit", "0"], ["jobs", "--status", "finished"],
        ["jobs", "--bogus"], ["job"], ["job", "0"], ["job", "x"], ["job", "1", "2"],
        ["status", "--json=1"], ["jobs", "--limit"], ["jobs", "--json", "--json"],
    ],
)  # fmt: skip
def test_help_and_mistakes_are_left_to_typer(argv: list[str]) -> None:
    assert reads.parse(argv) is None


@hypothesis_settings(max_examples=300)
@given(
    command=st.sampled_from(["status", "jobs", "job"]),
    tokens=st.lists(st.sampled_from(_TOKENS), max_size=4),
)
def test_whatever_the_fast_path_takes_typer_takes_the_same_way(
    typer_parse: Callable[[list[str]], tuple[int, Any]], command: str, tokens: list[str]
) -> None:
    argv = [command, *tokens]
    fast = reads.parse(argv)
    if fast is None:
        return  # typer parses it (or names the mistake)
    parsed, kwargs = fast
    assert typer_parse(argv) == (0, (parsed.name, kwargs)), argv


def test_reads_run_by_main_are_the_commands_typer_declares() -> None:
    assert {name: command.run for name, command in reads.COMMANDS.items()} == {
        "status": reads.status,
        "jobs": reads.jobs,
        "job": reads.job,
    }


# -- plain tables ---------------------------------------------------------------------


def test_a_table_aligns_its_columns_and_right_aligns_the_numbers() -> None:
    lines = text.table(("id", "name"), [(7, "okx"), (12, "binance")], title="t", right=(0,))
    assert lines == [
        "t",
        " id | name",
        "----+---------",
        "  7 | okx",
        " 12 | binance",
    ]
    assert text.table(("a",), []) == [" a", "---", "(none)"]


def test_text_from_the_database_cannot_break_a_line_or_drive_the_terminal() -> None:
    assert text.clean("a\nb\tc\x1b[31md\x00") == "a b c?[31md?"
    [_, _, row] = text.table(("reason",), [("two\nlines",)])
    assert row == " two lines"
    assert text.render(["x\ny", [" kept", "lines"]]) == "x y\n kept\nlines"
