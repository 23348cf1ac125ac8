"""``perpbot produce``: the strategies' job producers, alone (``perpbot run`` runs them too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from perpbot_db.cli.app import app, connected, err, fail, out, require_exchanges, settings_or_exit

if TYPE_CHECKING:
    from perpbot_db.services.producers import ProducerReport


@app.command("produce")
def produce_cmd(
    once: Annotated[
        bool, typer.Option("--once", help="One pass: print what each strategy did, exit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --once: JSON.")] = False,
) -> None:
    """Run the enabled strategies (funding_arb, arb, volume, hedge_rebalance) over the latest
    market snapshots and submit their jobs through the validated, idempotent path, every
    strategies.interval_s until SIGTERM, while this process holds the producers' lock (one
    producer per cluster, with perpbot run's).  Survives database outages."""
    from perpbot_db.cli.daemons import log_setup, stop_on_signals
    from perpbot_db.domain.clock import WallClock
    from perpbot_db.runtime import assembly
    from perpbot_db.runtime.scheduler import new_identity
    from perpbot_db.services.producers import ProducerService
    from perpbot_db.services.submit import SubmitError
    from perpbot_db.store import reconnect

    settings = settings_or_exit()
    require_exchanges(settings, "produce")
    clock = WallClock()
    if once:
        with connected(settings) as engine:
            try:
                report = ProducerService(engine, settings, clock).run_once(clock.now())
            except SubmitError as exc:
                raise fail(str(exc), 1) from None
        _print_report(report, as_json)
        if report.problems:
            raise typer.Exit(1)
        return
    if not settings.strategies.any_enabled:
        raise fail("setting strategies: every strategy is disabled; nothing to produce", 2)
    log_setup()
    stop, _ = stop_on_signals()
    outage = reconnect.Outage()
    with connected(settings, daemon=True, stop=stop, outage=outage) as engine:
        service = assembly.producer_service(engine, settings, outage, new_identity("produce"))
        assert service is not None, "a strategy is enabled"
        service.start()
        err.print(
            f"producers running every {settings.strategies.interval_s} s while this process "
            "holds the producers' lock (one producer per cluster; Ctrl-C to stop)"
        )
        stop.wait()
        service.stop()
        err.print(f"producers stopped after {service.passes} pass(es)")


def _print_report(report: ProducerReport, as_json: bool) -> None:
    import json

    summary: dict[str, Any] = report.summary()
    if as_json:
        print(json.dumps(summary))
        return
    out.print(f"submitted {summary['submitted']} job(s) at {summary['at']}")
    for name, part in summary["strategies"].items():
        out.print(
            f"  {name:<16} emitted {part['emitted']}, submitted {part['submitted']}, "
            f"already there {part['existing']}, invalid {part['invalid']}"
        )
        for key in part["keys"]:
            out.print(f"      job  {key}")
        for skip in part["skips"]:
            out.print(f"      skip {skip['symbol']}: {skip['reason']}", markup=False)
    for problem in summary["problems"]:
        err.print(f"perpbot: {problem['strategy']}: {problem['field']}: {problem['message']}")
