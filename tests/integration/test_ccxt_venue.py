"""A ccxt venue in the worker's wiring: build_adapters picks it where ``venue = "ccxt"``,
and it finds the symbol of an order it never sent in the ``legs`` table."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import requests
from sqlalchemy import Engine, text

from perpbot_db.settings import Settings
from tests.builders import admitted, job, submit
from tests.ccxt_fakes import MARKETS, Call, FakeSession
from workers.venues.adapters import build_adapters
from workers.venues.ccxt_adapter import CcxtAdapter
from workers.venues.paper import PaperExchange
from workers.worker import Worker

ENV = {
    "PERPBOT_OKX_API_KEY": "k3y-AAAA",
    "PERPBOT_OKX_API_SECRET": "s3cret-BBBB",
    "PERPBOT_OKX_API_PASSWORD": "pa55-CCCC",
}


def test_ccxt_venue_is_built_and_asks_by_the_legs_symbol(
    engine: Engine, settings: Settings
) -> None:
    exchanges = dict(settings.exchanges)
    exchanges["okx"] = exchanges["okx"].model_copy(update={"venue": "ccxt"})
    ccxt_settings = settings.model_copy(update={"exchanges": exchanges})
    adapters = build_adapters(engine, ccxt_settings, environ=ENV)
    assert isinstance(adapters["binance"], PaperExchange)
    okx = adapters["okx"]
    assert isinstance(okx, CcxtAdapter) and okx.ccxt_id == "okx"

    (job_id,) = submit(engine, settings, [job(1)])
    with engine.connect() as conn:
        coid = conn.execute(
            text("SELECT client_order_id FROM legs WHERE job_id = :j AND exchange = 'okx'"),
            {"j": job_id},
        ).scalar_one()
    okx.exchange.set_markets(MARKETS["okx"])
    session = FakeSession()
    okx.exchange.session = session

    def not_found(call: Call) -> tuple[int, Any]:
        return 200, {"code": "51603", "msg": "Order does not exist", "data": []}

    session.route(r"GET /api/v5/trade/order", not_found)
    assert okx.fetch_orders([coid]) == {coid: None}
    (asked,) = session.calls
    assert asked.query == {"instId": "BTC-USDT-SWAP", "clOrdId": coid}


class OkxVenue:
    """A tiny stateful okx: an order whose answer is lost (a timeout) still fills."""

    def __init__(self, session: FakeSession) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        session.route(r"POST /api/v5/trade/order", self.create)
        session.route(r"GET /api/v5/trade/order", self.query)

    def create(self, call: Call) -> tuple[int, Any]:
        body = call.json
        self.orders[body["clOrdId"]] = body
        raise requests.exceptions.ReadTimeout("Read timed out.")  # placed, answer lost

    def query(self, call: Call) -> tuple[int, Any]:
        order = self.orders.get(call.query["clOrdId"])
        if order is None:
            return 200, {"code": "51603", "msg": "Order does not exist", "data": []}
        return 200, {"code": "0", "msg": "", "data": [{
            "instType": "SWAP", "instId": order["instId"], "ordId": "555",
            "clOrdId": order["clOrdId"], "px": "", "sz": order["sz"], "ordType": "market",
            "side": order["side"], "posSide": "net", "tdMode": "cross",
            "accFillSz": order["sz"], "avgPx": "50010", "state": "filled", "fee": "-0.25",
            "feeCcy": "USDT", "reduceOnly": "false", "cTime": "1700000000000",
            "uTime": "1700000000000"}]}  # fmt: skip


def test_worker_completes_a_job_whose_okx_answer_was_lost(engine: Engine, fast: Settings) -> None:
    exchanges = dict(fast.exchanges)
    exchanges["okx"] = exchanges["okx"].model_copy(update={"venue": "ccxt"})
    ccxt_settings = fast.model_copy(update={"exchanges": exchanges})
    (job_id,) = admitted(engine, fast)
    adapters = build_adapters(engine, ccxt_settings, environ=ENV)
    okx = adapters["okx"]
    assert isinstance(okx, CcxtAdapter)
    okx.exchange.set_markets(MARKETS["okx"])
    session = FakeSession()
    okx.exchange.session = session
    venue = OkxVenue(session)

    worker = Worker(engine, ccxt_settings, adapters)
    worker.run(once=True)

    (sent,) = session.sent(r"POST /api/v5/trade/order")  # once: never re-sent
    assert sent.json["sz"] == "1" and sent.json["side"] == "sell"  # 0.01 BTC = 1 contract
    assert "expTime" in sent.headers
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM hedge_jobs WHERE id = :j"), {"j": job_id}
        ).scalar_one()
        okx_leg = conn.execute(
            text(
                "SELECT status, filled_quantity, avg_price, fee_usd, client_order_id FROM legs "
                "WHERE job_id = :j AND exchange = 'okx'"
            ),
            {"j": job_id},
        ).one()
    assert status == "completed"
    assert okx_leg.client_order_id in venue.orders  # found again by its client order id
    assert okx_leg.filled_quantity == Decimal("0.01") and okx_leg.avg_price == Decimal(50010)
    assert okx_leg.fee_usd == Decimal("0.25")
