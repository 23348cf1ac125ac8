"""Submission into PostgreSQL: what lands, what does not, and idempotency."""

from __future__ import annotations

import io
import json
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import pytest
from sqlalchemy import Engine, text

from perpbot_db.domain.execution import client_order_id
from perpbot_db.services import archive
from perpbot_db.services.submit import SubmitError, submit_lines
from perpbot_db.settings import Settings
from tests.builders import HANG_S, wait_for

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


@pytest.mark.parametrize("batch_size", [1, 3, 7, 1000])
def test_batches_of_one_transaction_keep_every_job_once_in_input_order(
    engine: Engine, settings: Settings, batch_size: int
) -> None:
    tuned = settings.model_copy(update={"submit_batch_size": batch_size})
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


# -- all or nothing, whatever the input holds -----------------------------------------


def test_batching_is_one_transaction_a_bad_line_after_full_batches_writes_nothing(
    engine: Engine, settings: Settings
) -> None:
    tuned = settings.model_copy(update={"submit_batch_size": 2})
    raw = lines(*[job(i) for i in range(7)], job(7, notional_usd=-1), job(8))
    result = submit_lines(engine, raw, tuned, NOW)
    assert not result.written
    assert [(p.line, p.field) for p in result.problems] == [(8, "notional_usd")]
    assert (result.lines, result.valid) == (9, 8)
    assert counts(engine) == (0, 0, 0)


@pytest.mark.parametrize("position", ["first", "last"])
def test_nul_in_metadata_among_2500_good_jobs_is_refused_naming_line_and_path_nothing_written(
    engine: Engine, settings: Settings, position: str
) -> None:
    """The issue's case: PostgreSQL cannot store \\u0000; it used to fail mid-write."""
    bad = job(9999, metadata={"notes": ["ok", "nul\u0000here"]})
    good = [job(i) for i in range(2500)]
    raw = lines(bad, *good) if position == "first" else lines(*good, bad)
    result = submit_lines(engine, raw, settings, NOW)
    line = 1 if position == "first" else 2501
    assert not result.written
    assert [(p.line, p.field) for p in result.problems] == [(line, "metadata.notes[1]")]
    assert "NUL" in result.problems[0].message
    assert counts(engine) == (0, 0, 0)


def test_deeply_nested_json_is_a_problem_on_its_line_not_a_crash(
    engine: Engine, settings: Settings
) -> None:
    deep = '{"metadata": ' + "[" * 10_000 + "]" * 10_000 + "}\n"
    result = submit_lines(engine, [*lines(job(1)), deep], settings, NOW)
    assert not result.written
    assert [(p.line, p.field) for p in result.problems] == [(2, "job")]
    assert "nested deeper than" in result.problems[0].message


def test_metadata_with_decimal_numbers_lands_as_jsonb_numbers(
    engine: Engine, settings: Settings
) -> None:
    raw = json.dumps(job(1, metadata={"px": "P", "big": "B"}))
    raw = raw.replace('"P"', "97000.125").replace('"B"', "1e3") + "\n"
    result = submit_lines(engine, [raw], settings, NOW)
    assert result.inserted == 1, result.problems
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT metadata::text FROM hedge_jobs")).scalar_one()
    assert stored == '{"px": 97000.125, "big": 1000}'


def test_text_with_quotes_backslashes_braces_and_the_word_null_lands_exactly(
    engine: Engine, settings: Settings
) -> None:
    tricky = ["NULL", 'a"b', "c\\d", "{e,f}", " g ", 'h\\"', "é ✓"]
    raw = [job(i, idempotency_key=key, metadata={"s": key + "\t"}) for i, key in enumerate(tricky)]
    result = submit_lines(engine, lines(*raw, job(99, idempotency_key=None)), settings, NOW)
    assert result.inserted == len(tricky) + 1, result.problems
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT idempotency_key, metadata FROM hedge_jobs ORDER BY id")
        ).all()
    assert [(r.idempotency_key, r.metadata) for r in rows] == [
        *((key, {"s": key + "\t"}) for key in tricky),
        (None, {"source": "test", "i": 99}),
    ]


def add_failing_trigger(engine: Engine, notional: int) -> None:
    """The database refuses a job with this notional: an error validation cannot foresee."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"""
                CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.notional_usd = {notional} THEN
                        RAISE EXCEPTION 'test trigger refuses notional {notional}';
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER test_refuse BEFORE INSERT ON hedge_jobs
                FOR EACH ROW EXECUTE FUNCTION test_refuse();
                """
            )
        )


def test_database_error_mid_way_rolls_back_every_batch_and_raises_one_clear_error(
    engine: Engine, settings: Settings
) -> None:
    add_failing_trigger(engine, 4242)
    raw = lines(*[job(i) for i in range(2500)], job(2500, notional_usd=4242), job(2501))
    with pytest.raises(SubmitError) as caught:
        submit_lines(engine, raw, settings, NOW)
    message = str(caught.value)
    assert "test trigger refuses notional 4242" in message
    assert "\n" not in message and "INSERT" not in message  # one line, no SQL
    assert counts(engine) == (0, 0, 0)


# -- bounded report and memory --------------------------------------------------------


def test_report_keeps_the_first_100_problems_and_counts_the_rest(
    engine: Engine, settings: Settings
) -> None:
    bad = [json.dumps(job(i, notional_usd=-1)) + "\n" for i in range(250)]
    result = submit_lines(engine, [*bad, "not json\n"], settings, NOW)
    assert not result.written
    assert len(result.problems) == 100
    assert [p.line for p in result.problems] == list(range(1, 101))
    assert (result.report.total, result.report.bad_lines, result.report.omitted) == (251, 251, 151)
    summary = result.summary()
    assert (summary["invalid"], summary["problems_total"], len(summary["problems"])) == (
        251,
        251,
        100,
    )


class RepeatedBytes(io.RawIOBase):
    """A stream of ``size`` bytes made of ``chunk`` repeated, never held whole."""

    def __init__(self, chunk: bytes, size: int) -> None:
        self.chunk, self.left, self.offset = chunk, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        start = self.offset
        data = (self.chunk * ((start + n) // len(self.chunk) + 1))[start : start + n]
        buffer[:n] = data
        self.left -= n
        self.offset = (start + n) % len(self.chunk)
        return n


def test_line_longer_than_the_limit_is_one_problem_and_never_held_whole(
    engine: Engine, settings: Settings
) -> None:
    huge = io.BufferedReader(RepeatedBytes(b"x" * 4096, 50_000_000))
    first, last = (io.BytesIO(line.encode()) for line in lines(job(1), job(2)))
    source = io.BufferedReader(ChainedStream(first, huge, io.BytesIO(b"\n"), last))
    tracemalloc.start()
    try:
        result = submit_lines(engine, source, settings, NOW, skip_invalid=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(p.line, p.field) for p in result.problems] == [(2, "job")]
    assert "longer than the limit" in result.problems[0].message
    assert result.inserted == 2
    assert peak < 10_000_000, f"{peak:,} bytes traced for a 50 MB line"


class ChainedStream(io.RawIOBase):
    """Several binary streams read one after the other."""

    def __init__(self, *parts: IO[bytes]) -> None:
        self.parts = list(parts)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.parts:
            data = self.parts[0].read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self.parts.pop(0)
        return 0


def test_many_bad_lines_keep_memory_flat(engine: Engine, settings: Settings) -> None:
    bad = (json.dumps(job(0, notional_usd=-1)) + "\n").encode()

    def peak_for(count: int) -> int:
        source = io.BufferedReader(RepeatedBytes(bad, len(bad) * count))
        tracemalloc.start()
        try:
            result = submit_lines(engine, source, settings, NOW)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (result.report.total, len(result.problems)) == (count, 100)
        return peak

    small, large = peak_for(2_000), peak_for(8_000)
    assert large < small * 1.5 + 500_000, (small, large)


# -- deadlines --------------------------------------------------------------------


def test_job_without_deadline_gets_max_pending_s_after_insert_on_the_database_clock(
    engine: Engine, settings: Settings
) -> None:
    tuned = settings.model_copy(update={"max_pending_s": 120.0})
    given = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    result = submit_lines(
        engine, lines(job(1), job(2, deadline=given.isoformat())), tuned, datetime.now(UTC)
    )
    assert result.inserted == 2
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT idempotency_key, deadline, created_at, now() AS db_now "
                "FROM hedge_jobs ORDER BY id"
            )
        ).all()
    own, kept = rows
    assert own.created_at + timedelta(seconds=120) <= own.deadline
    assert own.deadline <= own.db_now + timedelta(seconds=120)
    assert kept.deadline == given
    with engine.connect() as conn:
        undated = conn.execute(
            text("SELECT count(*) FROM hedge_jobs WHERE deadline IS NULL")
        ).scalar_one()
    assert undated == 0


# -- the archive never queues in front of a submission ---------------------------------


def lock_holders(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND mode = 'ShareLock' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar_one()
        )


def test_archiver_skips_its_round_while_a_submission_holds_the_lock_then_catches_up(
    engine: Engine, settings: Settings
) -> None:
    """A submission is one transaction; it holds the archive's shared lock until it
    commits.  The archiver must neither wait (queueing every later submitter behind
    its exclusive request) nor move anything meanwhile."""
    [finished] = submit_lines(engine, lines(job(0)), settings, NOW).job_ids
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = 'completed', finished_at = now() - interval '1 h' "
                "WHERE id = :id"
            ),
            {"id": finished},
        )
    tuned = settings.model_copy(update={"submit_batch_size": 1})
    rounds: list[archive.ArchiveReport] = []

    def feed() -> Iterator[str]:
        yield from lines(job(1))  # batch of one: the writer takes the lock for it
        assert wait_for(lambda: lock_holders(engine) > 0), "the submission never took the lock"
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (
                rounds.append(archive.archive_finished(engine, after_s=0, batch=10)),
                done.set(),
            ),
            daemon=True,
        )
        thread.start()
        assert done.wait(HANG_S), "the archiver queued behind a submission"
        yield from lines(job(2))

    result = submit_lines(engine, feed(), tuned, NOW)
    assert result.written and result.inserted == 2
    assert rounds == [archive.ArchiveReport(jobs=0, batches=0)]
    assert archive.archive_finished(engine, after_s=0, batch=10).jobs == 1
    again = submit_lines(engine, lines(job(0)), settings, NOW)  # archived key still known
    assert (again.inserted, again.job_ids) == (0, [finished])
