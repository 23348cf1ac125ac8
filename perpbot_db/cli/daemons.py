"""The processes: ``perpbot scheduler``, ``perpbot worker`` and the daemon ``perpbot run``.

They import the scheduler service, the workers and the exchange adapters when
they start, never when another command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from perpbot_db.cli.app import (
    app,
    connected,
    err,
    fail,
    out,
    require_exchanges,
    settings_or_exit,
)

if TYPE_CHECKING:
    import threading

    from sqlalchemy import Engine

    from perpbot_db.runtime import scheduler
    from perpbot_db.runtime.web import WebServer
    from perpbot_db.services.feeds import FeedService
    from perpbot_db.services.producers import ProducerService
    from perpbot_db.settings import Settings
    from perpbot_db.store import reconnect
    from workers.recovery import Recovery
    from workers.venues.exchange import ExchangeAdapter


@app.command("scheduler")
def scheduler_cmd(
    once: Annotated[bool, typer.Option("--once", help="Run one tick, print it, exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: JSON.")] = False,
) -> None:
    """Admit pending jobs (a tick every interval and on every submission); the leader
    among schedulers also recovers running jobs whose lease expired, ends protection
    locks that ran their time and archives, until SIGTERM.  Survives database outages."""
    from perpbot_db.services import protect, tick
    from perpbot_db.store import reconnect

    settings = settings_or_exit()
    require_exchanges(settings, "scheduler")
    if once:
        with connected(settings) as engine:
            protect.expire_once(engine)  # no leader runs for a one-off: end what is due
            report = tick.run_tick(engine, tick.TickConfig.from_settings(settings))
        _print_tick(report.summary(), as_json)
        return
    log_setup()
    stop, _ = stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=True, stop=stop, outage=outage) as engine:
        service, recovery = _scheduler_service(engine, settings, outage, stop)
        service.start()
        err.print(f"scheduler ticking every {settings.tick_interval_s} s (Ctrl-C to stop)")
        stop.wait()
        service.stop()
        recovery.close()
        err.print(f"scheduler stopped after {service.ticks} tick(s)")


def stop_on_signals() -> tuple[threading.Event, list[Callable[[], object]]]:
    """SIGTERM/SIGINT set the event and call the hooks appended to the list."""
    import signal
    import threading

    stop = threading.Event()
    hooks: list[Callable[[], object]] = []

    def handler(*_: Any) -> None:
        stop.set()
        for hook in hooks:
            hook()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop, hooks


def log_setup() -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def adapters_or_exit(engine: Engine, settings: Settings) -> dict[str, ExchangeAdapter]:
    """The exchange adapters, or exit 2 naming the setting (a ccxt venue that may not start:
    live without ``live = true``, keys missing)."""
    from perpbot_db.settings import SettingsError
    from workers.venues.adapters import build_adapters

    try:
        return build_adapters(engine, settings)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _scheduler_service(
    engine: Engine, settings: Settings, outage: reconnect.Outage, stop: threading.Event
) -> tuple[scheduler.SchedulerService, Recovery]:
    from perpbot_db.runtime import assembly

    return assembly.scheduler_service(
        engine, settings, adapters_or_exit(engine, settings), outage, stop
    )


@app.command("worker")
def worker_cmd(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, max=10_000, help="Jobs held at once (a batch)."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Drain what is claimable now, then exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tally as JSON.")] = False,
) -> None:
    """Claim admitted jobs, send their legs, unwind what filled alone, book the results.

    Without --once it waits for an unreachable database and survives outages."""
    import dataclasses
    import json

    from perpbot_db.runtime import assembly
    from perpbot_db.store import reconnect
    from workers.worker import Worker

    settings = settings_or_exit()
    require_exchanges(settings, "worker")
    log_setup()
    stop, on_stop = stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=not once, stop=None if once else stop, outage=outage) as engine:
        worker = Worker(
            engine,
            settings,
            adapters_or_exit(engine, settings),
            conninfo=assembly.conninfo(engine),
            concurrency=concurrency,
            outage=outage,
        )
        on_stop.append(worker.stop)
        if stop.is_set():
            worker.stop()
        if not once:
            err.print(f"{worker.identity}: {worker.concurrency} slot(s) (Ctrl-C to stop)")
        tally = worker.run(once=once)
    summary = dataclasses.asdict(tally)
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(
            f"claimed {tally.claimed}: completed {tally.completed}, failed {tally.failed}, "
            f"retrying {tally.retried}, handed back {tally.handed_back}, lost {tally.lost}"
        )


@app.command("run")
def run_cmd(
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes.")] = 2,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, max=10_000, help="Per worker.")
    ] = None,
    web: Annotated[
        bool, typer.Option("--web/--no-web", help="Serve the console (web_host:web_port).")
    ] = True,
    strategies: Annotated[
        bool,
        typer.Option(
            "--strategies/--no-strategies", help="Run the enabled strategies' job producers."
        ),
    ] = True,
    feed: Annotated[
        bool, typer.Option("--feed/--no-feed", help="Run the market feed ([feed], unless none).")
    ] = True,
) -> None:
    """The daemon: scheduler (with crash recovery) here, N worker processes restarted if
    they die, and the HTTP console; SIGTERM/SIGINT stops everything cleanly.  It brings
    `exchanges` in line with the settings first (audited), and survives database outages."""
    from perpbot_db.cli.db import sync_exchanges
    from perpbot_db.cli.risk import sync_limits
    from perpbot_db.runtime import daemon
    from perpbot_db.store import reconnect

    settings = settings_or_exit()
    require_exchanges(settings, "run")
    if feed and settings.feed.kind != "none":
        from perpbot_db.services.feeds import kind_problem

        problem = kind_problem(settings)
        if problem is not None:
            raise fail(f"run: {problem}")
    log_setup()
    stop, on_stop = stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=True, stop=stop, outage=outage) as engine:
        try:
            reconnect.Reconnect(outage, stop=stop).call(
                lambda: (
                    sync_exchanges(engine, settings, "run"),
                    sync_limits(engine, settings, "run"),
                )
            )
        except reconnect.Stopped:
            raise typer.Exit(0) from None
        url = engine.url.render_as_string(hide_password=False)
        args = () if concurrency is None else ("--concurrency", str(concurrency))
        sup = daemon.Supervisor(
            workers,
            daemon.child_env(url),
            worker_args=args,
            stop_timeout_s=settings.shutdown_grace_s,
        )
        on_stop.append(sup.stopping.set)
        if stop.is_set():
            sup.stopping.set()
        service, recovery = _scheduler_service(engine, settings, outage, stop)
        service.start()
        market_feed = _start_feed(engine, settings, outage, stop) if feed else None
        producers = _start_producers(engine, settings, outage, service) if strategies else None
        sup.start()
        console = _start_console(engine, settings) if web else None
        err.print(f"perpbot running: scheduler + {workers} worker(s) (Ctrl-C to stop)")
        sup.watch()
        stop.wait()
        codes = sup.stop()
        if console is not None:
            console.stop()
        if producers is not None:
            producers.stop()
        if market_feed is not None:
            market_feed.stop()
        service.stop()
        recovery.close()
    bad = {i: c for i, c in codes.items() if c not in (0, None)}
    err.print(f"stopped: workers exited {codes}, {sup.restarts} restart(s)")
    if bad:
        raise typer.Exit(1)


def _start_producers(
    engine: Engine,
    settings: Settings,
    outage: reconnect.Outage,
    scheduler_service: scheduler.SchedulerService,
) -> ProducerService | None:
    """The strategies' producers on the wall clock, when any strategy is enabled; they
    pass only while this daemon holds the producers' lock (one producer per cluster)."""
    from perpbot_db.runtime import assembly

    producers = assembly.producer_service(engine, settings, outage, scheduler_service.identity)
    if producers is None:
        return None
    producers.start()
    err.print(
        f"producers running every {settings.strategies.interval_s} s "
        "(while this process holds the producers' lock: one producer per cluster)"
    )
    return producers


def _start_feed(
    engine: Engine, settings: Settings, outage: reconnect.Outage, stop: threading.Event
) -> FeedService | None:
    """The market feed of ``[feed]`` in a thread, or None when ``feed.kind`` is "none"
    (or the daemon was told to stop while the database was away)."""
    from perpbot_db.runtime import assembly

    service = assembly.feed_service(engine, settings, outage, stop)
    if service is None:
        return None
    service.start()
    err.print(
        f"feed ({settings.feed.kind}): {len(settings.feed.symbols)} symbol(s) every "
        f"{settings.feed.interval_s:g} s"
    )
    return service


def _start_console(engine: Engine, settings: Settings) -> WebServer:
    from perpbot_db.runtime.web import WebServer

    server = WebServer(engine, settings)
    server.start()
    mode = "read-only: no api_token" if settings.api_token is None else "changes need the token"
    err.print(f"console on {server.address} ({mode}; Ctrl-C to stop)")
    return server


@app.command("web")
def web_cmd() -> None:
    """Serve the HTTP console alone (the JSON API) on web_host:web_port, 127.0.0.1 by
    default; every change needs PERPBOT_API_TOKEN (without one it is read-only)."""
    settings = settings_or_exit()
    log_setup()
    stop, _ = stop_on_signals()
    with connected(settings, daemon=True, stop=stop) as engine:
        server = _start_console(engine, settings)
        stop.wait()
        server.stop()
    err.print("console stopped")


def _print_tick(summary: dict[str, Any], as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(summary))
        return
    if not summary["ran"] or summary["skipped"]:
        out.print(f"tick skipped: {summary['skipped']}")
    out.print(
        f"admitted {summary['admitted']}, rejected {sum(summary['rejected'].values())}, "
        f"expired {summary['expired']}, re-scored {summary['rescored']}"
    )
    for code, n in sorted(summary["rejected"].items()):
        out.print(f"  rejected  {code}: {n}")
    for code, n in sorted(summary["held_pending"].items()):
        out.print(f"  held      {code}: {n}")
    for key in ("halted", "safe_mode_entered", "blacklisted"):
        if summary[key]:
            out.print(f"  {key}: {summary[key]}")
