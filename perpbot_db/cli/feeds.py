"""``perpbot feed``: the market data feed alone (``perpbot run`` starts it too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from perpbot_db.cli.app import app, connected, err, fail, out, settings_or_exit

if TYPE_CHECKING:
    from decimal import Decimal

    from sqlalchemy import Engine

    from perpbot_db.domain.clock import Clock
    from perpbot_db.services.feeds import FeedRound, FeedService
    from perpbot_db.settings import FeedSettings, Settings
    from perpbot_db.store.reconnect import Outage

#: Seconds between two progress lines of a running feed.
PROGRESS_EVERY_S = 10.0


@app.command("feed")
def feed_cmd(
    once: Annotated[
        bool, typer.Option("--once", help="Write one round, print it as a table, exit.")
    ] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="The paper market's seed.")] = None,
    interval: Annotated[
        float | None, typer.Option("--interval", help="Seconds between rounds (feed.interval_s).")
    ] = None,
) -> None:
    """Write market snapshots for every enabled exchange and each of feed.symbols (the
    seeded paper market, feed.kind = "paper") every interval, until SIGTERM.  Survives
    database outages."""
    from perpbot_db.domain.clock import WallClock
    from perpbot_db.services import feeds
    from perpbot_db.store import reconnect

    settings = settings_or_exit()
    feed = _feed_settings(settings, seed=seed, interval=interval)
    if feed.kind == "none":
        raise fail('feed: feed.kind is "none"; set it to "paper" to run a feed')
    problem = feeds.kind_problem(settings, feed)
    if problem is not None:
        raise fail(f"feed: {problem}")
    if once:
        with connected(settings) as engine:
            service = _service(engine, settings, feed, WallClock())
            report = service.run_once()
        _print_round(service, report)
        return
    from perpbot_db.cli.daemons import log_setup, stop_on_signals

    log_setup()
    stop, _ = stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=True, stop=stop, outage=outage) as engine:
        try:
            service = reconnect.Reconnect(outage, stop=stop).call(
                lambda: _service(engine, settings, feed, WallClock(), outage)
            )
        except reconnect.Stopped:
            raise typer.Exit(0) from None
        service.start()
        papers = [s for s in service.sources if isinstance(s, feeds.PaperSource)]
        market = papers[0].market if papers else None
        err.print(
            f"feed ({feed.kind}, seed {feed.seed}): {len(feed.symbols)} symbol(s) from "
            f"{', '.join(s.name for s in service.sources)} every {feed.interval_s:g} s "
            "(Ctrl-C to stop)"
        )
        while not stop.wait(PROGRESS_EVERY_S):
            fast = (", ".join(market.fast_symbols()) or "none") if market else "n/a"
            out.print(
                f"feed: {service.rounds} round(s), {service.written} snapshot(s) written; "
                f"fast market: {fast}",
                highlight=False,
            )
        service.stop()
    err.print(f"feed stopped after {service.rounds} round(s)")


def _feed_settings(settings: Settings, *, seed: int | None, interval: float | None) -> FeedSettings:
    """``[feed]`` with the command's options applied, validated by the same rules."""
    from pydantic import ValidationError

    from perpbot_db.settings import FeedSettings

    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if interval is not None:
        changes["interval_s"] = interval
    if not changes:
        return settings.feed
    try:
        return FeedSettings.model_validate({**settings.feed.model_dump(), **changes})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        name = str(first["loc"][0]) if first["loc"] else "feed"
        option = {"interval_s": "--interval", "seed": "--seed"}.get(name, name)
        raise fail(f"{option} (feed.{name}): {first['msg']}") from None


def _service(
    engine: Engine,
    settings: Settings,
    feed: FeedSettings,
    clock: Clock,
    outage: Outage | None = None,
) -> FeedService:
    from perpbot_db.services import feeds

    if not feeds.enabled_venues(engine):
        raise fail("feed: no enabled exchange in the database; run `perpbot db upgrade` first")
    return feeds.from_settings(engine, settings, clock=clock, feed=feed, outage=outage)


def _print_round(service: FeedService, report: FeedRound) -> None:
    from perpbot_db.cli.text import render, table
    from perpbot_db.services.feeds import PaperSource

    rows = []
    for source in service.sources:
        if not isinstance(source, PaperSource):
            continue
        fast = set(source.market.fast_symbols())
        for snap in source.last:
            mid = (snap.bid + snap.ask) / 2
            spread_bps = (snap.ask - snap.bid) / mid * 10_000
            rows.append(
                (
                    snap.exchange,
                    snap.symbol,
                    f"{snap.bid:f}",
                    f"{snap.ask:f}",
                    f"{spread_bps:.3f}",
                    _num(snap.funding_rate),
                    _num(snap.volatility),
                    _num(snap.latency_ms),
                    "fast" if snap.symbol in fast else "calm",
                )
            )
    headers = (
        "exchange",
        "symbol",
        "bid",
        "ask",
        "spread_bps",
        "funding_rate",
        "volatility",
        "latency_ms",
        "regime",
    )
    print(render(table(headers, rows, right=range(2, 8))))
    print(
        f"wrote {report.written} snapshot(s) at {report.at.isoformat(timespec='seconds')}"
        + (f"; failed: {', '.join(report.failed)}" if report.failed else "")
    )


def _num(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:f}"
