"""Leg reads that an exchange adapter needs: which symbol a client order id trades.

A venue such as binance or okx looks an order up by client order id *and*
symbol, while the adapter interface asks by id alone (the id is the worker's
key).  Every order the worker sends is a ``legs`` row written before it goes
out, so the symbol is always here, whichever process sent the order.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

LEG_SYMBOLS = text(
    """
    SELECT client_order_id, symbol FROM legs_all
    WHERE client_order_id = ANY(CAST(:ids AS text[]))
    """
)


def leg_symbols(conn: Connection, client_order_ids: Sequence[str]) -> dict[str, str]:
    """Client order id -> symbol for the ids that name a leg (live or archived)."""
    if not client_order_ids:
        return {}
    rows = conn.execute(LEG_SYMBOLS, {"ids": list(client_order_ids)})
    return {str(coid): str(symbol) for coid, symbol in rows}
