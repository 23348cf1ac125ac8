"""Market data in: one upsert path for tests, the demo and real feeds.

A snapshot line is a JSON object keyed by the ``market_snapshots`` columns
(``observed_at`` defaults to the database clock).  :func:`load_lines` works
like job submission: it streams the input in batches inside ONE transaction,
so any bad line (or a database error) and nothing is written; its report keeps
the first problems and counts the rest, and memory stays flat whatever the
input.  The upsert never replaces a newer observation with an older one, so
feeds may race.  That makes a clock-skewed feed dangerous: one snapshot from
the future would hold its key until the future arrived.  So an ``observed_at``
more than ``market_max_future_skew_s`` ahead of the database clock is refused,
and a row stored that far ahead (before this check existed) yields to any
valid observation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import IO, Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine

from perpbot_db.domain.jobspec import (
    CCXT_SYMBOL,
    EXCHANGE_ID,
    FieldProblem,
    problems_from_validation,
    unknown_exchange,
)
from perpbot_db.domain.jsonlines import (
    LineProblem,
    Oversized,
    ProblemReport,
    loads,
    oversized_problem,
    read_lines,
)
from perpbot_db.store import exchanges, system
from perpbot_db.store import market as store_market
from perpbot_db.store.reconnect import is_database_error

#: A snapshot is a few hundred bytes; a longer line is refused unread.
MAX_LINE_BYTES = 65_536
#: Snapshots per upsert statement.
BATCH_SIZE = 5000
#: The default for ``market_max_future_skew_s``.
DEFAULT_MAX_FUTURE_SKEW_S = 5.0

# numeric(28, 12): at least 1e-12, or the stored price would round to 0.
Price = Annotated[Decimal, Field(ge=Decimal("1e-12"), lt=Decimal("1e16"), allow_inf_nan=False)]


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exchange: Annotated[str, Field(pattern=EXCHANGE_ID)]
    symbol: Annotated[str, Field(pattern=CCXT_SYMBOL)]
    bid: Price
    ask: Price
    last: Price
    funding_rate: Annotated[Decimal, Field(gt=-1, lt=1, allow_inf_nan=False)] | None = None
    volatility: Annotated[Decimal, Field(ge=0, lt=1000, allow_inf_nan=False)] | None = None
    latency_ms: Annotated[Decimal, Field(ge=0, lt=10**9, allow_inf_nan=False)] | None = None
    observed_at: AwareDatetime | None = None


class LoadError(Exception):
    """The database refused or failed mid-way; the transaction rolled back."""


@dataclass
class LoadResult:
    lines: int = 0
    upserted: int = 0
    stale_skipped: int = 0
    report: ProblemReport = field(default_factory=ProblemReport)
    written: bool = False

    @property
    def problems(self) -> list[LineProblem]:
        """The first problems (``report.total`` counts them all)."""
        return self.report.shown


def parse_snapshot(
    raw: str | bytes,
    exchanges: frozenset[str],
    now: datetime,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> SnapshotIn | list[FieldProblem]:
    """One snapshot, or its problems; ``now`` is the database clock."""
    data = loads(raw, "snapshot")
    if isinstance(data, FieldProblem):
        return [data]
    try:
        snap = SnapshotIn.model_validate(data)
    except ValidationError as exc:
        return problems_from_validation(exc)
    problems = []
    if snap.bid > snap.ask:
        problems.append(FieldProblem("bid", f"{snap.bid} is above ask {snap.ask} (a crossed book)"))
    if snap.exchange not in exchanges:
        problems.append(FieldProblem("exchange", unknown_exchange(snap.exchange, exchanges)))
    if snap.observed_at is not None and snap.observed_at > now + timedelta(
        seconds=max_future_skew_s
    ):
        ahead = (snap.observed_at - now).total_seconds()
        problems.append(
            FieldProblem(
                "observed_at",
                f"{snap.observed_at.isoformat()} is {ahead:,.0f} s ahead of the database clock "
                f"({now.isoformat(timespec='seconds')}); at most {max_future_skew_s:g} s of "
                "clock skew is allowed (market_max_future_skew_s)",
            )
        )
    return problems or snap


def upsert_snapshots(
    conn: Connection,
    snaps: list[SnapshotIn],
    now: datetime,
    *,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
) -> int:
    """Upsert in one statement (one snapshot per key; ``observed_at`` defaults to ``now``);
    returns how many rows changed (newer observations, or rows healed from the future)."""
    return _upsert(conn, [(s, s.observed_at or now) for s in snaps], max_future_skew_s)


def _upsert(
    conn: Connection, rows: list[tuple[SnapshotIn, datetime]], max_future_skew_s: float
) -> int:
    if not rows:
        return 0
    return store_market.snapshots_upsert(
        conn,
        [
            store_market.MarketSnapshot(
                exchange=s.exchange,
                symbol=s.symbol,
                bid=s.bid,
                ask=s.ask,
                last=s.last,
                funding_rate=s.funding_rate,
                volatility=s.volatility,
                latency_ms=s.latency_ms,
                observed_at=at,
            )
            for s, at in rows
        ],
        max_future_skew_s=max_future_skew_s,
    )


def load_lines(
    engine: Engine,
    lines: Iterable[str | bytes] | IO[bytes],
    *,
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S,
    batch_size: int = BATCH_SIZE,
    now: datetime | None = None,
) -> LoadResult:
    """Check and upsert every line in one transaction: all of them, or none.

    ``now`` fixes the clock (tests); by default it is the database clock, read
    when the load starts and advanced by the local monotonic clock.  Raises
    :class:`LoadError` when the database fails mid-way (nothing is written).
    """
    result = LoadResult()
    try:
        with engine.connect() as conn:
            conn.begin()
            enabled = frozenset(exchanges.names_enabled(conn))
            clock = _clock(conn) if now is None else _fixed(now)
            _load(conn, lines, enabled, clock, max_future_skew_s, batch_size, result)
            if result.report.total:
                conn.rollback()
                return result
            conn.commit()
    except Exception as exc:
        if not is_database_error(exc):
            raise
        cause = getattr(exc, "orig", None) or exc
        text = str(cause).strip()
        first = text.splitlines()[0] if text else type(cause).__name__
        raise LoadError(f"the database refused the market data: {first}") from None
    result.written = True
    return result


def _fixed(now: datetime) -> Callable[[], datetime]:
    return lambda: now


def _clock(conn: Connection) -> Callable[[], datetime]:
    start, started = system.db_now(conn), time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - started)


def _load(
    conn: Connection,
    lines: Iterable[str | bytes] | IO[bytes],
    exchanges: frozenset[str],
    clock: Callable[[], datetime],
    max_future_skew_s: float,
    batch_size: int,
    result: LoadResult,
) -> None:
    # The newest observation of a key wins inside a batch (one row per key per
    # statement); across batches the upsert's own rule decides.
    batch: dict[tuple[str, str], tuple[SnapshotIn, datetime]] = {}
    valid = 0
    for number, raw in enumerate(read_lines(lines, MAX_LINE_BYTES), start=1):
        if isinstance(raw, Oversized):
            result.lines += 1
            result.report.add(number, [oversized_problem(raw.size, MAX_LINE_BYTES, "snapshot")])
            continue
        if not raw.strip():
            continue
        result.lines += 1
        now = clock()
        parsed = parse_snapshot(raw, exchanges, now, max_future_skew_s)
        if isinstance(parsed, list):
            result.report.add(number, parsed)
            continue
        valid += 1
        if result.report.total:
            continue  # nothing will be written: only count and report
        key = (parsed.exchange, parsed.symbol)
        at = parsed.observed_at or now
        seen = batch.get(key)
        if seen is None or at >= seen[1]:
            batch[key] = (parsed, at)
        if len(batch) >= batch_size:
            result.upserted += _upsert(conn, list(batch.values()), max_future_skew_s)
            batch.clear()
    if not result.report.total:
        result.upserted += _upsert(conn, list(batch.values()), max_future_skew_s)
    result.stale_skipped = valid - result.upserted
