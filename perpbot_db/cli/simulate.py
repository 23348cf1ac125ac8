"""``perpbot simulate``: the engine over hours of market on a virtual clock.

The wiring lives here because this is the layer that may import both the
runtime (the scratch database, :mod:`perpbot_db.runtime.simclock`) and the
worker: the loop itself is :func:`perpbot_db.services.simulate.run`.
:func:`run_simulation` is what the command, the tests and ``bench/simulate.py``
call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from perpbot_db.cli.app import app, err, fail, out, require_exchanges, settings_or_exit

if TYPE_CHECKING:
    from sqlalchemy import URL

    from perpbot_db.runtime.simclock import SimDatabase
    from perpbot_db.services.simulate import ModeReport, ProgressFn, SimOptions
    from perpbot_db.settings import Settings
    from workers.recovery import Recovery
    from workers.worker import Worker

MODES = ("conservative", "balanced", "aggressive", "volume_focused")


class _Stepper:
    """The clock, the worker and the leader's chores, as the loop drives them."""

    def __init__(self, sim: SimDatabase, worker: Worker, recovery: Recovery) -> None:
        self.sim = sim
        self.worker = worker
        self.recovery = recovery

    def work(self) -> None:
        self.worker.drain()

    def housekeeping(self, ready: Callable[[], None]) -> bool:
        from perpbot_db.services import protect

        recovered = self.recovery.drain(ready)
        ended = protect.expire_once(self.sim.engine, actor="simulate")
        return bool(recovered or ended.released or ended.safe_mode_left)


def _no_sleep(_: float) -> None:
    """Paper latency on a virtual clock: the order arrives at once."""


def run_simulation(
    settings: Settings,
    server: URL,
    options: SimOptions,
    *,
    market_file: Path | None = None,
    progress: ProgressFn | None = None,
    timer: Callable[[], float] | None = None,
) -> ModeReport:
    """One mode over a fresh scratch database on ``server`` (dropped at the end)."""
    from perpbot_db.domain.clock import VirtualClock
    from perpbot_db.runtime import simclock
    from perpbot_db.runtime.scheduler import tune_collector
    from perpbot_db.services import simulate
    from perpbot_db.services.producers import ProducerService
    from workers.recovery import Recovery
    from workers.venues.adapters import paper_config
    from workers.venues.exchange import ExchangeAdapter
    from workers.venues.paper import PaperExchange
    from workers.worker import Worker

    tune_collector()  # a step makes thousands of short-lived decimals and rows, as a tick does
    recorded = None if market_file is None else simulate.RecordedMarket.from_file(market_file)
    start = options.start or (recorded.start if recorded else simulate.DEFAULT_START)
    market: simulate.MarketInput = recorded or simulate.paper_market(
        settings, sorted(settings.exchanges), seed=options.seed, symbols=options.symbols
    )
    # The strategies of ``perpbot run`` with their settings; --seed seeds their draws too.
    settings = settings.model_copy(
        update={"strategies": settings.strategies.model_copy(update={"seed": options.seed})}
    )
    clock = VirtualClock(start)
    with simclock.scratch_database(server, settings, start) as sim:
        config = paper_config(settings)
        adapters: dict[str, ExchangeAdapter] = {
            name: PaperExchange(name, sim.engine, config, clock=clock.now, sleep=_no_sleep)
            for name in sorted(settings.exchanges)
        }
        worker = Worker(sim.engine, settings, adapters, identity="simulate:worker")
        recovery = Recovery(sim.engine, settings, adapters)
        producers = ProducerService(sim.engine, settings, clock)
        try:
            return simulate.run(
                sim.engine,
                settings,
                _Stepper(sim, worker, recovery),
                clock,
                replace(options, start=start),
                market,
                producers,
                progress=progress,
                timer=timer,
            )
        finally:
            worker.executor.close()
            recovery.close()


def _progress(mode: str) -> ProgressFn:
    started = time.monotonic()
    shown = [started]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - shown[0] < 1.0:
            return
        shown[0] = now
        rate = done / max(now - started, 1e-9)
        err.print(
            f"simulate {mode}: {done}/{total} steps ({100 * done // total} %), {rate:,.0f} steps/s",
            highlight=False,
        )

    return show


def _table(reports: Sequence[ModeReport]) -> None:
    from rich.table import Table

    table = Table(title=f"simulation: seed {reports[0].seed}, {reports[0].steps} steps")
    table.add_column("")
    for r in reports:
        table.add_column(r.mode, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("submitted", [str(r.submitted) for r in reports]),
        ("admitted", [str(r.admitted) for r in reports]),
        ("completed", [str(r.by_status.get("completed", 0)) for r in reports]),
        ("failed", [str(r.by_status.get("failed", 0)) for r in reports]),
        ("volume USD", [f"{r.volume_usd:,.2f}" for r in reports]),
        ("fees USD", [f"{r.fees_usd:,.2f}" for r in reports]),
        ("realized PnL USD", [f"{r.realized_pnl_usd:,.2f}" for r in reports]),
    ]
    codes = sorted({c for r in reports for c in r.holds})
    rows += [(f"held {c} (job-ticks)", [str(r.holds.get(c, 0)) for r in reports]) for c in codes]
    denied = sorted({c for r in reports for c in r.denials})
    rows += [(d, [str(r.denials.get(d, 0)) for r in reports]) for d in denied]
    names = [p.exchange for p in reports[0].peak_capital]
    for name in names:
        cells = []
        for r in reports:
            peak = next(p for p in r.peak_capital if p.exchange == name)
            share = peak.peak_reserved_usd / peak.equity_usd if peak.equity_usd else 0
            cells.append(f"{peak.peak_reserved_usd:,.0f} ({share:.1%})")
        rows.append((f"peak capital {name}", cells))
    rows.append(("ledger sha256", [r.digest[:16] for r in reports]))
    for label, cells in rows:
        table.add_row(label, *cells)
    out.print(table)


@app.command("simulate")
def simulate_cmd(
    hours: Annotated[float, typer.Option("--hours", help="Virtual hours to run.")],
    mode: Annotated[
        str, typer.Option("--mode", help=f"Risk mode: {', '.join(MODES)}.")
    ] = "balanced",
    compare_modes: Annotated[
        bool, typer.Option("--compare-modes", help="Run all four modes on the same input.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the market and the jobs.")] = 1,
    step_s: Annotated[float, typer.Option("--step-s", help="Virtual seconds a step.")] = 1.0,
    symbols: Annotated[
        int | None,
        typer.Option(
            "--symbols",
            help="The paper market's first N default symbols (1-20); default: [feed] symbols.",
        ),
    ] = None,
    market_file: Annotated[
        Path | None,
        typer.Option("--market", help="A recorded market (perpbot market load's JSON lines)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Run the tick, the risk manager, the worker and the paper exchanges on a virtual
    clock in a scratch database; print PnL, volume, fees, holds, denials and capital."""
    import json

    from sqlalchemy.exc import DBAPIError

    from perpbot_db.runtime import db
    from perpbot_db.services.simulate import MAX_SYMBOLS, SimOptions

    if not hours > 0:
        raise fail(f"--hours must be above 0, got {hours}")
    if not step_s > 0:
        raise fail(f"--step-s must be above 0, got {step_s}")
    if mode not in MODES:
        raise fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if symbols is not None and not 1 <= symbols <= MAX_SYMBOLS:
        raise fail(f"--symbols must be within 1-{MAX_SYMBOLS}, got {symbols}")
    if market_file is not None and not market_file.is_file():
        raise fail(f"--market {market_file}: no such file")
    settings = settings_or_exit()
    require_exchanges(settings, "simulate")
    modes = MODES if compare_modes else (mode,)
    reports = []
    try:
        with db.database_url(settings) as server:
            for name in modes:
                options = SimOptions(
                    hours=hours, mode=name, seed=seed, step_s=step_s, symbols=symbols
                )
                started = time.monotonic()
                report = run_simulation(
                    settings, server, options, market_file=market_file, progress=_progress(name)
                )
                report.wall_s = time.monotonic() - started
                reports.append(report)
    except ValueError as exc:  # a bad recorded market names its line and field
        raise fail(str(exc)) from None
    except DBAPIError as exc:  # e.g. a role that may not CREATE DATABASE
        first = str(exc.orig or exc).strip().splitlines()[0]
        raise fail(
            f"simulate runs in a scratch database it creates on the server: {first}", 1
        ) from None
    if as_json:
        print(
            json.dumps(
                {"modes": [r.summary() | {"wall_s": round(r.wall_s or 0, 3)} for r in reports]}
            )
        )
    else:
        _table(reports)
