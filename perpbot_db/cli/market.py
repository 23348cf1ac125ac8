"""``perpbot market load``: the snapshots the risk manager scores from."""

from __future__ import annotations

from typing import Annotated

import typer

from perpbot_db.cli.app import connected, err, fail, market_app, out, settings_or_exit
from perpbot_db.cli.jobs import open_input, print_problems


@market_app.command("load")
def market_load(
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="JSON lines, one snapshot each.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Upsert market snapshots, all or nothing: any bad line and nothing is written."""
    import json

    from perpbot_db.services import market

    settings = settings_or_exit()
    stream, _ = open_input(source)
    try:
        with connected(settings) as engine, stream:
            result = market.load_lines(
                engine, stream, max_future_skew_s=settings.market_max_future_skew_s
            )
    except market.LoadError as exc:
        raise fail(f"{exc}; nothing was written", 1) from None
    print_problems(result.report)
    if as_json:
        print(
            json.dumps(
                {
                    "lines": result.lines,
                    "upserted": result.upserted,
                    "stale_skipped": result.stale_skipped,
                    "invalid": result.report.bad_lines,
                    "problems_total": result.report.total,
                    "written": result.written,
                }
            )
        )
    elif result.written:
        out.print(f"loaded {result.upserted} snapshot(s), {result.stale_skipped} older than stored")
    if not result.written:
        err.print(f"perpbot: {result.report.bad_lines} bad line(s); nothing was written")
        raise typer.Exit(1)
