"""``perpbot demo``: a newcomer's first command — the whole system, live, for a minute.

It writes a demo settings file under ``PERPBOT_HOME`` when the user has none
(``PERPBOT_CONFIG`` unset and no ``./perpbot.toml``), starts and migrates the
database (embedded, or ``PERPBOT_DATABASE_URL``), runs what ``perpbot run`` runs plus
the producers and the scripted market (:mod:`perpbot_db.runtime.demo`), shows the
monitoring state every second (:func:`perpbot_db.cli.watch.render`), then prints a
summary of the run and how to explore the database with SQL.  Ctrl-C stops it
cleanly at any time.  The API token is made for the session and printed once, on
stdout only: no log line carries it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from perpbot_db.cli.app import app, connected, err, fail, out, require_exchanges, settings_or_exit

if TYPE_CHECKING:
    from perpbot_db.runtime.demo import Demo, Progress
    from perpbot_db.store.demo import RunSummary

SCENARIO_HELP = "calm: the risk manager holds a fast market and unwinds a failed leg; " \
    "stress: also the daily loss limit halts the system."  # fmt: skip


# The live view redraws below the dashboard and token lines, which are printed once.
SAVE_CURSOR = "\x1b7"
RESTORE_CURSOR = "\x1b8\x1b[J"  # back to the saved place, clear what is below


def _demo_config() -> Path | None:
    """The demo settings file to use when the user has none (written if missing), or None
    when the user has a settings file of their own."""
    from perpbot_db.runtime.demo import demo_toml
    from perpbot_db.settings_light import config_path

    path, explicit = config_path(os.environ)
    if explicit or path.exists():
        return None
    home = Path(os.environ.get("PERPBOT_HOME") or "~/.perpbot").expanduser()
    config = home / "demo.toml"
    if not config.exists():
        home.mkdir(parents=True, exist_ok=True)
        config.write_text(demo_toml())
    return config


@app.command("demo")
def demo_cmd(
    duration: Annotated[
        float, typer.Option("--duration", min=1, max=86_400, help="Seconds to run.")
    ] = 60.0,
    scenario: Annotated[str, typer.Option("--scenario", help=SCENARIO_HELP)] = "calm",
    workers: Annotated[int, typer.Option("--workers", min=1, max=16, help="Worker processes.")] = 3,
    web: Annotated[bool, typer.Option("--web/--no-web", help="Serve the console.")] = True,
    until_strategies: Annotated[int, typer.Option("--until-strategies", hidden=True, min=0)] = 0,
    until_unwound: Annotated[bool, typer.Option("--until-unwound", hidden=True)] = False,
    until_halted: Annotated[bool, typer.Option("--until-halted", hidden=True)] = False,
    max_duration: Annotated[
        float, typer.Option("--max-duration", hidden=True, min=1, max=86_400)
    ] = 600.0,
) -> None:
    """Run the whole system on paper exchanges for --duration seconds, live: feeds,
    strategies, scheduler, workers and the web console; then a summary.  The database
    stays for SQL exploration."""
    from perpbot_db.runtime import demo as runtime_demo

    if scenario not in runtime_demo.SCENARIOS:
        raise fail(f"--scenario: must be one of {', '.join(runtime_demo.SCENARIOS)}")
    config = _demo_config()
    if config is not None:
        os.environ["PERPBOT_CONFIG"] = str(config)
    if scenario == "stress":
        os.environ.update(runtime_demo.STRESS_ENV)  # the workers read them too
    settings = settings_or_exit()
    require_exchanges(settings, "demo")
    if settings.feed.kind != "none":
        from perpbot_db.services.feeds import kind_problem

        problem = kind_problem(settings)
        if problem is not None:
            raise fail(f"demo: {problem}")
    plan = runtime_demo.DemoPlan(
        duration_s=duration,
        scenario="stress" if scenario == "stress" else "calm",
        workers=workers,
        web=web,
        until_strategies=until_strategies,
        until_unwound=until_unwound,
        until_halted=until_halted,
        max_s=max(max_duration, duration),
    )
    err.print(
        f"settings: {config or settings.config or 'environment'}"
        + (" (written for the demo)" if config is not None else ""),
        highlight=False,
    )
    _run(settings, plan)


def _run(settings: Any, plan: Any) -> None:
    import logging

    from perpbot_db.cli import watch
    from perpbot_db.cli.daemons import adapters_or_exit, stop_on_signals
    from perpbot_db.cli.db import sync_exchanges
    from perpbot_db.cli.risk import sync_limits
    from perpbot_db.runtime import demo as runtime_demo
    from perpbot_db.runtime import migrate

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # a tick skipped while the previous one runs is routine on a loaded machine
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    stop, _ = stop_on_signals()
    session, token = runtime_demo.session_settings(settings, web=plan.web)
    with connected(session, upgrade=True, daemon=True) as engine:
        if migrate.current_revision(engine) != migrate.head_revision():
            migrate.upgrade(engine)
        err.print(f"schema at {migrate.current_revision(engine)}", highlight=False)
        sync_exchanges(engine, session, "demo")
        sync_limits(engine, session, "demo")
        since = runtime_demo.prepare(engine, plan)
        demo = runtime_demo.Demo(
            engine,
            session,
            plan,
            adapters_or_exit(engine, session),
            since=since,
            stop=stop,
            log_dir=session.home_dir / "demo-logs",
        )
        try:
            demo.start()
            if sys.stdout.isatty():  # the lines below stay on top of the live view
                print(watch.CLEAR, end="")
            if demo.console is not None:
                out.print(f"dashboard: {demo.console.address}", highlight=False)
            if token is not None:  # once, on the terminal: never in a log
                out.print(f"api token (this session only): {token}", highlight=False)
            if sys.stdout.isatty():
                print(SAVE_CURSOR, end="", flush=True)
            _live(demo, stop)
        finally:
            codes = demo.stop()
        summary = demo.summary()
        db_url = engine.url.render_as_string(hide_password=True)
    _print_summary(demo, summary, codes)
    _print_sql_help(settings, db_url)
    if not plan_met(demo, summary):
        raise typer.Exit(1)


def plan_met(demo: Demo, summary: RunSummary) -> bool:
    """The hidden ``--until-*`` conditions held by the end (a run stopped by its hang
    guard or by Ctrl-C before them exits 1 when they were asked for)."""
    plan = demo.plan
    return (
        len(summary.completed_by_strategy) >= plan.until_strategies
        and (summary.unwound_jobs > 0 or not plan.until_unwound)
        and (summary.halt_reason is not None or not plan.until_halted)
    )


def _live(demo: Demo, stop: Any) -> None:
    """The live view every second until the run is finished, its hang guard passes, or
    Ctrl-C (``stop``)."""
    import json

    from perpbot_db.cli import watch
    from perpbot_db.runtime import reader
    from perpbot_db.services import monitor

    config = monitor.MonitorConfig.from_settings(demo.settings, interval_s=1.0)
    tally = monitor.EventTally(config.events_window)
    redraw = sys.stdout.isatty()
    url = demo.engine.url.render_as_string(hide_password=False)
    started = time.monotonic()
    with reader.reading(url, demo.settings.home_dir) as conn:
        conn.rollback()
        while not stop.is_set():
            progress = demo.progress()
            if demo.finished(progress):
                break
            if time.monotonic() - started > demo.plan.max_s:
                err.print(f"demo: stopped by its guard after {demo.plan.max_s:g} s")
                break
            head = _header(demo, progress)
            if redraw:
                state = json.loads(monitor.build_state(conn, config, tally=tally).to_json())
                conn.rollback()  # the next build takes its own snapshot
                print(RESTORE_CURSOR + head + "\n\n" + watch.render(state), flush=True)
            else:
                print(head.splitlines()[0], flush=True)
            stop.wait(1.0)


def _header(demo: Demo, progress: Progress) -> str:
    plan = demo.plan
    console = demo.console
    lines = [
        f"perpbot demo ({plan.scenario}): {progress.elapsed_s:.0f} s of {plan.duration_s:g} s; "
        f"completed jobs from {len(progress.strategies)} strateg"
        f"{'y' if len(progress.strategies) == 1 else 'ies'} "
        f"({', '.join(progress.strategies) or 'none yet'}); {progress.unwound_jobs} unwound"
        + ("; HALTED" if progress.halted else ""),
        f"dashboard: {console.address if console is not None else 'off (--no-web)'}"
        + (f"; fast market scripted on {demo.fast_symbol}" if demo.fast_symbol else "")
        + "; Ctrl-C stops",
    ]
    return "\n".join(lines)


def _print_summary(demo: Demo, s: RunSummary, codes: dict[int, int | None]) -> None:
    from perpbot_db.cli import text

    lines: list[str | list[str]] = [
        "",
        f"demo summary ({demo.plan.scenario}, {demo.plan.workers} worker(s); workers exited "
        f"{codes})",
        "jobs by status: " + (", ".join(f"{k} {v}" for k, v in s.jobs_by_status.items()) or "none"),
        "completed by strategy: "
        + (", ".join(f"{k} {v}" for k, v in s.completed_by_strategy.items()) or "none"),
        f"volume ${text.usd(str(s.volume_usd))}, fees ${text.usd(str(s.fees_usd))}, "
        f"PnL ${text.usd(str(s.realized_pnl_usd))}",
        f"unwinds: {s.unwound_jobs} job(s) had a filled leg unwound",
        "pending jobs held now by code: "
        + (", ".join(f"{k} {v}" for k, v in s.holds.items()) or "none"),
        "expired (by the hold they had), rejected and failed, by code: "
        + (", ".join(f"{a} {c} {n}" for a, c, n in s.refusals) or "none"),
        "protection locks: " + (", ".join(f"{sc} {t} {c}" for sc, t, c in s.locks) or "none"),
        "loss limit: "
        + (f"halted the system ({s.halt_reason})" if s.halt_reason else "did not halt"),
    ]
    out.print(text.render(lines), highlight=False, markup=False)


def _print_sql_help(settings: Any, db_url: str) -> None:
    embedded = settings.database_url is None
    lines = [
        "",
        f"the database stays for SQL ({db_url}):",
        *(
            ["  perpbot db start    # the embedded server, shared, until `perpbot db stop`"]
            if embedded
            else []
        ),
        "  psql \"$(perpbot db url --show-password | sed 's/+psycopg//')\"",
        "  SELECT strategy, status, count(*) FROM hedge_jobs_all GROUP BY 1, 2;",
        "  SELECT * FROM audit_daily_pnl;",
        "  SELECT * FROM audit_holds_now ORDER BY jobs DESC, code;",
        "  SELECT at, actor, action, reason FROM control_events ORDER BY at DESC LIMIT 10;",
        "more queries: docs/audit.md",
    ]
    out.print("\n".join(lines), highlight=False, markup=False)
