"""The exchange adapter interface: what a worker may ask of a venue, and nothing more.

Design note.  The contract is shaped after ccxt's unified API so that a ccxt
adapter fits without bending it (``create_order(symbol, 'market', side,
amount, params={'clientOrderId': ..., 'reduceOnly': ...})``, ``create_orders``,
``fetch_order``, ``cancel_order``, ``fetch_positions``, ``fetch_balance``),
and everything is keyed by the *client* order id, which the worker chooses
and stores before sending.  That is what makes recovery safe (DESIGN.md: a
worker never re-sends a leg whose client order id the exchange may have
seen; after a crash it asks the exchange first):

* ``create_orders`` answers every order, aligned with the requests.  ``None``
  means *no answer* (a timeout): the order may or may not exist, so the
  caller must ``fetch_orders`` it before doing anything else with that id.
  A refusal is an answer: an ``OrderState`` with status ``rejected`` and an
  ``error`` saying why.
* ``cancel_order`` on an id the venue has never seen *tombstones* it, so an
  order with that id that arrives late (a slow network) is refused instead
  of filling behind the worker's back.
* ``ExchangeUnavailable`` is the one exception with a promise attached:
  nothing was sent.  Any other failure after sending is reported as ``None``
  answers, never as an exception that would hide whether orders went out.
* Every order the worker sends carries an **expiry** (``expires_at``): a
  request that reaches the venue later is refused there and never becomes an
  order.  The worker sets it right after its lease fence
  (:func:`perpbot_db.store.attempts.fence`): the database clock at the
  fence plus a window no longer than the lease left, so no order of a job
  can be accepted once its lease has run out and recovery may have taken the
  job over, whatever a slow network or a paused process does to the request.
  A ccxt adapter maps it onto the venue's own field when it signs the
  request: binance and bybit ``recvWindow`` (ms: ``expires_at`` minus the
  request's ``timestamp``; binance allows at most 60 000), okx the
  ``expTime`` header (``expires_at`` in unix ms).  A request whose window is
  gone before it is signed is not sent but answered as refused (``rejected``,
  error starting with ``EXPIRED``).  Venues check the expiry at the gateway,
  before any order exists, so that refusal does not use the id up.  The
  expiry is also how such an adapter keeps the tombstone promise above on a
  venue that forgets ids: an id the venue has not seen once the expiry of
  every request sent with it has passed can never be seen.

Quantities and prices are ``Decimal``; no float touches money.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable


class OrderStatus(StrEnum):
    OPEN = "open"
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"  # done: part filled, the rest cancelled
    REJECTED = "rejected"
    CANCELLED = "cancelled"  # done, nothing filled (or a tombstone)


ORDER_SIDES = frozenset({"buy", "sell"})

#: How the error of a request refused for arriving past ``expires_at`` starts.
EXPIRED = "expired:"


class ExchangeError(Exception):
    """Base class of the adapters' exceptions."""


class ExchangeUnavailable(ExchangeError):
    """The venue could not even be reached.

    From ``create_orders``: nothing was sent, so sending again is safe.  From
    reads and ``cancel_order`` (idempotent by client order id): try again.
    """


@dataclass(frozen=True)
class OrderRequest:
    """One order as the worker sends it; ``client_order_id`` is the worker's key.

    ``expires_at`` (timezone-aware): the venue refuses the request if it
    arrives later (see the module's design note); ``None``: no expiry, for
    tests and tools only, the worker always sets one.
    """

    client_order_id: str
    symbol: str
    side: str  # 'buy' | 'sell'
    quantity: Decimal
    reduce_only: bool = False
    type: str = "market"
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        # Malformed requests are programming errors, refused before anything is sent.
        if not self.client_order_id:
            raise ValueError("client_order_id must not be empty")
        if self.side not in ORDER_SIDES:
            raise ValueError(f"side must be 'buy' or 'sell', not {self.side!r}")
        if not isinstance(self.quantity, Decimal):
            raise TypeError(f"quantity must be a Decimal, not {type(self.quantity).__name__}")
        if not self.quantity.is_finite() or self.quantity <= 0:
            raise ValueError(f"quantity must be positive and finite, not {self.quantity}")
        if self.expires_at is not None and (
            not isinstance(self.expires_at, datetime) or self.expires_at.utcoffset() is None
        ):
            raise ValueError(
                f"expires_at must be a timezone-aware datetime, not {self.expires_at!r}"
            )

    @property
    def signed_quantity(self) -> Decimal:
        """The position change if filled in full (long +)."""
        return self.quantity if self.side == "buy" else -self.quantity


@dataclass(frozen=True)
class OrderState:
    """What the venue says about one order."""

    client_order_id: str
    status: str  # an OrderStatus value
    filled: Decimal
    average: Decimal | None  # average fill price; None when nothing filled
    fee_usd: Decimal
    exchange_order_id: str | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """No longer open: ``filled`` is final."""
        return self.status != OrderStatus.OPEN


@runtime_checkable
class ExchangeAdapter(Protocol):
    """One account on one venue."""

    name: str

    def create_orders(self, orders: Sequence[OrderRequest]) -> list[OrderState | None]:
        """Send the orders (in parallel); answers aligned with ``orders``.

        ``None``: no answer (timeout): the order may or may not exist; fetch it
        before anything else.  A refusal (insufficient position for reduce-only,
        duplicate client order id, random rejection, no market data, arrived
        past ``expires_at``) is an ``OrderState`` with status ``rejected`` and
        ``error`` saying why; an expired request leaves no order behind.
        Raises ``ExchangeUnavailable`` only when nothing was sent.
        """
        ...

    def fetch_orders(self, client_order_ids: Sequence[str]) -> dict[str, OrderState | None]:
        """Every asked id mapped to its state, ``None`` when the venue never saw it."""
        ...

    def cancel_order(self, client_order_id: str) -> OrderState:
        """Cancel if open; a done order is returned as is; an unseen id is tombstoned."""
        ...

    def positions(self) -> dict[str, Decimal]:
        """Symbol -> signed net filled quantity (long +); flat symbols are left out."""
        ...

    def balance(self) -> Decimal:
        """The account's USD wallet balance (each adapter documents its definition)."""
        ...
