"""What the job producers read besides the market: accounts, today's counters, the open pairs
(volume, arb, funding_arb) and unhedged exposure.  One named statement each; all read-only.

Finished jobs leave ``hedge_jobs`` for the archive a minute after they end, so
the statements that look back (open pairs, residual exposure, rebalance
rounds) read the ``*_all`` views: an opening held longer than that, or an
unhedged job nobody has rebalanced yet, is still found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store import rows

_SIGNED_FILLED = "CASE l.side WHEN 'buy' THEN l.filled_quantity ELSE -l.filled_quantity END"


@dataclass(frozen=True, slots=True)
class Account:
    """An enabled exchange account as a producer sizes jobs against it."""

    name: str
    equity_usd: Decimal
    single_job_cap: Decimal
    safe_mode: bool


_ACCOUNTS = text(f"SELECT {rows.columns(Account)} FROM exchanges WHERE enabled ORDER BY name")


def accounts_enabled(conn: Connection) -> list[Account]:
    return [Account(*row) for row in conn.execute(_ACCOUNTS)]


@dataclass(frozen=True, slots=True)
class ExchangeDay:
    """One exchange's counters of one UTC day."""

    scope: str
    volume_usd: Decimal
    fees_usd: Decimal
    realized_pnl_usd: Decimal


_EXCHANGE_DAYS = text(
    f"SELECT {rows.columns(ExchangeDay)} FROM daily_counters "
    "WHERE day = :day AND scope <> 'global' ORDER BY scope"
)


def exchange_days(conn: Connection, *, day: date) -> list[ExchangeDay]:
    """Every exchange's counters of ``day`` (an exchange that traded nothing has none)."""
    return [ExchangeDay(*row) for row in conn.execute(_EXCHANGE_DAYS, {"day": day})]


@dataclass(frozen=True, slots=True)
class OpeningLeg:
    """The net fill of a completed opening on one exchange, with its key, the time its
    hold ends (from the opening's metadata) and how many closes of it were lost."""

    strategy: str
    idempotency_key: str
    symbol: str
    exchange: str
    net_quantity: Decimal
    close_after: str | None  # ISO 8601 as the opening wrote it; parsed by the service
    failed_closes: int
    buy_price: Decimal | None  # the average price of its buys filled on the exchange
    sell_price: Decimal | None  # and of its sells
    fee_usd: Decimal  # the fees its legs on the exchange booked
    opened_at: datetime | None  # when the opening completed
    daily_spread_bps: str | None  # funding_arb's entry spread, as the opening wrote it


#: Starts from ``open_pairs`` (the completed openings whose close has not completed, kept
#: by triggers: migration 0016), so finished history is never read: each opening is reached
#: by id, its legs by job id and its closes by the key they name (``metadata.opens``,
#: written by every close; ``ix_hedge_jobs*_close_opens``).  The closes are still checked:
#: one on its way keeps the pair out too, and the lost ones are counted.
_OPENINGS_TO_CLOSE = text(
    f"""
    SELECT j.strategy, j.idempotency_key, j.symbol, l.exchange,
           sum({_SIGNED_FILLED}) AS net_quantity,
           j.metadata->>'close_after' AS close_after,
           c.failed AS failed_closes,
           sum(l.filled_quantity * l.avg_price) FILTER (WHERE l.side = 'buy')
               / nullif(sum(l.filled_quantity) FILTER (
                   WHERE l.side = 'buy' AND l.avg_price IS NOT NULL), 0) AS buy_price,
           sum(l.filled_quantity * l.avg_price) FILTER (WHERE l.side = 'sell')
               / nullif(sum(l.filled_quantity) FILTER (
                   WHERE l.side = 'sell' AND l.avg_price IS NOT NULL), 0) AS sell_price,
           sum(l.fee_usd) AS fee_usd,
           j.finished_at AS opened_at,
           j.metadata->>'daily_spread_bps' AS daily_spread_bps
    FROM open_pairs o
    JOIN hedge_jobs_all j ON j.id = o.job_id
    JOIN legs_all l ON l.job_id = j.id
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (
                   WHERE x.status IN ('failed', 'rejected', 'cancelled', 'expired')
               ) AS failed,
               coalesce(
                   bool_or(x.status IN ('pending', 'admitted', 'running', 'completed')), false
               ) AS held
        FROM hedge_jobs_all x
        WHERE x.metadata->>'phase' = 'close' AND x.metadata->>'opens' = j.idempotency_key
          AND x.strategy = j.strategy
    ) c
    WHERE j.strategy IN ('volume', 'funding_arb', 'arb') AND j.status = 'completed'
      AND j.metadata->>'phase' = 'open' AND j.idempotency_key IS NOT NULL
      AND (j.strategy <> 'volume' OR j.idempotency_key LIKE 'vol:open:%')
      AND NOT c.held
    GROUP BY j.id, j.strategy, j.idempotency_key, j.symbol, l.exchange,
             j.metadata->>'close_after', c.failed, j.finished_at,
             j.metadata->>'daily_spread_bps'
    ORDER BY j.id, l.exchange
    """
)


def openings_to_close(conn: Connection) -> list[OpeningLeg]:
    """The legs (netted per exchange) of completed openings (volume, funding_arb, arb) that
    have no close on its way or completed, with the count of closes that were lost and
    what the opening paid (fill prices, fees) for an exit on PnL.  Reads
    what is open (``open_pairs``), never the finished history."""
    return [OpeningLeg(*row) for row in conn.execute(_OPENINGS_TO_CLOSE)]


_VOLUME_OPENINGS_IN_FLIGHT = text(
    """
    SELECT count(*) FROM hedge_jobs
    WHERE strategy = 'volume' AND status IN ('pending', 'admitted', 'running')
      AND metadata->>'phase' = 'open'
    """
)


def volume_openings_in_flight(conn: Connection) -> int:
    """Volume openings not finished yet (a finished job is never pending again but by a
    retry, which this counts too)."""
    return int(conn.execute(_VOLUME_OPENINGS_IN_FLIGHT).scalar_one())


@dataclass(frozen=True, slots=True)
class ResidualRow:
    exchange: str
    symbol: str
    quantity: Decimal


_RESIDUAL_EXPOSURE = text(
    f"""
    SELECT l.exchange, l.symbol, sum({_SIGNED_FILLED}) AS quantity
    FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id
    WHERE j.unhedged OR j.strategy = 'hedge_rebalance'
    GROUP BY l.exchange, l.symbol
    HAVING sum({_SIGNED_FILLED}) <> 0
    ORDER BY l.symbol, l.exchange
    """
)


def residual_exposure(conn: Connection) -> list[ResidualRow]:
    """Open quantity per exchange and symbol left by unhedged jobs, net of what the
    rebalance jobs have traded against it (every attempt and unwind counted)."""
    return [ResidualRow(*row) for row in conn.execute(_RESIDUAL_EXPOSURE)]


@dataclass(frozen=True, slots=True)
class RebalanceRound:
    symbol: str
    jobs: int
    in_flight: int


_REBALANCE_ROUNDS = text(
    """
    SELECT symbol, count(*) AS jobs,
           count(*) FILTER (WHERE status IN ('pending', 'admitted', 'running')) AS in_flight
    FROM hedge_jobs_all
    WHERE strategy = 'hedge_rebalance'
    GROUP BY symbol
    """
)


def rebalance_rounds(conn: Connection) -> list[RebalanceRound]:
    """Per symbol: the rebalance jobs it has had, and how many are not finished."""
    return [RebalanceRound(*row) for row in conn.execute(_REBALANCE_ROUNDS)]


@dataclass(frozen=True, slots=True)
class SymbolJobs:
    """Per strategy and symbol: jobs on their way (pending to running)."""

    strategy: str
    symbol: str
    in_flight: int


#: Jobs in flight are never archived: the live table alone, by ``ix_hedge_jobs_in_flight``
#: (migration 0017), whatever the history.
_ARBITRAGE_BY_SYMBOL = text(
    """
    SELECT strategy, symbol, count(*) AS in_flight
    FROM hedge_jobs
    WHERE strategy IN ('arb', 'funding_arb') AND status IN ('pending', 'admitted', 'running')
    GROUP BY strategy, symbol
    """
)


def arbitrage_by_symbol(conn: Connection) -> list[SymbolJobs]:
    """The arbitrage strategies' jobs on their way, per symbol."""
    return [SymbolJobs(*row) for row in conn.execute(_ARBITRAGE_BY_SYMBOL)]
