"""A ccxt venue in the worker's wiring: build_adapters picks it where ``venue = "ccxt"``,
and it finds the symbol of an order it never sent in the ``legs`` table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from perpbot_db.settings import Settings
from tests.builders import job, submit
from tests.ccxt_fakes import MARKETS, Call, FakeSession
from workers.venues.adapters import build_adapters
from workers.venues.ccxt_adapter import CcxtAdapter
from workers.venues.paper import PaperExchange

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
