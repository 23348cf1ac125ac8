"""Streaming submission of hedge jobs from JSON lines: the whole input or nothing.

Design note.  The input is read once, a line at a time (each at most
:func:`line_limit` bytes), never whole.  The calling thread parses and checks
every line (:mod:`perpbot_db.domain.jobspec`) and gathers the valid jobs into batches
of ``submit_batch_size``; a writer thread runs each batch on one connection -
one statement to allocate ids, one for the jobs, their legs and their
``null -> pending`` events - while the next batch is being validated.  Every
batch runs inside ONE transaction for the whole input:

* the first bad line (without ``skip_invalid``) stops the writing; the rest is
  still read, to count and report its problems, and the transaction rolls back;
* a database error rolls back too and comes out as one :class:`SubmitError`;
* otherwise it commits once, with one NOTIFY for the schedulers.

So a file is written whole or not at all, whatever happens mid-way.  Memory is
flat whatever the input: at most two batches wait for the writer, and the
report keeps the first problems and counts the rest (:class:`ProblemReport`).

A repeated ``idempotency_key`` returns the existing job: in the table, in the
archive, or earlier in the same input (earlier batches of the transaction are
visible to later ones).  From its first keyed batch to its end the transaction
holds the archive's shared lock, so a job is live or archived, never between;
the archiver only tries its lock and skips a round while a submission holds it.
Every job gets a deadline: its own, or ``max_pending_s`` after its insert.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Connection, Engine

from perpbot_db.domain.execution import client_order_id
from perpbot_db.domain.jobspec import JobSpec, SubmissionRules, parse_job
from perpbot_db.domain.jsonlines import (
    LineProblem,
    Oversized,
    ProblemReport,
    oversized_problem,
    read_lines,
)
from perpbot_db.settings import Settings
from perpbot_db.store import archive, exchanges, jobs, system, transitions
from perpbot_db.store.reconnect import is_database_error

__all__ = ["LineProblem", "SubmitError", "SubmitResult", "line_limit", "submit_lines"]

ProgressFn = Callable[[str, int], None]

#: Batches validated ahead of the writer: the overlap, and the bound on memory.
_QUEUED_BATCHES = 2


def line_limit(settings: Settings) -> int:
    """The longest line a job may take: room for ``max_metadata_bytes`` of metadata
    written entirely as ``\\uXXXX`` escapes, plus the legs and every other field."""
    return 65_536 + 6 * settings.max_metadata_bytes


class SubmitError(Exception):
    """The database refused or failed mid-way; the transaction rolled back."""


@dataclass
class SubmitResult:
    lines: int = 0
    valid: int = 0
    inserted: int = 0
    existing: int = 0
    report: ProblemReport = field(default_factory=ProblemReport)
    #: Every job's id in input order (when asked for: ``keep_job_ids``).
    job_ids: list[int] = field(default_factory=list)
    first_job_id: int | None = None
    last_job_id: int | None = None
    written: bool = False

    @property
    def problems(self) -> list[LineProblem]:
        """The first problems (``report.total`` counts them all)."""
        return self.report.shown

    def summary(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "valid": self.valid,
            "invalid": self.report.bad_lines,
            "inserted": self.inserted,
            "existing": self.existing,
            "written": self.written,
            "first_job_id": self.first_job_id,
            "last_job_id": self.last_job_id,
            "problems_total": self.report.total,
            "problems": [
                {"line": p.line, "field": p.field, "message": p.message} for p in self.problems
            ],
        }

    def record_batch(self, ids: list[int], inserted: int, keep: bool) -> None:
        """Count one written batch (called by the writer thread)."""
        self.inserted += inserted
        self.existing += len(ids) - inserted
        low, high = min(ids), max(ids)
        self.first_job_id = low if self.first_job_id is None else min(low, self.first_job_id)
        self.last_job_id = high if self.last_job_id is None else max(high, self.last_job_id)
        if keep:
            self.job_ids.extend(ids)


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


class _Batch:
    """Valid jobs as the columns the insert takes (numbers as text); ids come at write time."""

    def __init__(self) -> None:
        self.size = 0
        self.keys: list[str | None] = []
        self.jobs = transitions.NewJobs.empty()
        self.leg_owner: list[int] = []  # the job's position in this batch
        self.leg_index: list[int] = []
        self.leg_exchange: list[str] = []
        self.leg_side: list[str] = []
        self.leg_quantity: list[str] = []

    def add(self, spec: JobSpec, max_attempts: int) -> None:
        new = self.jobs
        new.strategy.append(spec.strategy.value)
        new.symbol.append(spec.symbol)
        new.notional_usd.append(str(spec.notional_usd))
        new.expected_edge_bps.append(str(spec.expected_edge_bps))
        new.expected_pnl_usd.append(str(spec.expected_pnl_usd))
        new.expected_volume_usd.append(str(spec.volume_usd))
        new.risk_score.append(_opt(spec.risk_score))
        new.latency_score.append(_opt(spec.latency_score))
        new.vol_score.append(_opt(spec.vol_score))
        new.funding_score.append(_opt(spec.funding_score))
        new.liquidity_score.append(_opt(spec.liquidity_score))
        new.max_attempts.append(max_attempts)
        new.deadline.append(spec.deadline.isoformat() if spec.deadline else None)
        new.idempotency_key.append(spec.idempotency_key)
        new.metadata.append(spec.metadata_json)
        self.keys.append(spec.idempotency_key)
        for index, leg in enumerate(spec.legs):
            self.leg_owner.append(self.size)
            self.leg_index.append(index)
            self.leg_exchange.append(leg.exchange)
            self.leg_side.append(leg.side.value)
            self.leg_quantity.append(str(leg.quantity))
        self.size += 1


def _write_batch(
    conn: Connection, batch: _Batch, settings: Settings, locked: bool
) -> tuple[list[int], int]:
    """Insert one batch in the caller's transaction; (job id per row, how many were new)."""
    if not locked and any(key is not None for key in batch.keys):
        archive.lock(conn, shared=True)  # a keyed job is live or archived, not between
    ids = jobs.allocate_ids(conn, batch.size)
    batch.jobs.id[:] = ids
    prefix = settings.client_order_prefix
    leg_job_ids = [ids[owner] for owner in batch.leg_owner]
    legs = transitions.NewLegs(
        job_id=leg_job_ids,
        index=batch.leg_index,
        exchange=batch.leg_exchange,
        side=batch.leg_side,
        quantity=batch.leg_quantity,
        client_order_id=[
            client_order_id(prefix, job_id, index, 1)
            for job_id, index in zip(leg_job_ids, batch.leg_index, strict=True)
        ],
    )
    inserted = transitions.submit(
        conn, batch.jobs, legs, actor="submit", max_pending_s=settings.max_pending_s
    )
    if len(inserted) == len(ids):
        return ids, len(inserted)
    missing = [
        key for job_id, key in zip(ids, batch.keys, strict=True) if job_id not in inserted and key
    ]
    existing = jobs.ids_by_idempotency_key(conn, missing) if missing else {}
    result_ids = [
        job_id if job_id in inserted else existing[key or ""]
        for job_id, key in zip(ids, batch.keys, strict=True)
    ]
    return result_ids, len(inserted)


class _Writer(threading.Thread):
    """Runs batches, in order, on the submission's connection and transaction."""

    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        result: SubmitResult,
        *,
        keep_job_ids: bool,
        progress: ProgressFn | None,
    ) -> None:
        super().__init__(name="submit-writer", daemon=True)
        self._conn = conn
        self._settings = settings
        self._result = result
        self._keep = keep_job_ids
        self._progress = progress
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=_QUEUED_BATCHES)
        self._locked = False
        self.error: BaseException | None = None

    def put(self, batch: _Batch) -> None:
        self._queue.put(batch)

    def close(self) -> None:
        """Let the queued batches finish (or be dropped after an error), then stop."""
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain: the transaction is lost, it will roll back
            try:
                ids, inserted = _write_batch(self._conn, batch, self._settings, self._locked)
            except BaseException as exc:  # handed to the submitting thread
                self.error = exc
                continue
            self._locked = self._locked or any(key is not None for key in batch.keys)
            self._result.record_batch(ids, inserted, self._keep)
            if self._progress is not None:
                self._progress("insert", len(ids))


def submit_lines(
    engine: Engine,
    lines: Iterable[str | bytes] | IO[bytes],
    settings: Settings,
    now: datetime,
    *,
    skip_invalid: bool = False,
    progress: ProgressFn | None = None,
    keep_job_ids: bool = True,
) -> SubmitResult:
    """Validate and insert every line in one transaction; see the module's design note.

    With a bad line and without ``skip_invalid`` nothing is written and
    ``result.written`` stays False.  ``lines`` is a binary stream (read with a
    line limit) or an iterable of lines.  Raises :class:`SubmitError` when the
    database fails mid-way (nothing is written then either).
    """
    result = SubmitResult()
    try:
        with engine.connect() as conn:
            conn.begin()
            rules = SubmissionRules(
                exchanges=frozenset(exchanges.names_enabled(conn)),
                hedge_tolerance=settings.hedge_tolerance,
                max_legs=settings.max_legs,
                max_metadata_bytes=settings.max_metadata_bytes,
            )
            writer = _Writer(conn, settings, result, keep_job_ids=keep_job_ids, progress=progress)
            writer.start()
            try:
                _validate(lines, rules, now, settings, writer, result, skip_invalid, progress)
            finally:
                writer.close()
            if writer.error is not None:
                raise writer.error
            if result.report.total and not skip_invalid:
                conn.rollback()
                return result
            if result.inserted:  # wake the schedulers on commit (a hint; they also poll)
                system.notify(conn, system.CHANNEL_SUBMITTED, str(result.inserted))
            conn.commit()
    except Exception as exc:
        if not is_database_error(exc):
            raise
        raise SubmitError(_describe(exc)) from None
    result.written = True
    return result


def _validate(
    lines: Iterable[str | bytes] | IO[bytes],
    rules: SubmissionRules,
    now: datetime,
    settings: Settings,
    writer: _Writer,
    result: SubmitResult,
    skip_invalid: bool,
    progress: ProgressFn | None,
) -> None:
    """Read and check every line; hand full batches to the writer while all is well."""
    limit = line_limit(settings)
    writing = True
    batch = _Batch()
    for number, raw in enumerate(read_lines(lines, limit), start=1):
        if isinstance(raw, Oversized):
            if progress is not None:
                progress("validate", raw.size)
            result.lines += 1
            result.report.add(number, [oversized_problem(raw.size, limit, "job")])
            writing = writing and skip_invalid
            continue
        if progress is not None:
            progress("validate", len(raw))
        if not raw.strip():
            continue
        result.lines += 1
        parsed = parse_job(raw, rules, now)
        if isinstance(parsed, list):
            result.report.add(number, parsed)
            writing = writing and skip_invalid
            continue
        result.valid += 1
        if not writing:
            continue
        if writer.error is not None:
            return  # the transaction is lost: stop reading
        batch.add(parsed, settings.max_attempts)
        if batch.size >= settings.submit_batch_size:
            writer.put(batch)
            batch = _Batch()
    if writing and batch.size:
        writer.put(batch)


def _describe(exc: BaseException) -> str:
    """One line about a database failure: the driver's message, never the SQL or its
    parameters (which SQLAlchemy appends)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    return f"the database refused the submission: {first}"
