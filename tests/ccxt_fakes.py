"""Offline ccxt venues for tests: fixture markets and a stubbed HTTP session.

The stub replaces ``exchange.session`` (what ccxt's ``fetch`` calls), so
everything above the socket runs for real: parameter building, signing, the
venue's error mapping and the parsing of answers.  Each route is a function of
the request that returns ``(http_status, json_body)`` or raises a ``requests``
exception (a timeout).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.structures import CaseInsensitiveDict


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    body: str | None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    @property
    def json(self) -> Any:
        if not self.body or self.body[0] not in "[{":
            return None
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body or "").items()}


Route = Callable[[Call], tuple[int, Any]]


@dataclass
class FakeSession:
    """Answers ccxt's requests from ``routes`` (regex on ``METHOD path`` -> handler)."""

    routes: list[tuple[str, Route]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    cookies: requests.cookies.RequestsCookieJar = field(
        default_factory=requests.cookies.RequestsCookieJar
    )

    def route(self, pattern: str, handler: Route) -> None:
        self.routes.insert(0, (pattern, handler))  # the latest route wins

    def request(
        self, method: str, url: str, data: Any = None, headers: Any = None, **_: Any
    ) -> requests.Response:
        body = data.decode() if isinstance(data, bytes) else data
        call = Call(method, url, dict(headers or {}), body)
        self.calls.append(call)
        for pattern, handler in self.routes:
            if re.fullmatch(pattern, f"{method} {call.path}"):
                status, payload = handler(call)
                response = requests.Response()
                response.status_code = status
                response.reason = "OK" if status < 400 else "Error"
                response._content = json.dumps(payload).encode()
                response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
                response.url = url
                return response
        raise AssertionError(f"no stub for {method} {url}")

    def sent(self, pattern: str) -> list[Call]:
        return [c for c in self.calls if re.fullmatch(pattern, f"{c.method} {c.path}")]


def timeout(_: Call) -> tuple[int, Any]:
    raise requests.exceptions.ReadTimeout("Read timed out.")


def _market(
    venue: str, base: str, market_id: str, contract_size: str, step: str, tick: str
) -> dict[str, Any]:
    return {
        "id": market_id,
        "symbol": f"{base}/USDT:USDT",
        "base": base,
        "quote": "USDT",
        "settle": "USDT",
        "baseId": base,
        "quoteId": "USDT",
        "settleId": "USDT",
        "type": "swap",
        "spot": False,
        "margin": False,
        "swap": True,
        "future": False,
        "option": False,
        "active": True,
        "contract": True,
        "linear": True,
        "inverse": False,
        "contractSize": float(contract_size),
        "expiry": None,
        "expiryDatetime": None,
        "strike": None,
        "optionType": None,
        "taker": 0.0005,
        "maker": 0.0002,
        "precision": {"amount": float(step), "price": float(tick)},
        "limits": {
            "amount": {"min": float(step), "max": None},
            "price": {"min": None, "max": None},
            "cost": {"min": None, "max": None},
            "leverage": {"min": None, "max": None},
        },
        "info": {
            "okx": {"instType": "SWAP", "instId": market_id},
            "binanceusdm": {"orderTypes": ["LIMIT", "MARKET"], "symbol": market_id},
            "bybit": {"symbol": market_id},
        }[venue],
    }


#: A few BTC/ETH perps per venue (okx trades contracts of 0.01 BTC / 0.1 ETH).
MARKETS: dict[str, list[dict[str, Any]]] = {
    "binanceusdm": [
        _market("binanceusdm", "BTC", "BTCUSDT", "1", "0.001", "0.1"),
        _market("binanceusdm", "ETH", "ETHUSDT", "1", "0.001", "0.01"),
    ],
    "okx": [
        _market("okx", "BTC", "BTC-USDT-SWAP", "0.01", "1", "0.1"),
        _market("okx", "ETH", "ETH-USDT-SWAP", "0.1", "1", "0.01"),
    ],
    "bybit": [
        _market("bybit", "BTC", "BTCUSDT", "1", "0.001", "0.1"),
        _market("bybit", "ETH", "ETHUSDT", "1", "0.01", "0.01"),
    ],
}
