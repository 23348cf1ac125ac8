"""``perpbot status --watch``: the monitoring state as a live terminal view.

The same state the HTTP console serves (:mod:`perpbot_db.services.monitor`), built
every ``--interval`` seconds on one read-only connection (each build its own
snapshot), redrawn in place on a terminal; with ``--json`` one state per line, for
scripts.  Ctrl-C ends it (exit 0).  :func:`render` is pure: it turns the state's
JSON into text.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from perpbot_db.cli import text

if TYPE_CHECKING:
    from perpbot_db.settings import Settings

CLEAR = "\x1b[H\x1b[2J"


def _num(value: Any) -> str:
    return "-" if value is None else text.usd(value)


def render(state: Mapping[str, Any]) -> str:
    """The state (its JSON form, ``by_alias``) as the watch view's text."""
    g = state["global"]
    health = state["health"]
    jobs = state["jobs"]
    risk = state["risk"]
    proc = state["processes"]
    loss = f"{float(g['loss_used_ratio']) * 100:.1f} %"
    reasons = "; ".join(r["text"] for r in health["reasons"]) or "all clear"
    lines: list[Any] = [
        f"perpbot {g['status']} ({g['risk_mode']}) - health {health['verdict']}: {reasons}",
        f"today {g['day']}: PnL ${_num(g['realized_pnl_usd'])}, volume ${_num(g['volume_usd'])}, "
        f"fees ${_num(g['fees_usd'])}, loss used ${_num(g['loss_used_usd'])} of "
        f"${_num(g['daily_loss_limit_usd'])} ({loss})",
        f"jobs: {jobs['pending']} pending, {jobs['admitted']} admitted, {jobs['running']} running;"
        f" today {jobs['completed_today']} completed, {jobs['failed_today']} failed",
        f"leader {proc['leader'] or 'none'}, last tick "
        + ("never" if proc["tick_age_s"] is None else f"{proc['tick_age_s']:.1f}s ago")
        + f", {proc['live_workers']} live worker(s)",
        "",
        text.table(
            ("exchange", "equity $", "volume $", "arbitrage $", "reserve $", "in flight $"),
            (
                (
                    c["exchange"],
                    text.usd(c["equity_usd"]),
                    *(
                        f"{text.usd(t['used_usd'])} / {text.usd(t['budget_usd'])}"
                        for t in sorted(c["tiers"], key=lambda t: t["tier"] != "volume")
                        if t["tier"] in ("volume", "arbitrage")
                    ),
                    text.usd(c["reserve_usd"]),
                    f"{text.usd(c['inflight_usd'])} / {text.usd(c['inflight_limit_usd'])}",
                )
                for c in state["capital"]
            ),
            title="capital (used / budget)",
            right=(1, 2, 3, 4, 5),
        ),
        "",
        text.table(
            ("exchange", "latency ms", "safe mode", "jobs", "market age s", "stale"),
            (
                (
                    e["name"],
                    "-" if e["latency_ms"] is None else e["latency_ms"],
                    (e["safe_mode_reason"] or "yes") if e["safe_mode"] else "no",
                    f"{e['concurrent_jobs']} / {e['max_concurrent_jobs']}",
                    "-" if e["market_age_s"] is None else f"{e['market_age_s']:.1f}",
                    ", ".join(e["stale_symbols"]) or "-",
                )
                for e in state["exchanges"]
            ),
            title="exchanges",
            right=(1, 3, 4),
        ),
    ]
    if jobs["running_jobs"]:
        lines += [
            "",
            text.table(
                ("id", "symbol", "notional $", "age s", "legs"),
                (
                    (
                        r["id"],
                        r["symbol"],
                        text.usd(r["notional_usd"]),
                        f"{r['age_s']:.1f}",
                        ", ".join(
                            f"{leg['side']} {text.quantity(leg['quantity'])}@{leg['exchange']}"
                            f" {leg['status']}"
                            for leg in r["legs"]
                        ),
                    )
                    for r in jobs["running_jobs"][:10]
                ),
                title="running (oldest first)",
                right=(0, 2, 3),
            ),
        ]
    if risk["holds"]:
        lines += [
            "",
            text.table(
                ("held by", "jobs", "e.g."),
                ((h["code"], h["jobs"], h["example"]) for h in risk["holds"]),
                title="pending jobs held",
                right=(1,),
            ),
        ]
    if risk["denials"]:
        lines += [
            "",
            text.table(
                ("action", "code", "events"),
                ((d["action"], d["code"] or d["held_code"] or "-", d["events"])
                 for d in risk["denials"]),
                title=f"denials, last {risk['window_s'] / 60:.0f} min",
                right=(2,),
            ),
        ]  # fmt: skip
    if risk["locks"]:
        lines += [
            "",
            text.table(
                ("scope", "target", "code", "reason", "until"),
                ((lk["scope"], lk["target"], lk["code"], lk["reason"], text.when(lk["until"]))
                 for lk in risk["locks"]),
                title="protection locks",
            ),
        ]  # fmt: skip
    lines += ["", f"built {text.when(state['built_at'])} in {state['build_ms']:.0f} ms"]
    return text.render(lines)


def watch(
    settings: Settings, *, interval_s: float, as_json: bool, count: int | None = None
) -> None:
    """Build and show the state every ``interval_s`` until Ctrl-C (or ``count`` times)."""
    from perpbot_db.cli.reads import reading
    from perpbot_db.services import monitor

    config = monitor.MonitorConfig.from_settings(settings, interval_s=interval_s)
    tally = monitor.EventTally(config.events_window)
    redraw = sys.stdout.isatty() and not as_json
    shown = 0
    try:
        with reading() as conn:
            conn.rollback()  # every build takes its own snapshot (and its own now())
            while count is None or shown < count:
                state = monitor.build_state(conn, config, tally=tally)
                data = json.loads(state.to_json())
                if as_json:
                    print(json.dumps(data), flush=True)
                else:
                    print((CLEAR if redraw else "") + render(data), flush=True)
                shown += 1
                if count is None or shown < count:
                    time.sleep(interval_s)
    except KeyboardInterrupt:
        return
