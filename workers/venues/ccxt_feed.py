"""A market data source for the feed service: quotes and funding from a ccxt venue.

Design note.  The feed service (``perpbot_db/services/feeds.py``) polls
*sources*: anything with a ``name`` and ``poll(now)`` returning
:class:`~perpbot_db.store.market.MarketSnapshot` rows.  One
:class:`CcxtFeedSource` reads one venue's public market data:

* **Quotes**: the order-book top of every symbol in one request (binance
  ``bookTicker`` through ``fetch_bids_asks``; okx and bybit ``fetch_tickers``,
  whose tickers carry bid, ask and last).  ``last`` is the mid when the venue's
  answer has none.  A symbol without a two-sided quote is left out, never
  written with a guess.
* **Funding**: ``fetch_funding_rates`` at most every ``funding_every_s`` (the
  rate moves slowly; the request is heavy on some venues) and reused between;
  the rate is the venue's own, per its funding interval.
* **Latency**: the wall time of the quote request, measured around it
  (``timer``, injectable), in milliseconds: what the risk manager's latency
  dimension scores.
* **Rate limit**: ccxt's limiter (``enableRateLimit``) spaces the requests;
  a poll that comes sooner than the venue's rate limit allows for its requests
  returns nothing rather than queueing behind the limiter.

``now`` (the feed's clock) stamps ``observed_at``; the source reads no clock
of its own except the timer that measures latency, and the simulation never
runs it (it replays recorded snapshots instead).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from perpbot_db.settings import Settings
from perpbot_db.store.market import MarketSnapshot
from workers.venues.ccxt_context import keeps_decimal_context

log = logging.getLogger(__name__)

TWO = Decimal(2)


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number > 0 else None


class CcxtFeedSource:
    """One venue's quotes and funding rates, as snapshots of exchange ``name``."""

    def __init__(
        self,
        name: str,
        exchange: Any,
        symbols: Sequence[str],
        *,
        funding_every_s: float = 60.0,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self.symbols = list(symbols)
        self.funding_every_s = funding_every_s
        self.timer = timer
        self._funding: dict[str, Decimal] = {}
        self._funding_at: datetime | None = None
        self._last_poll: datetime | None = None
        self.last_latency_ms: Decimal | None = None

    def __repr__(self) -> str:
        return f"CcxtFeedSource({self.name!r}, {self.exchange.id!r}, {len(self.symbols)} symbols)"

    @property
    def min_interval_s(self) -> float:
        """The venue's rate limit for one poll's quote request (ccxt ``rateLimit``, ms)."""
        return float(self.exchange.rateLimit) / 1000.0

    def _quotes(self) -> Mapping[str, Mapping[str, Any]]:
        if self.exchange.id == "binanceusdm":
            quotes: Mapping[str, Mapping[str, Any]] = self.exchange.fetch_bids_asks(self.symbols)
        else:
            quotes = self.exchange.fetch_tickers(self.symbols)
        return quotes

    def _funding_rates(self, now: datetime) -> dict[str, Decimal]:
        due = (
            self._funding_at is None
            or (now - self._funding_at).total_seconds() >= self.funding_every_s
        )
        if due:
            try:
                rates = self.exchange.fetch_funding_rates(self.symbols)
            except Exception as exc:  # quotes without funding beat no quotes
                log.warning("%s: funding rates unavailable: %s", self.name, type(exc).__name__)
            else:
                found: dict[str, Decimal] = {}
                for symbol, row in rates.items():
                    rate = row.get("fundingRate")
                    if rate is not None:
                        found[symbol] = Decimal(str(rate))
                self._funding = found
                self._funding_at = now
        return self._funding

    @keeps_decimal_context
    def poll(self, now: datetime) -> list[MarketSnapshot]:
        """Snapshots of every quoted symbol, observed at ``now``; [] when polled sooner
        than the venue's rate limit allows."""
        if self._last_poll is not None and (
            (now - self._last_poll).total_seconds() < self.min_interval_s
        ):
            return []
        self._last_poll = now
        if not self.exchange.markets:
            self.exchange.load_markets()
        started = self.timer()
        quotes = self._quotes()
        latency = Decimal(str(round((self.timer() - started) * 1000.0, 3)))
        self.last_latency_ms = latency
        funding = self._funding_rates(now)
        out: list[MarketSnapshot] = []
        for symbol in self.symbols:
            quote = quotes.get(symbol)
            if quote is None:
                continue
            bid, ask = _dec(quote.get("bid")), _dec(quote.get("ask"))
            if bid is None or ask is None or bid > ask:
                continue
            last = _dec(quote.get("last")) or (bid + ask) / TWO
            out.append(
                MarketSnapshot(
                    exchange=self.name,
                    symbol=symbol,
                    bid=bid,
                    ask=ask,
                    last=last,
                    funding_rate=funding.get(symbol),
                    volatility=None,
                    latency_ms=latency,
                    observed_at=now,
                )
            )
        return out


def ccxt_sources(settings: Settings, symbols: Sequence[str]) -> list[CcxtFeedSource]:
    """One source per ``venue = "ccxt"`` exchange, on that exchange's mode's public
    endpoints (no keys needed; bybit's demo quotes come from its main site, which
    its demo trading mirrors)."""
    from workers.venues.ccxt_venues import DEFAULT_CCXT_IDS, make_exchange

    sources = []
    for name, exchange in sorted(settings.exchanges.items()):
        if exchange.venue != "ccxt":
            continue
        ccxt_id = exchange.ccxt_id or DEFAULT_CCXT_IDS[name]
        mode = "live" if (ccxt_id == "bybit" and exchange.mode == "demo") else exchange.mode
        sources.append(CcxtFeedSource(name, make_exchange(ccxt_id, mode, None), symbols))
    return sources
