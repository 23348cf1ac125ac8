"""A real venue through ccxt: binance USDⓈ-M, okx and bybit perpetual swaps.

Design note (the interface's promises are in :mod:`workers.venues.exchange`):

* **Ids.**  Every order carries the worker's client order id in the venue's
  own field (:mod:`workers.venues.ccxt_ids`), so ccxt never generates one,
  and every lookup and cancel is by that id.  binance and okx also need the
  symbol: the adapter remembers the symbol of each order it sent and asks
  ``symbol_of`` (the ``legs`` table, :func:`perpbot_db.store.legs.leg_symbols`)
  for ids another process sent.  bybit's generic ``fetch_order`` would send an
  empty order id, so it is asked with its open-orders query and then its
  history, both filtered by ``orderLinkId``.
* **Expiry.**  A request whose ``expires_at`` has passed is not sent and is
  answered ``rejected`` with an error starting ``expired:``; otherwise the
  expiry rides down to the signer (:mod:`workers.venues.ccxt_venues`) as the
  venue's own window, so a request delayed past it is refused at the gateway.
* **Errors** are sorted by :mod:`workers.venues.ccxt_errors`: a refusal is a
  ``rejected`` answer; a timeout, a network failure, a bad response or a
  duplicate client id is ``None`` (no answer) and the worker asks by id
  before anything else.  ``cancel_order`` on an id the venue does not know
  answers a tombstone once every request sent with that id has expired (the
  venue can no longer accept it); before that it waits for the expiry.
* **Amounts.**  The worker's quantities are in the base asset; venues trade
  contracts of ``contractSize`` base units (okx BTC-USDT-SWAP: 0.01 BTC).  A
  quantity that is not a whole number of the market's amount step is refused
  before sending, never rounded: rounding would leave a hedge unequal.
  ccxt takes amounts as floats; the adapter passes the exact step multiple.
* **Orders one at a time.**  ``create_orders`` sends a batch's orders in turn
  (one ccxt instance per account; the executor already runs exchanges in
  parallel) and ccxt's rate limiter spaces them.

Fees are the order's own fee where the venue reports it (okx, bybit) and the
sum of the order's trades otherwise (binance), counted when charged in a USD
stablecoin.  ``balance`` is the settle currency's total in ccxt's balance.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt

from perpbot_db.domain.clock import Clock
from workers.venues import ccxt_errors
from workers.venues.ccxt_context import keeps_decimal_context
from workers.venues.ccxt_errors import Placement
from workers.venues.ccxt_ids import rule_for, venue_client_id
from workers.venues.ccxt_venues import EXPIRY_PARAM
from workers.venues.exchange import (
    EXPIRED,
    ExchangeError,
    ExchangeUnavailable,
    OrderRequest,
    OrderState,
    OrderStatus,
)

log = logging.getLogger(__name__)

USD_LIKE = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD"})
TOMBSTONE = "tombstone: the venue never saw this id and its requests have expired"
ZERO = Decimal(0)

SymbolLookup = Callable[[Sequence[str]], Mapping[str, str]]


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class CcxtAdapter:
    """One account on one ccxt venue (an :class:`~workers.venues.exchange.ExchangeAdapter`)."""

    def __init__(
        self,
        name: str,
        exchange: Any,
        *,
        clock: Clock,
        symbol_of: SymbolLookup,
        secrets: Sequence[str] = (),
        settle: str = "USDT",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self.ccxt_id: str = exchange.id
        self.id_rule = rule_for(self.ccxt_id)
        self.clock = clock
        self.symbol_of = symbol_of
        self.secrets = tuple(secrets)
        self.settle = settle
        self.sleep = sleep
        # client order id -> (symbol, latest expiry of a request sent with it)
        self._sent: dict[str, tuple[str, datetime | None]] = {}

    def __repr__(self) -> str:
        return f"CcxtAdapter({self.name!r}, {self.ccxt_id!r})"

    # -- helpers ----------------------------------------------------------------------

    def _describe(self, exc: Exception) -> str:
        return ccxt_errors.describe(exc, self.secrets)

    def _rejected(self, coid: str, error: str) -> OrderState:
        return OrderState(coid, OrderStatus.REJECTED, ZERO, None, ZERO, error=error)

    def _market(self, symbol: str) -> dict[str, Any]:
        market: dict[str, Any] = self.exchange.market(symbol)
        return market

    def _contract_size(self, market: Mapping[str, Any]) -> Decimal:
        return _dec(market.get("contractSize")) or Decimal(1)

    @keeps_decimal_context
    def contracts_of(self, quantity: Decimal, market: Mapping[str, Any]) -> Decimal:
        """Base quantity -> contracts; ``ValueError`` unless a whole number of amount steps."""
        size = self._contract_size(market)
        contracts = quantity / size
        step = _dec((market.get("precision") or {}).get("amount"))
        if step is not None and step > 0 and contracts % step != 0:
            raise ValueError(
                f"quantity {quantity} is {contracts} contracts of {size}, not a multiple "
                f"of the amount step {step}"
            )
        minimum = _dec(((market.get("limits") or {}).get("amount") or {}).get("min"))
        if minimum is not None and contracts < minimum:
            raise ValueError(f"quantity {quantity} is below the minimum of {minimum} contracts")
        return contracts

    def _fee_usd(self, order: Mapping[str, Any]) -> Decimal | None:
        """The fee ccxt parsed, in USD stablecoins; None when the order does not carry one."""
        fees = [
            f for f in (order.get("fees") or [order.get("fee")]) if f and f.get("cost") is not None
        ]
        if not fees:
            info = order.get("info") or {}
            if self.ccxt_id == "bybit" and info.get("cumExecFee") not in (None, ""):
                return _dec(info["cumExecFee"])  # linear: charged in the settle coin
            return None
        total = ZERO
        for fee in fees:
            cost = _dec(fee.get("cost"))
            if cost is not None and fee.get("currency") in USD_LIKE:
                total += cost
        return total

    def _trade_fees(self, order: Mapping[str, Any], symbol: str) -> Decimal:
        """binance reports no fee on the order: the sum over the order's trades."""
        order_id = order.get("id")
        try:
            trades = self.exchange.fetch_my_trades(symbol, None, None, {"orderId": order_id})
        except ccxt.BaseError as exc:
            log.warning(
                "%s: fees of order %s unknown: %s", self.name, order_id, self._describe(exc)
            )
            return ZERO
        ours = [t for t in trades if str(t.get("order")) == str(order_id)]
        return sum((self._fee_usd(t) or ZERO for t in ours), ZERO)

    def _state(self, coid: str, order: Mapping[str, Any], symbol: str) -> OrderState:
        market = self._market(symbol)
        size = self._contract_size(market)
        filled = (_dec(order.get("filled")) or ZERO) * size
        amount = _dec(order.get("amount"))
        raw = order.get("status")
        if raw == "closed":
            full = amount is None or filled >= amount * size
            status = OrderStatus.FILLED if full else OrderStatus.PARTIALLY_FILLED
        elif raw in ("canceled", "cancelled", "expired"):
            status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.CANCELLED
        elif raw == "rejected":
            status = OrderStatus.REJECTED
        else:  # 'open', or None: an acknowledgement that says nothing of the fill yet
            status = OrderStatus.OPEN
        average = _dec(order.get("average")) if filled > 0 else None
        fee = self._fee_usd(order)
        if fee is None:
            fee = (
                self._trade_fees(order, symbol)
                if filled > 0 and status != OrderStatus.OPEN
                else ZERO
            )
        order_id = order.get("id")
        return OrderState(
            coid,
            status,
            filled,
            average,
            fee,
            exchange_order_id=str(order_id) if order_id else None,
        )

    # -- orders -----------------------------------------------------------------------

    @keeps_decimal_context
    def load_markets(self) -> None:
        """The venue's markets (contract sizes, steps), once; ``ExchangeUnavailable`` if
        they cannot be read (then nothing was sent)."""
        if not self.exchange.markets:
            self._read(lambda: self.exchange.load_markets())

    @keeps_decimal_context
    def create_orders(self, orders: Sequence[OrderRequest]) -> list[OrderState | None]:
        """Every order goes out before any answer is read further (binance's fee lookup
        costs five of its rate-limit units and would hold back the next leg)."""
        self.load_markets()
        sent = [self._create(order) for order in orders]
        return [self._state(*answer) if isinstance(answer, tuple) else answer for answer in sent]

    def _create(self, req: OrderRequest) -> OrderState | tuple[str, dict[str, Any], str] | None:
        """A refusal, ``None`` (no answer) or the venue's order to read: (id, order, symbol)."""
        coid = req.client_order_id
        now = self.clock.now()
        if req.expires_at is not None and req.expires_at <= now:
            return self._rejected(
                coid,
                f"{EXPIRED} not sent: expired at {req.expires_at.isoformat()}, "
                f"now {now.isoformat()}",
            )
        if req.type != "market":
            return self._rejected(coid, f"order type {req.type!r} not supported (market only)")
        try:
            venue_id = venue_client_id(self.ccxt_id, coid)
            market = self._market(req.symbol)
            contracts = self.contracts_of(req.quantity, market)
        except (ValueError, ccxt.BadSymbol) as exc:
            return self._rejected(
                coid, self._describe(exc) if isinstance(exc, ccxt.BaseError) else str(exc)
            )
        params: dict[str, Any] = {self.id_rule.field: venue_id, "reduceOnly": req.reduce_only}
        if req.expires_at is not None:
            params[EXPIRY_PARAM] = _ms(req.expires_at)
        if self.ccxt_id == "binanceusdm":
            params["newOrderRespType"] = "RESULT"  # the fill in the answer, not just "NEW"
        previous = self._sent.get(coid, (req.symbol, None))[1]
        latest = max((t for t in (previous, req.expires_at) if t is not None), default=None)
        self._sent[coid] = (req.symbol, latest)
        try:
            order = self.exchange.create_order(
                req.symbol, "market", req.side, float(contracts), None, params
            )
        except ccxt.BaseError as exc:
            return self._after_error(coid, exc)
        return coid, dict(order), req.symbol

    def _after_error(self, coid: str, exc: Exception) -> OrderState | None:
        sort = ccxt_errors.placement(self.ccxt_id, exc)
        text = self._describe(exc)
        if sort is Placement.EXPIRED:
            return self._rejected(coid, f"{EXPIRED} refused for its window: {text}")
        if sort is Placement.NOT_PLACED:
            return self._rejected(coid, text)
        log.warning("%s: order %s may have been placed (%s): %s", self.name, coid, sort, text)
        return None

    # -- lookups ----------------------------------------------------------------------

    def _symbols(self, ids: Sequence[str]) -> dict[str, str]:
        known = {coid: self._sent[coid][0] for coid in ids if coid in self._sent}
        missing = [coid for coid in ids if coid not in known]
        if missing:
            known.update(self.symbol_of(missing))
        return known

    def _find(self, coid: str, symbol: str) -> dict[str, Any] | None:
        """The venue's order for ``coid``, or None when it does not know the id."""
        venue_id = venue_client_id(self.ccxt_id, coid)
        field = self.id_rule.field
        ex = self.exchange
        try:
            if self.ccxt_id == "binanceusdm":
                return dict(ex.fetch_order(None, symbol, {"origClientOrderId": venue_id}))
            if self.ccxt_id == "okx":
                return dict(ex.fetch_order(None, symbol, {"clOrdId": venue_id}))
            # bybit: its fetch_order / fetch_open_order send an empty order id; ask the open
            # orders, then the history (filled and cancelled), filtered by orderLinkId only
            query = {field: venue_id}
            for listing in (ex.fetch_open_orders, ex.fetch_canceled_and_closed_orders):
                found = [o for o in listing(symbol, None, None, dict(query))
                         if o.get("clientOrderId") == venue_id]  # fmt: skip
                if found:
                    return dict(found[0])
            return None
        except ccxt.OrderNotFound:
            return None

    def _read(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except ccxt.NetworkError as exc:
            raise ExchangeUnavailable(f"{self.name}: {self._describe(exc)}") from None
        except ccxt.BaseError as exc:
            raise ExchangeError(f"{self.name}: {self._describe(exc)}") from None

    @keeps_decimal_context
    def fetch_orders(self, client_order_ids: Sequence[str]) -> dict[str, OrderState | None]:
        self.load_markets()
        symbols = self._symbols(client_order_ids)
        out: dict[str, OrderState | None] = {}
        for coid in client_order_ids:
            symbol = symbols.get(coid)
            if symbol is None:  # no leg of that id: never sent by any worker
                out[coid] = None
                continue
            order = self._read(functools.partial(self._find, coid, symbol))
            out[coid] = None if order is None else self._state(coid, order, symbol)
        return out

    @keeps_decimal_context
    def cancel_order(self, client_order_id: str) -> OrderState:
        coid = client_order_id
        self.load_markets()
        symbol = self._symbols([coid]).get(coid)
        if symbol is None:  # no leg, never sent by this or any worker
            return OrderState(coid, OrderStatus.CANCELLED, ZERO, None, ZERO, error=TOMBSTONE)
        order = self._read(lambda: self._find(coid, symbol))
        if order is not None and order.get("status") in (None, "open"):
            field = {"binanceusdm": "origClientOrderId"}.get(self.ccxt_id, self.id_rule.field)
            params = {field: venue_client_id(self.ccxt_id, coid)}
            try:
                self._read(lambda: self.exchange.cancel_order(None, symbol, params))
            except ExchangeError as exc:  # filled or cancelled meanwhile: the read below says
                log.info("%s: cancel %s: %s", self.name, coid, exc)
            order = self._read(lambda: self._find(coid, symbol))
        if order is None:
            expiry = self._sent.get(coid, (symbol, None))[1]
            wait = 0.0 if expiry is None else (expiry - self.clock.now()).total_seconds()
            if wait > 0:  # a request may still arrive: let its window close, then ask again
                self.sleep(wait + 0.05)
                order = self._read(lambda: self._find(coid, symbol))
        if order is None:
            return OrderState(coid, OrderStatus.CANCELLED, ZERO, None, ZERO, error=TOMBSTONE)
        return self._state(coid, order, symbol)

    # -- account ----------------------------------------------------------------------

    @keeps_decimal_context
    def positions(self) -> dict[str, Decimal]:
        self.load_markets()
        rows = self._read(lambda: self.exchange.fetch_positions())
        out: dict[str, Decimal] = {}
        for row in rows:
            contracts = _dec(row.get("contracts")) or ZERO
            if contracts == 0:
                continue
            symbol = str(row["symbol"])
            size = _dec(row.get("contractSize")) or self._contract_size(self._market(symbol))
            sign = -1 if row.get("side") == "short" else 1
            out[symbol] = out.get(symbol, ZERO) + sign * abs(contracts) * size
        return {s: q for s, q in out.items() if q != 0}

    @keeps_decimal_context
    def balance(self) -> Decimal:
        data = self._read(lambda: self.exchange.fetch_balance())
        total = (data.get("total") or {}).get(self.settle)
        return _dec(total) or ZERO
