"""Streaming submission of hedge jobs from JSON lines.

Design note.  Input is read once, line by line, never whole.  Pass 1 parses
and checks every line and spools the valid ones, in compact batches, to a
temporary file; problems are collected with their line numbers.  If any line
is bad (and ``skip_invalid`` is off) nothing is written.  Pass 2 writes each
batch in its own transaction with one statement for jobs, legs and their
``null -> pending`` events (plus one to allocate ids), so 100,000 jobs cost a
few hundred round trips.  A repeated ``idempotency_key`` (in the table or in
the same input) returns the existing job instead of inserting a second one.
"""

from __future__ import annotations

import json
import pickle
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Connection, Engine

from perpbot_db import queries
from perpbot_db.jobspec import JobSpec, SubmissionRules, client_order_id, parse_job
from perpbot_db.lifecycle import JobStatus
from perpbot_db.settings import Settings

ProgressFn = Callable[[str, int], None]


@dataclass(frozen=True)
class LineProblem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class SubmitResult:
    lines: int = 0
    valid: int = 0
    inserted: int = 0
    existing: int = 0
    problems: list[LineProblem] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)
    written: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "valid": self.valid,
            "invalid": len({p.line for p in self.problems}),
            "inserted": self.inserted,
            "existing": self.existing,
            "written": self.written,
            "first_job_id": min(self.job_ids) if self.job_ids else None,
            "last_job_id": max(self.job_ids) if self.job_ids else None,
            "problems": [
                {"line": p.line, "field": p.field, "message": p.message} for p in self.problems
            ],
        }


@dataclass(frozen=True)
class _Row:
    """One valid job, reduced to what the insert needs (cheap to pickle)."""

    line: int
    job: tuple[Any, ...]
    legs: tuple[tuple[str, str, str], ...]
    idempotency_key: str | None


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _row(line: int, spec: JobSpec, max_attempts: int) -> _Row:
    job = (
        spec.strategy.value,
        spec.symbol,
        str(spec.notional_usd),
        str(spec.expected_edge_bps),
        str(spec.expected_pnl_usd),
        str(spec.volume_usd),
        _opt(spec.risk_score),
        _opt(spec.latency_score),
        _opt(spec.vol_score),
        _opt(spec.funding_score),
        _opt(spec.liquidity_score),
        max_attempts,
        spec.deadline.isoformat() if spec.deadline else None,
        spec.idempotency_key,
        json.dumps(spec.metadata, separators=(",", ":")),
    )
    legs = tuple((leg.exchange, leg.side.value, str(leg.quantity)) for leg in spec.legs)
    return _Row(line, job, legs, spec.idempotency_key)


_JOB_COLUMNS = (
    "strategy",
    "symbol",
    "notional_usd",
    "expected_edge_bps",
    "expected_pnl_usd",
    "expected_volume_usd",
    "risk_score",
    "latency_score",
    "vol_score",
    "funding_score",
    "liquidity_score",
    "max_attempts",
    "deadline",
    "idempotency_key",
    "metadata",
)


def _validate(
    lines: Iterable[str | bytes],
    rules: SubmissionRules,
    now: datetime,
    settings: Settings,
    spool: IO[bytes],
    result: SubmitResult,
    progress: ProgressFn | None,
) -> int:
    """Pass 1: check every line, spool valid rows in batches; returns the batch count."""
    batch: list[_Row] = []
    batches = 0
    for number, raw in enumerate(lines, start=1):
        if progress is not None:
            progress("validate", len(raw))
        if not raw.strip():
            continue
        result.lines += 1
        parsed = parse_job(raw, rules, now)
        if isinstance(parsed, list):
            result.problems.extend(LineProblem(number, p.field, p.message) for p in parsed)
            continue
        result.valid += 1
        batch.append(_row(number, parsed, settings.max_attempts))
        if len(batch) >= settings.submit_batch_size:
            pickle.dump(batch, spool, protocol=pickle.HIGHEST_PROTOCOL)
            batches += 1
            batch = []
    if batch:
        pickle.dump(batch, spool, protocol=pickle.HIGHEST_PROTOCOL)
        batches += 1
    return batches


def _spooled(spool: IO[bytes], batches: int) -> Iterator[list[_Row]]:
    spool.seek(0)
    for _ in range(batches):
        yield pickle.load(spool)  # noqa: S301 - our own temporary file


def _write_batch(conn: Connection, rows: list[_Row], prefix: str) -> tuple[list[int], int]:
    """Insert one batch; returns (job id per row, how many rows were new)."""
    if any(row.idempotency_key is not None for row in rows):
        queries.archive_lock(conn, shared=True)  # a keyed job is live or archived, not between
    ids = queries.job_allocate_ids(conn, len(rows))
    jobs: dict[str, list[Any]] = {"id": ids}
    for i, name in enumerate(_JOB_COLUMNS):
        jobs[name] = [row.job[i] for row in rows]
    legs: dict[str, list[Any]] = {
        k: [] for k in ("job_id", "leg_index", "exchange", "side", "quantity", "client_order_id")
    }
    for job_id, row in zip(ids, rows, strict=True):
        for index, (exchange, side, quantity) in enumerate(row.legs):
            legs["job_id"].append(job_id)
            legs["leg_index"].append(index)
            legs["exchange"].append(exchange)
            legs["side"].append(side)
            legs["quantity"].append(quantity)
            legs["client_order_id"].append(client_order_id(prefix, job_id, index, 1))
    inserted = queries.job_submit_batch(
        conn, jobs, legs, to_status=JobStatus.PENDING.value, actor="submit"
    )
    if inserted:  # wake the schedulers when this batch commits (a hint; they also poll)
        queries.notify(conn, queries.CHANNEL_SUBMITTED, str(len(inserted)))
    result_ids = list(ids)
    missing = [
        row.idempotency_key
        for job_id, row in zip(ids, rows, strict=True)
        if job_id not in inserted and row.idempotency_key is not None
    ]
    if missing:
        existing = queries.job_ids_by_idempotency_key(conn, missing)
        result_ids = [
            job_id if job_id in inserted else existing[row.idempotency_key or ""]
            for job_id, row in zip(ids, rows, strict=True)
        ]
    return result_ids, len(inserted)


def submit_lines(
    engine: Engine,
    lines: Iterable[str | bytes],
    settings: Settings,
    now: datetime,
    *,
    skip_invalid: bool = False,
    progress: ProgressFn | None = None,
) -> SubmitResult:
    """Validate every line, then insert the valid jobs batch by batch.

    With problems and without ``skip_invalid`` nothing is written and
    ``result.written`` stays False.  Batches are written by
    ``settings.submit_writers`` connections at once: the server's work on one
    batch (indexes, foreign keys) overlaps with the next.
    """
    with engine.connect() as conn:
        rules = SubmissionRules(
            exchanges=frozenset(queries.exchange_names_enabled(conn)),
            hedge_tolerance=settings.hedge_tolerance,
            max_legs=settings.max_legs,
            max_metadata_bytes=settings.max_metadata_bytes,
        )
    result = SubmitResult()
    with tempfile.TemporaryFile(prefix="perpbot-submit-") as spool:
        batches = _validate(lines, rules, now, settings, spool, result, progress)
        if result.problems and not skip_invalid:
            return result
        _write_all(engine, _spooled(spool, batches), settings, result, progress)
    result.written = True
    return result


def _write_all(
    engine: Engine,
    batches: Iterator[list[_Row]],
    settings: Settings,
    result: SubmitResult,
    progress: ProgressFn | None,
) -> None:
    local = threading.local()
    connections: list[Connection] = []
    lock = threading.Lock()

    def write(rows: list[_Row]) -> tuple[list[int], int]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = engine.connect()
            with lock:
                connections.append(conn)
        with conn.begin():
            return _write_batch(conn, rows, settings.client_order_prefix)

    def collect(future: Future[tuple[list[int], int]]) -> None:
        ids, new = future.result()
        result.job_ids.extend(ids)
        result.inserted += new
        result.existing += len(ids) - new
        if progress is not None:
            progress("insert", len(ids))

    writers = settings.submit_writers
    try:
        with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="submit") as pool:
            in_flight: deque[Future[tuple[list[int], int]]] = deque()
            for rows in batches:
                in_flight.append(pool.submit(write, rows))
                if len(in_flight) >= 2 * writers:  # bounded: memory stays flat
                    collect(in_flight.popleft())
            while in_flight:
                collect(in_flight.popleft())
    finally:
        for conn in connections:
            conn.close()
