"""Market data feeds: sources polled on an interval, their quotes upserted as snapshots.

Design note.  A *source* is anything with a ``name`` and ``poll(now)`` returning
:class:`~perpbot_db.store.market.MarketSnapshot` rows: the paper market here
(:class:`PaperSource`), a ccxt venue in ``workers/venues``.  :class:`FeedService`
has the shape of every background service: :meth:`FeedService.run_once` (one
round: poll every source, upsert what they returned in one statement), which
tests and the simulation call directly with their own ``now``, and a thread
that only calls it every ``interval_s``.  The time comes from an injected
:class:`~perpbot_db.domain.clock.Clock`, never from the machine, so a
simulation on a virtual clock writes the same rows twice.

A source that fails is logged and skipped for that round; the others still
write.  A lost database connection is not an error: the round is dropped, the
next ones are skipped while :class:`~perpbot_db.store.reconnect.Guard` backs
off, and the process logs one line per outage.  Dropping rounds loses nothing
worth keeping: a snapshot is only the latest quote, and the next round brings a
newer one.  The upsert never lets an older observation replace a newer one, so
two feeds (or a feed and ``perpbot market load``) may race.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from perpbot_db.domain.clock import Clock
from perpbot_db.domain.paper_market import MarketParams, PaperMarket, VenueSpec, venue_spec
from perpbot_db.settings import FeedSettings, Settings
from perpbot_db.store import exchanges
from perpbot_db.store import market as store_market
from perpbot_db.store.market import MarketSnapshot
from perpbot_db.store.reconnect import Guard, Outage

log = logging.getLogger("perpbot.feed")


class Source(Protocol):
    """Where snapshots come from: ``poll(now)`` returns the latest quotes it has."""

    name: str

    def poll(self, now: datetime) -> Sequence[MarketSnapshot]: ...


class PaperSource:
    """The paper market as a source: one step of the model per poll."""

    def __init__(self, market: PaperMarket, name: str = "paper") -> None:
        self.market = market
        self.name = name
        self.last: list[MarketSnapshot] = []  # the last poll's (``perpbot feed --once``)

    def poll(self, now: datetime) -> list[MarketSnapshot]:
        self.last = self.market.step_as(now, _snapshot)
        return self.last


def _snapshot(*quote: Any) -> MarketSnapshot:
    """A paper quote's fields to a snapshot (a ``Quote``'s first nine are a snapshot's,
    in the same order; ``fast`` is not stored)."""
    return MarketSnapshot(*quote[:9])


def paper_source(
    names: Sequence[str],
    symbols: Sequence[str],
    *,
    seed: int,
    params: MarketParams | None = None,
    funding_interval_h: Mapping[str, int] | None = None,
) -> PaperSource:
    """A paper market over the exchanges ``names`` (in name order, so the seed decides
    the same market whatever order they are listed in) and ``symbols``."""
    intervals = funding_interval_h or {}
    venues: list[VenueSpec] = [venue_spec(n, intervals.get(n, 8)) for n in sorted(names)]
    return PaperSource(PaperMarket(symbols, venues, seed=seed, params=params))


@dataclass
class FeedRound:
    """What one round did: snapshots polled per source, rows the upsert changed, and
    the sources that failed."""

    at: datetime
    polled: dict[str, int] = field(default_factory=dict)
    written: int = 0
    failed: list[str] = field(default_factory=list)


class FeedService:
    """Poll ``sources`` every ``interval_s`` (a thread) and upsert their snapshots."""

    def __init__(
        self,
        engine: Engine,
        sources: Sequence[Source],
        *,
        clock: Clock,
        interval_s: float = 1.0,
        max_future_skew_s: float = 5.0,
        outage: Outage | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.engine = engine
        self.sources = list(sources)
        self.clock = clock
        self.interval_s = interval_s
        self.max_future_skew_s = max_future_skew_s
        self.outage = outage or Outage()
        self.guard = Guard(self.outage, "feed", log=log)
        self.rounds = 0
        self.written = 0
        self.last: FeedRound | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: datetime | None = None) -> FeedRound:
        """One round at ``now`` (default: the clock's).  Raises what the database raises."""
        at = self.clock.now() if now is None else now
        report = FeedRound(at)
        latest: dict[tuple[str, str], MarketSnapshot] = {}
        for source in self.sources:
            try:
                snaps = source.poll(at)
            except Exception:
                log.exception("feed source %s failed; the next round polls it again", source.name)
                report.failed.append(source.name)
                continue
            report.polled[source.name] = len(snaps)
            for snap in snaps:  # one row per key and statement: the newest wins
                key = (snap.exchange, snap.symbol)
                seen = latest.get(key)
                if seen is None or snap.observed_at >= seen.observed_at:
                    latest[key] = snap
        if latest:
            with self.engine.begin() as conn:
                report.written = store_market.snapshots_upsert(
                    conn, list(latest.values()), max_future_skew_s=self.max_future_skew_s
                )
        self.rounds += 1
        self.written += report.written
        self.last = report
        return report

    def start(self) -> FeedService:
        if self._thread is not None:
            raise RuntimeError("the feed is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.guard.run(self.run_once)  # an outage backs off; other errors are logged
            self._stop.wait(self.interval_s)


def enabled_venues(engine: Engine) -> list[str]:
    """The enabled exchanges (the ``exchanges`` table is the truth, not the settings)."""
    with engine.connect() as conn:
        return sorted(exchanges.names_enabled(conn))


def kind_problem(settings: Settings, feed: FeedSettings | None = None) -> str | None:
    """Why ``[feed]`` cannot quote these exchanges, or None: paper quotes must never
    drive a real venue's decisions."""
    feed = feed or settings.feed
    real = sorted(n for n, e in settings.exchanges.items() if e.venue == "ccxt")
    if feed.kind == "paper" and real:
        return (
            f'feed.kind: "paper" would quote {", ".join(real)}, which trade through ccxt; '
            'set feed.kind = "ccxt" (their own quotes, paper ones for the paper exchanges) '
            'or "none"'
        )
    return None


def from_settings(
    engine: Engine,
    settings: Settings,
    *,
    clock: Clock,
    feed: FeedSettings | None = None,
    outage: Outage | None = None,
) -> FeedService:
    """The feed ``[feed]`` describes (``feed`` overrides it: the CLI's options) over the
    enabled exchanges.  Reads the ``exchanges`` table; ``kind`` must not be "none"."""
    feed = feed or settings.feed
    if feed.kind == "none":
        raise ValueError('feed.kind is "none": there is no feed to run')
    problem = kind_problem(settings, feed)
    if problem is not None:
        raise ValueError(problem)
    intervals = {name: e.funding_interval_h for name, e in settings.exchanges.items()}
    venues = enabled_venues(engine)
    real = {n for n, e in settings.exchanges.items() if e.venue == "ccxt"}
    sources: list[Source] = []
    paper = [n for n in venues if n not in real]
    if paper:
        sources.append(
            paper_source(
                paper,
                feed.symbols,
                seed=feed.seed,
                params=feed.market_params(),
                funding_interval_h=intervals,
            )
        )
    if feed.kind == "ccxt":
        from workers.venues.ccxt_feed import ccxt_sources

        sources.extend(s for s in ccxt_sources(settings, feed.symbols) if s.name in venues)
    return FeedService(
        engine,
        sources,
        clock=clock,
        interval_s=feed.interval_s,
        max_future_skew_s=settings.market_max_future_skew_s,
        outage=outage,
    )
