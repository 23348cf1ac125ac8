"""Market data in: one upsert path for tests, the demo and real feeds.

A snapshot line is a JSON object keyed by the ``market_snapshots`` columns
(``observed_at`` defaults to now).  Like job submission, a file is checked
whole first: any bad line and nothing is written.  The upsert never replaces
a newer observation with an older one, so feeds may race.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine

from perpbot_db import queries
from perpbot_db.jobspec import (
    CCXT_SYMBOL,
    EXCHANGE_ID,
    FieldProblem,
    problems_from_validation,
    unknown_exchange,
)

Price = Annotated[Decimal, Field(gt=0, lt=Decimal("1e16"), allow_inf_nan=False)]


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


@dataclass
class LoadResult:
    lines: int = 0
    upserted: int = 0
    stale_skipped: int = 0
    problems: list[tuple[int, FieldProblem]] = field(default_factory=list)
    written: bool = False


def parse_snapshot(raw: str | bytes, exchanges: frozenset[str]) -> SnapshotIn | list[FieldProblem]:
    try:
        data = json.loads(raw, parse_float=Decimal)
    except ValueError as exc:
        return [FieldProblem("snapshot", f"not valid JSON: {exc}")]
    try:
        snap = SnapshotIn.model_validate(data)
    except ValidationError as exc:
        return problems_from_validation(exc)
    if snap.bid > snap.ask:
        return [FieldProblem("bid", f"{snap.bid} is above ask {snap.ask} (a crossed book)")]
    if snap.exchange not in exchanges:
        return [FieldProblem("exchange", unknown_exchange(snap.exchange, exchanges))]
    return snap


def upsert_snapshots(conn: Connection, snaps: list[SnapshotIn], now: datetime) -> int:
    """Upsert in one statement; returns how many rows changed (newer observations)."""
    if not snaps:
        return 0
    return queries.market_snapshot_upsert_batch(
        conn,
        {
            "exchange": [s.exchange for s in snaps],
            "symbol": [s.symbol for s in snaps],
            "bid": [str(s.bid) for s in snaps],
            "ask": [str(s.ask) for s in snaps],
            "last": [str(s.last) for s in snaps],
            "funding_rate": [
                None if s.funding_rate is None else str(s.funding_rate) for s in snaps
            ],
            "volatility": [None if s.volatility is None else str(s.volatility) for s in snaps],
            "latency_ms": [None if s.latency_ms is None else str(s.latency_ms) for s in snaps],
            "observed_at": [(s.observed_at or now).isoformat() for s in snaps],
        },
    )


def load_lines(
    engine: Engine, lines: Iterable[str | bytes], now: datetime, *, batch_size: int = 5000
) -> LoadResult:
    """Check every line, then upsert all in one transaction (snapshot files are small)."""
    result = LoadResult()
    with engine.connect() as conn:
        exchanges = frozenset(queries.exchange_names_enabled(conn))
        conn.rollback()
        valid: list[SnapshotIn] = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            result.lines += 1
            parsed = parse_snapshot(raw, exchanges)
            if isinstance(parsed, list):
                result.problems.extend((number, p) for p in parsed)
            else:
                valid.append(parsed)
        if result.problems:
            return result
        # The newest observation of a key wins inside one file too.
        latest: dict[tuple[str, str], SnapshotIn] = {}
        for snap in valid:
            key = (snap.exchange, snap.symbol)
            seen = latest.get(key)
            if seen is None or (snap.observed_at or now) >= (seen.observed_at or now):
                latest[key] = snap
        rows = list(latest.values())
        with conn.begin():
            for start in range(0, len(rows), batch_size):
                result.upserted += upsert_snapshots(conn, rows[start : start + batch_size], now)
        result.stale_skipped = len(valid) - result.upserted
        result.written = True
    return result
