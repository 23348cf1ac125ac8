"""Market snapshots: the latest quote per (exchange, symbol), written in batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """One ``market_snapshots`` row."""

    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    funding_rate: Decimal | None
    volatility: Decimal | None
    latency_ms: Decimal | None
    observed_at: datetime


_COLUMNS = rows.columns(MarketSnapshot)

SNAPSHOTS_UPSERT = text(
    f"""
    INSERT INTO market_snapshots AS m ({_COLUMNS})
    SELECT * FROM unnest(
        CAST(:exchange AS text[]), CAST(:symbol AS text[]), CAST(:bid AS numeric[]),
        CAST(:ask AS numeric[]), CAST(:last AS numeric[]), CAST(:funding_rate AS numeric[]),
        CAST(:volatility AS numeric[]), CAST(:latency_ms AS numeric[]),
        CAST(:observed_at AS timestamptz[])
    )
    ON CONFLICT (exchange, symbol) DO UPDATE SET
        bid = EXCLUDED.bid, ask = EXCLUDED.ask, last = EXCLUDED.last,
        funding_rate = EXCLUDED.funding_rate, volatility = EXCLUDED.volatility,
        latency_ms = EXCLUDED.latency_ms, observed_at = EXCLUDED.observed_at
    WHERE EXCLUDED.observed_at >= m.observed_at
       OR (m.observed_at > statement_timestamp() + make_interval(secs => :max_future_skew_s)
           AND EXCLUDED.observed_at
               <= statement_timestamp() + make_interval(secs => :max_future_skew_s))
    """
)


def snapshots_upsert(
    conn: Connection, snapshots: Sequence[MarketSnapshot], *, max_future_skew_s: float
) -> int:
    """Upsert snapshots (one per key) in one statement; an older observation never replaces
    a newer one.  Returns how many rows changed.

    Except a stored one from the future: a row observed more than
    ``max_future_skew_s`` ahead of the database clock (a skewed feed's) is
    replaced by any observation within that bound, so one bad clock cannot block
    every later snapshot of its key."""
    if not snapshots:
        return 0
    params: dict[str, object] = {
        **rows.arrays(MarketSnapshot, snapshots),
        "max_future_skew_s": max_future_skew_s,
    }
    return int(conn.execute(SNAPSHOTS_UPSERT, params).rowcount)


_SNAPSHOTS_ALL = text(f"SELECT {_COLUMNS} FROM market_snapshots")


def snapshots_all(conn: Connection) -> list[MarketSnapshot]:
    """Every stored snapshot."""
    return [MarketSnapshot(*row) for row in conn.execute(_SNAPSHOTS_ALL)]
