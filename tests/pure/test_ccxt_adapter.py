"""The ccxt adapter against stubbed binance USDⓈ-M, okx and bybit answers, offline.

Markets come from fixtures (``set_markets``); the HTTP session is stubbed, so
ccxt builds, signs and parses every request for real (tests/ccxt_fakes.py).
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, Underflow, getcontext, localcontext
from typing import Any

import ccxt
import pytest
from pydantic import SecretStr

from perpbot_db.domain.clock import WallClock
from tests.ccxt_fakes import MARKETS, Call, FakeSession, timeout
from workers.venues.ccxt_adapter import TOMBSTONE, CcxtAdapter
from workers.venues.ccxt_venues import VenueKeys, make_exchange
from workers.venues.exchange import EXPIRED, ExchangeAdapter, OrderRequest, OrderStatus

KEY, SECRET, PASSWORD = "k3y-AAAA-never-printed", "s3cret-BBBB-never-printed", "pa55-CCCC"
BTC = "BTC/USDT:USDT"
NOW_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Venue:
    """One venue's wire format: where orders go and what the answers look like."""

    ccxt_id: str
    create: str  # route regex of order placement
    query: str  # route regex of the order lookup(s)
    cancel: str
    positions: str
    balance: str
    id_field: str

    def sent_id(self, call: Call) -> str:
        fields = call.json or call.form or call.query
        if isinstance(fields, list):
            fields = fields[0]
        return str(fields[self.id_field])


BINANCE = Venue(
    "binanceusdm",
    r"POST /fapi/v1/order",
    r"GET /fapi/v1/order",
    r"DELETE /fapi/v1/order",
    r"GET /fapi/v\d/positionRisk",
    r"GET /fapi/v\d/(balance|account)",
    "newClientOrderId",
)
OKX = Venue(
    "okx",
    r"POST /api/v5/trade/order",
    r"GET /api/v5/trade/order",
    r"POST /api/v5/trade/cancel-order",
    r"GET /api/v5/account/positions",
    r"GET /api/v5/account/balance",
    "clOrdId",
)
BYBIT = Venue(
    "bybit",
    r"POST /v5/order/create",
    r"GET /v5/order/(realtime|history)",
    r"POST /v5/order/cancel",
    r"GET /v5/position/list",
    r"GET /v5/account/wallet-balance",
    "orderLinkId",
)
VENUES = {v.ccxt_id: v for v in (BINANCE, OKX, BYBIT)}

# -- canned answers -------------------------------------------------------------------


def order_body(venue: Venue, coid: str, *, status: str, filled: str) -> Any:
    """The venue's order record; ``filled`` in the venue's amount unit."""
    if venue is BINANCE:
        return {
            "orderId": 123,
            "symbol": "BTCUSDT",
            "status": status,
            "clientOrderId": coid,
            "price": "0",
            "avgPrice": "50000.0" if filled != "0" else "0",
            "origQty": "0.010",
            "executedQty": filled,
            "cumQuote": "500",
            "timeInForce": "GTC",
            "type": "MARKET",
            "reduceOnly": False,
            "side": "BUY",
            "positionSide": "BOTH",
            "updateTime": NOW_MS,
        }
    if venue is OKX:
        return {
            "code": "0",
            "msg": "",
            "data": [
                {
                    "instType": "SWAP",
                    "instId": "BTC-USDT-SWAP",
                    "ordId": "555",
                    "clOrdId": coid,
                    "px": "",
                    "sz": "1",
                    "ordType": "market",
                    "side": "buy",
                    "posSide": "net",
                    "tdMode": "cross",
                    "accFillSz": filled,
                    "avgPx": "50000" if filled != "0" else "",
                    "state": status,
                    "fee": "-0.25",
                    "feeCcy": "USDT",
                    "reduceOnly": "false",
                    "cTime": str(NOW_MS),
                    "uTime": str(NOW_MS),
                }
            ],
        }
    return {"retCode": 0, "retMsg": "OK", "time": NOW_MS, "result": {"category": "linear",
        "nextPageCursor": "", "list": [{
            "orderId": "777", "orderLinkId": coid, "symbol": "BTCUSDT", "side": "Buy",
            "orderType": "Market", "price": "50100", "qty": "0.01", "orderStatus": status,
            "avgPrice": "50000" if filled != "0" else "", "cumExecQty": filled,
            "cumExecValue": "500", "cumExecFee": "0.3", "timeInForce": "IOC",
            "reduceOnly": False, "createdTime": str(NOW_MS), "updatedTime": str(NOW_MS),
            "positionIdx": 0,
        }]}}  # fmt: skip


FILLED = {"binanceusdm": ("FILLED", "0.010"), "okx": ("filled", "1"), "bybit": ("Filled", "0.01")}
OPEN = {"binanceusdm": ("NEW", "0"), "okx": ("live", "0"), "bybit": ("New", "0")}


def ack(venue: Venue, coid: str) -> Any:
    if venue is BINANCE:
        return order_body(venue, coid, status="FILLED", filled="0.010")
    if venue is OKX:
        return {
            "code": "0",
            "msg": "",
            "data": [{"clOrdId": coid, "ordId": "555", "sCode": "0", "sMsg": "", "tag": ""}],
        }
    return {"retCode": 0, "retMsg": "OK", "time": NOW_MS,
            "result": {"orderId": "777", "orderLinkId": coid}}  # fmt: skip


def duplicate(venue: Venue, coid: str) -> tuple[int, Any]:
    if venue is BINANCE:
        return 400, {"code": -4116, "msg": "ClientOrderId is duplicated."}
    if venue is OKX:
        return 200, {
            "code": "1",
            "msg": "Operation failed.",
            "data": [
                {"clOrdId": coid, "ordId": "", "sCode": "51016", "sMsg": "Duplicated clOrdId"}
            ],
        }
    return 200, {"retCode": 110072, "retMsg": "OrderLinkedID is duplicate", "result": {},
                 "time": NOW_MS}  # fmt: skip


def insufficient(venue: Venue, coid: str) -> tuple[int, Any]:
    if venue is BINANCE:
        return 400, {"code": -2019, "msg": "Margin is insufficient."}
    if venue is OKX:
        return 200, {
            "code": "1",
            "msg": "Operation failed.",
            "data": [
                {"clOrdId": coid, "ordId": "", "sCode": "51008", "sMsg": "Insufficient balance"}
            ],
        }
    return 200, {"retCode": 110007, "retMsg": "ab not enough for new order", "result": {},
                 "time": NOW_MS}  # fmt: skip


def not_found(venue: Venue) -> tuple[int, Any]:
    if venue is BINANCE:
        return 400, {"code": -2013, "msg": "Order does not exist."}
    if venue is OKX:
        return 200, {"code": "51603", "msg": "Order does not exist", "data": []}
    return 200, {"retCode": 0, "retMsg": "OK", "time": NOW_MS,
                 "result": {"category": "linear", "list": [], "nextPageCursor": ""}}  # fmt: skip


# -- the harness ----------------------------------------------------------------------


@dataclass
class Rig:
    venue: Venue
    adapter: CcxtAdapter
    session: FakeSession
    symbols: dict[str, str]

    def route(self, pattern: str, handler: Callable[[Call], tuple[int, Any]]) -> None:
        self.session.route(pattern, handler)

    def filled_order(self, call: Call) -> tuple[int, Any]:
        coid = call.query.get(self.venue.id_field) or call.query.get("origClientOrderId")
        assert coid is not None, call.url
        return 200, order_body(self.venue, coid, status=FILLED[self.venue.ccxt_id][0],
                               filled=FILLED[self.venue.ccxt_id][1])  # fmt: skip


def rig(ccxt_id: str) -> Rig:
    venue = VENUES[ccxt_id]
    keys = VenueKeys(SecretStr(KEY), SecretStr(SECRET), SecretStr(PASSWORD))
    exchange = make_exchange(ccxt_id, "demo", keys)
    exchange.set_markets(MARKETS[ccxt_id])
    session = FakeSession()
    exchange.session = session
    symbols: dict[str, str] = {}
    adapter = CcxtAdapter(
        ccxt_id, exchange, clock=WallClock(),
        symbol_of=lambda ids: {i: symbols[i] for i in ids if i in symbols},
        secrets=keys.values(), sleep=lambda s: None,
    )  # fmt: skip
    r = Rig(venue, adapter, session, symbols)
    r.route(venue.query, lambda c: not_found(venue))
    if venue is BINANCE:
        r.route(r"GET /fapi/v1/userTrades", lambda c: (200, [{
            "symbol": "BTCUSDT", "id": 1, "orderId": 123, "side": "BUY", "price": "50000",
            "qty": "0.010", "commission": "0.2", "commissionAsset": "USDT", "time": NOW_MS,
            "buyer": True, "maker": False, "realizedPnl": "0", "quoteQty": "500",
            "positionSide": "BOTH"}]))  # fmt: skip
    return r


def request(coid: str = "pb1L0A1", qty: str = "0.01", expires_in: float | None = 5.0,
            reduce_only: bool = False) -> OrderRequest:  # fmt: skip
    expires = None if expires_in is None else datetime.now(UTC) + timedelta(seconds=expires_in)
    return OrderRequest(coid, BTC, "buy", Decimal(qty), reduce_only=reduce_only, expires_at=expires)


ALL = pytest.mark.parametrize("ccxt_id", ["binanceusdm", "okx", "bybit"])


@ALL
def test_the_adapter_is_an_exchange_adapter(ccxt_id: str) -> None:
    assert isinstance(rig(ccxt_id).adapter, ExchangeAdapter)


@ALL
def test_create_sends_the_worker_id_in_the_venue_field_with_the_expiry(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.create, lambda c: (200, ack(r.venue, r.venue.sent_id(c))))
    r.route(r.venue.query, r.filled_order)
    req = request(reduce_only=True)
    (state,) = r.adapter.create_orders([req])
    (sent,) = r.session.sent(r.venue.create)
    assert r.venue.sent_id(sent) == "pb1L0A1"
    assert req.expires_at is not None
    expires_ms = int(req.expires_at.timestamp() * 1000)
    if ccxt_id == "okx":
        assert sent.headers["expTime"] == str(expires_ms)
        assert sent.headers["x-simulated-trading"] == "1"
        assert sent.json["sz"] == "1"  # 0.01 BTC = one contract of 0.01
        assert sent.json["reduceOnly"] is True
    elif ccxt_id == "binanceusdm":
        form = sent.form
        assert int(form["timestamp"]) + int(form["recvWindow"]) == expires_ms
        assert form["reduceOnly"] == "true" and form["quantity"] == "0.01"
        assert sent.url.startswith("https://demo-fapi.binance.com/")
    else:
        window = int(sent.headers["X-BAPI-RECV-WINDOW"])
        assert int(sent.headers["X-BAPI-TIMESTAMP"]) + window == expires_ms
        assert sent.json["reduceOnly"] is True and sent.json["qty"] == "0.01"
        assert sent.url.startswith("https://api-demo.bybit.com/")
    assert "perpbotExpiresAtMs" not in (sent.body or "") + sent.url
    # the answer, or the lookup that follows an acknowledgement, is the fill in base units
    states = r.adapter.fetch_orders(["pb1L0A1"])
    for s in (states["pb1L0A1"], state if state and state.done else states["pb1L0A1"]):
        assert s is not None and s.status == OrderStatus.FILLED
        assert s.filled == Decimal("0.01") and s.average == Decimal(50000)
        assert s.fee_usd > 0


@ALL
def test_expired_request_is_not_sent_and_rejected(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    (state,) = r.adapter.create_orders([request(expires_in=-0.5)])
    assert state is not None and state.status == OrderStatus.REJECTED
    assert state.error is not None and state.error.startswith(EXPIRED)
    assert r.session.sent(r.venue.create) == []


@ALL
def test_fetch_by_client_id_of_an_order_another_process_sent(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.symbols["pb9L1A2"] = BTC  # the legs table knows it; this adapter never sent it
    r.route(r.venue.query, r.filled_order)
    states = r.adapter.fetch_orders(["pb9L1A2", "pb404L0A1"])
    assert states["pb404L0A1"] is None  # no leg of that id: never sent
    found = states["pb9L1A2"]
    assert found is not None and found.filled == Decimal("0.01")
    (asked, *_) = r.session.sent(r.venue.query)
    asked_id = asked.query.get("origClientOrderId") or asked.query.get(r.venue.id_field)
    assert asked_id == "pb9L1A2"
    assert "orderId" not in asked.query  # bybit: never an empty order id next to the link id


@ALL
def test_cancel_an_open_order_by_client_id(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.symbols["pb5L0A1"] = BTC
    cancelled: list[Call] = []
    status, filled = OPEN[ccxt_id]

    def lookup(call: Call) -> tuple[int, Any]:
        if cancelled:
            done = {"binanceusdm": "CANCELED", "okx": "canceled", "bybit": "Cancelled"}[ccxt_id]
            return 200, order_body(r.venue, "pb5L0A1", status=done, filled="0")
        if ccxt_id == "bybit" and "history" in call.path:
            return not_found(r.venue)
        return 200, order_body(r.venue, "pb5L0A1", status=status, filled=filled)

    def cancel(call: Call) -> tuple[int, Any]:
        cancelled.append(call)
        return 200, ack(r.venue, "pb5L0A1")

    r.route(r.venue.query, lookup)
    r.route(r.venue.cancel, cancel)
    state = r.adapter.cancel_order("pb5L0A1")
    assert state.status == OrderStatus.CANCELLED and state.filled == 0
    assert len(cancelled) == 1
    assert "pb5L0A1" in (cancelled[0].body or "") + cancelled[0].url


@ALL
def test_cancel_of_an_unseen_id_is_a_tombstone(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.symbols["pb6L0A1"] = BTC
    state = r.adapter.cancel_order("pb6L0A1")
    assert state.status == OrderStatus.CANCELLED and state.error == TOMBSTONE
    assert r.session.sent(r.venue.cancel) == []


@ALL
def test_cancel_waits_out_the_expiry_of_a_request_still_in_flight(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    slept: list[float] = []
    r.adapter.sleep = slept.append
    r.route(r.venue.create, timeout)
    assert r.adapter.create_orders([request(expires_in=3.0)]) == [None]
    # unseen now; the late request lands while the adapter waits out its window
    r.adapter.sleep = lambda s: (slept.append(s), r.route(r.venue.query, r.filled_order))
    state = r.adapter.cancel_order("pb1L0A1")
    assert len(slept) == 1 and 2.0 < slept[0] <= 3.1
    assert state.status == OrderStatus.FILLED and state.filled == Decimal("0.01")
    assert r.session.sent(r.venue.cancel) == []


@ALL
def test_duplicate_client_id_is_no_answer_then_reconciled(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.create, lambda c: duplicate(r.venue, r.venue.sent_id(c)))
    r.route(r.venue.query, r.filled_order)
    assert r.adapter.create_orders([request()]) == [None]
    state = r.adapter.fetch_orders(["pb1L0A1"])["pb1L0A1"]
    assert state is not None and state.status == OrderStatus.FILLED


@ALL
def test_timeout_then_the_order_turns_out_filled(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.create, timeout)
    assert r.adapter.create_orders([request()]) == [None]
    assert len(r.session.sent(r.venue.create)) == 1  # ccxt did not retry the order call
    r.route(r.venue.query, r.filled_order)
    state = r.adapter.fetch_orders(["pb1L0A1"])["pb1L0A1"]
    assert state is not None and state.filled == Decimal("0.01")


@ALL
def test_not_placed_errors_are_rejected(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.create, lambda c: insufficient(r.venue, r.venue.sent_id(c)))
    (state,) = r.adapter.create_orders([request()])
    assert state is not None and state.status == OrderStatus.REJECTED
    assert state.error is not None and "InsufficientFunds" in state.error


@ALL
def test_quantity_off_the_contract_step_is_refused_before_sending(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    (state,) = r.adapter.create_orders([request(qty="0.0001")])
    assert state is not None and state.status == OrderStatus.REJECTED
    assert r.session.sent(r.venue.create) == []


@ALL
def test_keys_never_reach_logs_or_errors(ccxt_id: str, caplog: pytest.LogCaptureFixture) -> None:
    # A logging configuration made after the exchange module loaded (uvicorn's, at each
    # console start) re-enables every registered logger it does not name.
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    caplog.set_level(logging.DEBUG)
    r = rig(ccxt_id)
    r.route(r.venue.create, lambda c: (400, {"code": -1, "msg": f"echo {c.headers}"}))
    states = r.adapter.create_orders([request()])
    r.route(r.venue.create, timeout)
    states += r.adapter.create_orders([request("pb2L0A1")])
    text = caplog.text + repr(states) + repr(r.adapter) + repr(r.adapter.exchange.logger)
    assert r.session.calls  # requests did go out, signed with the keys
    for secret in (KEY, SECRET, PASSWORD):
        assert secret not in text


def position_rows(venue: Venue) -> Any:
    """A long of 0.02 BTC and a short of 0.5 ETH, and a flat row."""
    if venue is BINANCE:
        row = {
            "positionSide": "BOTH",
            "marginType": "cross",
            "isolatedMargin": "0",
            "leverage": "10",
            "unRealizedProfit": "0",
            "liquidationPrice": "0",
            "markPrice": "50000",
            "entryPrice": "50000",
            "updateTime": NOW_MS,
        }
        return [
            {**row, "symbol": "BTCUSDT", "positionAmt": "0.020", "notional": "1000"},
            {**row, "symbol": "ETHUSDT", "positionAmt": "-0.500", "notional": "-1500"},
            {
                **row,
                "symbol": "ETHUSDT",
                "positionAmt": "0",
                "notional": "0",
                "positionSide": "LONG",
            },
        ]
    if venue is OKX:
        row = {
            "instType": "SWAP",
            "posSide": "net",
            "mgnMode": "cross",
            "ccy": "USDT",
            "lever": "10",
            "upl": "0",
            "avgPx": "50000",
            "markPx": "50000",
            "cTime": str(NOW_MS),
            "uTime": str(NOW_MS),
        }
        return {
            "code": "0",
            "msg": "",
            "data": [
                {**row, "instId": "BTC-USDT-SWAP", "pos": "2", "notionalUsd": "1000"},
                {**row, "instId": "ETH-USDT-SWAP", "pos": "-5", "notionalUsd": "1500"},
            ],
        }
    row = {
        "positionIdx": 0,
        "leverage": "10",
        "markPrice": "50000",
        "avgPrice": "50000",
        "unrealisedPnl": "0",
        "tradeMode": 0,
        "createdTime": str(NOW_MS),
        "updatedTime": str(NOW_MS),
        "positionStatus": "Normal",
    }
    return {"retCode": 0, "retMsg": "OK", "time": NOW_MS, "result": {"category": "linear",
        "nextPageCursor": "", "list": [
            {**row, "symbol": "BTCUSDT", "side": "Buy", "size": "0.02", "positionValue": "1000"},
            {**row, "symbol": "ETHUSDT", "side": "Sell", "size": "0.5", "positionValue": "1500"},
            {**row, "symbol": "ETHUSDT", "side": "", "size": "0",
             "positionValue": "0"}]}}  # fmt: skip


def balance_body(venue: Venue) -> Any:
    if venue is BINANCE:
        return {"totalWalletBalance": "1234.5", "availableBalance": "1000", "assets": [
            {"asset": "USDT", "walletBalance": "1234.5", "availableBalance": "1000",
             "marginBalance": "1234.5", "unrealizedProfit": "0", "crossWalletBalance": "1234.5",
             "updateTime": NOW_MS}], "positions": []}  # fmt: skip
    if venue is OKX:
        return {"code": "0", "msg": "", "data": [{"totalEq": "1234.5", "uTime": str(NOW_MS),
            "details": [{"ccy": "USDT", "eq": "1234.5", "cashBal": "1234.5", "availBal": "1000",
                         "frozenBal": "234.5", "availEq": "1000",
                         "uTime": str(NOW_MS)}]}]}  # fmt: skip
    return {"retCode": 0, "retMsg": "OK", "time": NOW_MS, "result": {"list": [
        {"accountType": "UNIFIED", "totalEquity": "1234.5", "coin": [
            {"coin": "USDT", "walletBalance": "1234.5", "equity": "1234.5", "locked": "0",
             "totalPositionIM": "0", "totalOrderIM": "0",
             "availableToWithdraw": "1000"}]}]}}  # fmt: skip


@ALL
def test_positions_in_base_units_signed(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.positions, lambda c: (200, position_rows(r.venue)))
    r.route(r"GET /fapi/v\d/account", lambda c: (200, {"positions": position_rows(r.venue)}))
    r.route(r"GET /fapi/v1/leverageBracket", lambda c: (200, [
        {"symbol": s, "brackets": [{"bracket": 1, "initialLeverage": 75, "notionalCap": 10000,
                                    "notionalFloor": 0, "maintMarginRatio": 0.004, "cum": 0}]}
        for s in ("BTCUSDT", "ETHUSDT")]))  # fmt: skip
    assert r.adapter.positions() == {
        BTC: Decimal("0.02"), "ETH/USDT:USDT": Decimal("-0.5"),
    }  # fmt: skip


@ALL
def test_balance_is_the_settle_coin_total(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.balance, lambda c: (200, balance_body(r.venue)))
    assert r.adapter.balance() == Decimal("1234.5")


def venue_expired(venue: Venue) -> tuple[int, Any]:
    if venue is BINANCE:
        return 400, {
            "code": -1021,
            "msg": "Timestamp for this request is outside of the recvWindow.",
        }
    if venue is OKX:
        return 200, {"code": "50102", "msg": "Timestamp request expired", "data": []}
    return 200, {"retCode": 10002, "retMsg": "invalid request, please check your server "
                 "timestamp or recv_window param", "result": {}, "time": NOW_MS}  # fmt: skip


@ALL
def test_a_request_the_venue_refuses_as_late_is_rejected_expired(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.route(r.venue.create, lambda c: venue_expired(r.venue))
    (state,) = r.adapter.create_orders([request()])
    assert state is not None and state.status == OrderStatus.REJECTED
    assert state.error is not None and state.error.startswith(EXPIRED)


class SlowClock:
    """The adapter's clock a second behind the machine's: its pre-check passes, the
    signer (which stamps the request with the machine's time) finds the window gone."""

    def now(self) -> datetime:
        return datetime.now(UTC) - timedelta(seconds=1)


@ALL
def test_a_window_gone_at_signing_is_not_sent(ccxt_id: str) -> None:
    r = rig(ccxt_id)
    r.adapter.clock = SlowClock()
    (state,) = r.adapter.create_orders([request(expires_in=-0.5)])
    assert state is not None and state.status == OrderStatus.REJECTED
    assert state.error is not None and state.error.startswith(EXPIRED)
    assert r.session.calls == []


@pytest.mark.parametrize(
    ("exc", "sorted_as"),
    [
        (ccxt.RequestTimeout("t"), "maybe_placed"),
        (ccxt.NetworkError("n"), "maybe_placed"),
        (ccxt.ExchangeNotAvailable("x"), "maybe_placed"),
        (ccxt.BadResponse("b"), "maybe_placed"),
        (ccxt.ExchangeError("unknown"), "maybe_placed"),
        (RuntimeError("anything else"), "maybe_placed"),
        (ccxt.InvalidOrder("i"), "not_placed"),
        (ccxt.InsufficientFunds("f"), "not_placed"),
        (ccxt.BadRequest("r"), "not_placed"),
        (ccxt.BadSymbol("s"), "not_placed"),
        (ccxt.AuthenticationError("a"), "not_placed"),
        (ccxt.InvalidOrder('okx {"sCode":"51016"}'), "duplicate"),
    ],
)
def test_errors_are_sorted_by_what_they_mean_for_the_order(exc: Exception, sorted_as: str) -> None:
    from workers.venues.ccxt_errors import placement

    assert placement("okx", exc) == sorted_as


@ALL
def test_calls_into_ccxt_leave_the_threads_decimal_context_as_it_was(ccxt_id: str) -> None:
    """ccxt's number formatting sets an Underflow trap and ROUND_HALF_UP rounding on the
    calling thread's context and never restores it; the adapter runs every call in a
    copy, so the worker's own arithmetic keeps the engine's rounding."""
    with localcontext(Context()) as mine:
        before = (mine.rounding, dict(mine.traps), mine.prec)
        r = rig(ccxt_id)
        r.route(r.venue.create, lambda c: (200, ack(r.venue, r.venue.sent_id(c))))
        r.route(r.venue.query, r.filled_order)
        r.adapter.create_orders([request()])
        r.adapter.fetch_orders(["pb1L0A1"])
        after = getcontext()
        assert (after.rounding, dict(after.traps), after.prec) == before
        r.adapter.exchange.price_to_precision(BTC, 50000.12)  # ccxt itself, unguarded
        assert getcontext().traps[Underflow] and getcontext().rounding == ROUND_HALF_UP
