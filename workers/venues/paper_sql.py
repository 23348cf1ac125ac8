"""The paper exchange's SQL, each statement a function named ``<entity>_<verb>``.

The paper exchange is a simulated venue, not part of the queue, so its
statements live here rather than in ``perpbot_db.store``.  Same habits:
every statement takes typed parameters and returns typed rows (frozen
dataclasses defined beside their SQL, their fields the statement's columns:
:class:`PaperOrderRow` written, :class:`PaperOrderState` and
:class:`PaperFill` read); batches travel as parallel arrays and are
``unnest``-ed; numbers travel as ``Decimal`` (psycopg sends them as
``numeric``) and come back as ``Decimal``.  Every statement is scoped to one
``exchange`` (one paper account).  Column lists and batches come from the
store's row helpers (:mod:`perpbot_db.store.rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from perpbot_db.store.rows import arrays as _arrays
from perpbot_db.store.rows import columns as _columns

# -- market data ---------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    bid: Decimal
    ask: Decimal
    observed_at: datetime


_MARKET_QUOTE_FETCH = text(
    """
    SELECT symbol, bid, ask, observed_at FROM market_snapshots
    WHERE exchange = CAST(:exchange AS text) AND symbol = ANY(CAST(:symbols AS text[]))
    """
)


def market_quote_fetch(conn: Connection, exchange: str, symbols: Sequence[str]) -> dict[str, Quote]:
    """The latest bid/ask of each symbol that has a snapshot on ``exchange``."""
    rows = conn.execute(_MARKET_QUOTE_FETCH, {"exchange": exchange, "symbols": list(symbols)})
    return {symbol: Quote(bid, ask, observed_at) for symbol, bid, ask, observed_at in rows}


# -- orders: writes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaperOrderRow:
    """One order to record, with the venue's answer to it (a row of ``paper_orders``)."""

    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal | None  # None: off the column's scale (a refusal records it so)
    reduce_only: bool
    status: str  # an OrderStatus value, as plain text
    filled_quantity: Decimal
    avg_price: Decimal | None  # None when nothing filled
    fee_usd: Decimal
    error: str | None


#: Rows are numbered in request order (``WITH ORDINALITY``) so ids, and with them
#: the fill sequence that ``balance`` replays, follow the batch's order.  The
#: ``unnest`` arguments are :class:`PaperOrderRow`'s fields, in order, with their types.
_PAPER_ORDER_INSERT_BATCH = text(
    f"""
    INSERT INTO paper_orders (exchange, {_columns(PaperOrderRow)})
    SELECT CAST(:exchange AS text), {_columns(PaperOrderRow, "o")}
    FROM unnest(
        CAST(:client_order_id AS text[]), CAST(:symbol AS text[]), CAST(:side AS text[]),
        CAST(:quantity AS numeric[]), CAST(:reduce_only AS boolean[]),
        CAST(:status AS text[]), CAST(:filled_quantity AS numeric[]),
        CAST(:avg_price AS numeric[]), CAST(:fee_usd AS numeric[]), CAST(:error AS text[])
    ) WITH ORDINALITY AS o({_columns(PaperOrderRow)}, n)
    ORDER BY o.n
    ON CONFLICT (exchange, client_order_id) DO NOTHING
    RETURNING client_order_id, id
    """
)


def paper_order_insert_batch(
    conn: Connection, exchange: str, orders: Sequence[PaperOrderRow]
) -> dict[str, int]:
    """Insert a batch in one statement; returns ``client_order_id -> id`` of the rows written.

    An id already present, tombstones included, is skipped and its row left
    untouched: it is missing from the result.
    """
    params = {"exchange": exchange, **_arrays(PaperOrderRow, orders)}
    return {coid: order_id for coid, order_id in conn.execute(_PAPER_ORDER_INSERT_BATCH, params)}


@dataclass(frozen=True, slots=True)
class PaperOrderState:
    """An order as the account holds it: what a fetch or a cancel answers."""

    id: int
    client_order_id: str
    status: str
    filled_quantity: Decimal
    avg_price: Decimal | None  # None when nothing filled
    fee_usd: Decimal
    error: str | None


_PAPER_ORDER_STATE = _columns(PaperOrderState)

_PAPER_ORDER_CANCEL = text(
    f"""
    WITH cancelled AS (
        INSERT INTO paper_orders AS p (exchange, client_order_id, status, error)
        VALUES (CAST(:exchange AS text), CAST(:client_order_id AS text), 'cancelled',
                CAST(:tombstone_error AS text))
        ON CONFLICT (exchange, client_order_id) DO UPDATE SET
            status = CASE WHEN p.filled_quantity > 0 THEN 'partially_filled'
                          ELSE 'cancelled' END,
            updated_at = now()
        WHERE p.status = 'open'
        RETURNING {_columns(PaperOrderState, "p")}
    )
    SELECT {_PAPER_ORDER_STATE} FROM cancelled
    UNION ALL
    SELECT {_PAPER_ORDER_STATE}
    FROM paper_orders
    WHERE exchange = CAST(:exchange AS text) AND client_order_id = CAST(:client_order_id AS text)
      AND NOT EXISTS (SELECT FROM cancelled)
    """
)


def paper_order_cancel(
    conn: Connection, exchange: str, client_order_id: str, *, tombstone_error: str
) -> PaperOrderState | None:
    """Cancel an open order, tombstone an unseen id, or read a done order as is.

    One statement.  ``None`` only in a race: the id was inserted concurrently
    after this statement's snapshot (the caller runs it again).
    """
    row = conn.execute(
        _PAPER_ORDER_CANCEL,
        {
            "exchange": exchange,
            "client_order_id": client_order_id,
            "tombstone_error": tombstone_error,
        },
    ).first()
    return None if row is None else PaperOrderState(*row)


def paper_exchange_lock(conn: Connection, exchange: str) -> None:
    """Serialise reduce-only batches on one paper account until the transaction ends.

    Its own statement, before the position read: under READ COMMITTED the read
    must take its snapshot after the lock is granted.  The two-key form keeps
    clear of the scheduler's single-bigint advisory lock.
    """
    conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('perpbot.paper'), hashtext(:exchange))"),
        {"exchange": exchange},
    )


# -- orders: reads ---------------------------------------------------------------

_PAPER_ORDER_FETCH = text(
    f"""
    SELECT {_PAPER_ORDER_STATE}
    FROM paper_orders
    WHERE exchange = CAST(:exchange AS text)
      AND client_order_id = ANY(CAST(:client_order_ids AS text[]))
    """
)


def paper_order_fetch(
    conn: Connection, exchange: str, client_order_ids: Sequence[str]
) -> list[PaperOrderState]:
    """The orders among ``client_order_ids`` the account holds (tombstones included)."""
    rows = conn.execute(
        _PAPER_ORDER_FETCH, {"exchange": exchange, "client_order_ids": list(client_order_ids)}
    )
    return [PaperOrderState(*row) for row in rows]


_SIGNED_FILLED = "CASE side WHEN 'buy' THEN filled_quantity ELSE -filled_quantity END"

_PAPER_ORDER_PRECHECK = text(
    f"""
    SELECT 'position' AS kind, symbol AS key, sum({_SIGNED_FILLED}) AS net
    FROM paper_orders
    WHERE exchange = CAST(:exchange AS text) AND symbol = ANY(CAST(:symbols AS text[]))
      AND filled_quantity > 0
    GROUP BY symbol
    UNION ALL
    SELECT 'known', client_order_id, NULL
    FROM paper_orders
    WHERE exchange = CAST(:exchange AS text)
      AND client_order_id = ANY(CAST(:client_order_ids AS text[]))
    """
)


def paper_order_precheck(
    conn: Connection, exchange: str, symbols: Sequence[str], client_order_ids: Sequence[str]
) -> tuple[dict[str, Decimal], set[str]]:
    """For a batch with reduce-only orders, in one query: the net positions of ``symbols``
    and which of ``client_order_ids`` the account already holds (those will not fill)."""
    positions: dict[str, Decimal] = {}
    known: set[str] = set()
    rows = conn.execute(
        _PAPER_ORDER_PRECHECK,
        {
            "exchange": exchange,
            "symbols": list(symbols),
            "client_order_ids": list(client_order_ids),
        },
    )
    for kind, key, net in rows:
        if kind == "position":
            positions[key] = net
        else:
            known.add(key)
    return positions, known


_PAPER_POSITION_BY_SYMBOL = text(
    f"""
    SELECT symbol, sum({_SIGNED_FILLED}) AS net
    FROM paper_orders
    WHERE exchange = CAST(:exchange AS text) AND filled_quantity > 0
    GROUP BY symbol
    HAVING sum({_SIGNED_FILLED}) <> 0
    """
)


def paper_position_by_symbol(conn: Connection, exchange: str) -> dict[str, Decimal]:
    """Signed net filled quantity per symbol (long +); flat symbols are left out."""
    rows = conn.execute(_PAPER_POSITION_BY_SYMBOL, {"exchange": exchange})
    return {symbol: net for symbol, net in rows}


@dataclass(frozen=True, slots=True)
class PaperFill:
    """One order's fill: only orders that filled something, and those always have a
    symbol, a side and a price."""

    symbol: str
    side: str
    filled_quantity: Decimal
    avg_price: Decimal
    fee_usd: Decimal


_PAPER_FILL_LIST = text(
    f"""
    SELECT {_columns(PaperFill)}
    FROM paper_orders
    WHERE exchange = CAST(:exchange AS text) AND filled_quantity > 0
    ORDER BY id
    """
)


def paper_fill_list(conn: Connection, exchange: str) -> list[PaperFill]:
    """Every fill of the account in the order it happened."""
    return [PaperFill(*row) for row in conn.execute(_PAPER_FILL_LIST, {"exchange": exchange})]


def paper_starting_equity(conn: Connection, exchange: str) -> Decimal | None:
    """The account's starting equity from ``exchanges`` (``None``: no such exchange)."""
    value: Decimal | None = conn.execute(
        text("SELECT starting_equity_usd FROM exchanges WHERE name = :exchange"),
        {"exchange": exchange},
    ).scalar_one_or_none()
    return value
