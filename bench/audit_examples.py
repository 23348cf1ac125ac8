"""Fill a database through the normal path and show every SQL audit view on it.

    python bench/audit_examples.py                         # print the examples
    python bench/audit_examples.py --write docs/audit.md   # regenerate the doc's examples
    python bench/audit_examples.py --database-url URL      # on an empty database of yours

Without ``--database-url`` an embedded PostgreSQL starts in a temporary
directory (removed at the end).  The run is what an operator's day looks like,
done by the code the daemons run (submission, the admission tick, a worker on
the paper exchange, cancel, the archiver), not by SQL written for the occasion:

1. jobs A and B (arbitrage, volume) complete; job C fails (its okx order is
   refused, the binance order that filled is unwound); job R's orders are all
   refused, so it goes back to pending for a second attempt; job D is too large
   for bybit's single-job cap and is rejected.  A, B, C and D then move to the
   archive;
2. R (second attempt) and E complete; I is admitted then cancelled; G and H
   wait (no ETH market data: ``market_data_missing``);
3. G's deadline passes and the next tick expires it; F is admitted and keeps
   its capital.

Then, for the two views that are empty on a healthy database, a breach is
planted by hand (a counter changed, a reservation left active on a finished
job and one in the archive for a job that does not exist) and shown.

``--write`` replaces each block between ``<!-- example NAME -->`` and
``<!-- /example -->`` in the doc with the query and its output; the prose
around the blocks is left alone.  Output is aligned like psql's; numbers are
shown without trailing zeros, times in UTC to the millisecond, long cells cut.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere in the checkout

from perpbot_db.domain.execution import client_order_id  # noqa: E402
from perpbot_db.services import archive, cancel, market, tick  # noqa: E402
from perpbot_db.services.submit import submit_lines  # noqa: E402
from perpbot_db.settings import Settings  # noqa: E402
from workers.venues.adapters import build_adapters  # noqa: E402
from workers.worker import Worker  # noqa: E402

#: The exchanges the scenario trades on (the tests' configuration has the same three).
CONFIG = """
[exchanges.binance]
equity_usd = 50000
[exchanges.okx]
equity_usd = 40000
max_concurrent_jobs = 3
[exchanges.bybit]
equity_usd = 30000
"""
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"  # no market data for it: its jobs are held
PRICE = Decimal(97000)
ACTOR = {"actor": "auditor-demo", "reason": "example run"}
CELL = 72  # longest cell shown
DEADLINE_S = 60  # job G's: the second tick surely comes first, the third is dated then


# -- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What the run did: job ids by role and database times between its steps."""

    jobs: Mapping[str, int]
    started: datetime  # before anything was written
    admitted: datetime  # after the first tick: A, B, C and R hold capital
    worked: datetime  # after the first worker run: all of it released
    finished: datetime  # the last tick's time (G's deadline: ahead of the clock)

    def job(self, role: str) -> int:
        return self.jobs[role]


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("SELECT clock_timestamp()")).scalar_one()  # type: ignore[no-any-return]


def fresh_market(engine: Engine, at: datetime) -> None:
    """Calm BTC snapshots on every exchange, observed ``at``."""
    snaps = [
        market.SnapshotIn(
            exchange=exchange,
            symbol=BTC,
            bid=PRICE,
            ask=PRICE + PRICE / 100_000,
            last=PRICE,
            funding_rate=Decimal("0.0001"),
            volatility=Decimal("0.005"),
            latency_ms=Decimal(40),
            observed_at=at,
        )
        for exchange in ("binance", "okx", "bybit")
    ]
    with engine.begin() as conn:
        market.upsert_snapshots(conn, snaps, at)


def leg(exchange: str, side: str, quantity: str) -> dict[str, str]:
    return {"exchange": exchange, "side": side, "quantity": quantity}


def job_line(key: str, legs: list[dict[str, str]], **fields: Any) -> str:
    body: dict[str, Any] = {
        "strategy": "arb",
        "symbol": BTC,
        "notional_usd": 970,
        "expected_edge_bps": 25,
        "expected_pnl_usd": 2.4,
        "legs": legs,
        "idempotency_key": f"audit-demo-{key}",
        **fields,
    }
    return json.dumps(body, default=_json) + "\n"


def _json(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} in a job line")


def submit(engine: Engine, settings: Settings, lines: Mapping[str, str]) -> dict[str, int]:
    result = submit_lines(engine, list(lines.values()), settings, datetime.now(UTC))
    if not result.written:
        raise RuntimeError(f"submission refused: {result.report}")
    return dict(zip(lines, result.job_ids, strict=True))


def run_tick(engine: Engine, settings: Settings, now: datetime | None = None) -> tick.TickReport:
    """A tick at ``now`` (default: the database clock) on market data observed then, so
    no hold comes from data gone stale while a loaded machine got to the tick."""
    now = now or db_now(engine)
    fresh_market(engine, now)
    report = tick.run_tick(engine, tick.TickConfig.from_settings(settings), now=now)
    if not report.ran or report.skipped:
        raise RuntimeError(f"the tick did not run: {report.summary()}")
    return report


def work(engine: Engine, settings: Settings, faults: Mapping[str, str]) -> None:
    Worker(engine, settings, build_adapters(engine, settings, faults=faults)).run(once=True)


def coid(settings: Settings, job_id: int, leg_index: int) -> str:
    """The client order id of a job's leg in its first attempt (for a forced fault)."""
    return client_order_id(settings.client_order_prefix, job_id, leg_index, 1)


def expect(report: tick.TickReport, **wanted: object) -> None:
    for name, value in wanted.items():
        got = getattr(report, name)
        if got != value:
            raise RuntimeError(f"tick: {name} is {got!r}, expected {value!r}: {report.summary()}")


def fill(engine: Engine, settings: Settings) -> Scenario:
    """The run of the module's docstring, on a migrated database with the three exchanges."""
    settings = settings.model_copy(
        update={
            "retry_backoff_s": 0.0,
            "paper": settings.paper.model_copy(update={"latency_ms": 0}),
        }
    )
    started = db_now(engine)
    jobs: dict[str, int] = {}

    # 1. two complete, one fails (unwound), one is retried, one is rejected; all archived
    jobs.update(
        submit(
            engine,
            settings,
            {
                "A": job_line("A", [leg("binance", "buy", "0.01"), leg("okx", "sell", "0.01")]),
                "B": job_line(
                    "B",
                    [leg("binance", "buy", "0.02"), leg("bybit", "sell", "0.02")],
                    strategy="volume",
                    notional_usd=1940,
                    expected_edge_bps=15,
                    expected_pnl_usd=2.9,
                ),
                "C": job_line("C", [leg("binance", "buy", "0.01"), leg("okx", "sell", "0.01")]),
                "R": job_line("R", [leg("okx", "buy", "0.01"), leg("bybit", "sell", "0.01")]),
                "D": job_line(
                    "D",
                    [leg("bybit", "buy", "0.05"), leg("binance", "sell", "0.05")],
                    notional_usd=4850,
                    expected_edge_bps=40,
                    expected_pnl_usd=19.4,
                ),
            },
        )
    )
    a, b, c, r, d = (jobs[k] for k in "ABCRD")
    report = run_tick(engine, settings)
    expect(report, admitted=sorted([a, b, c, r]), rejected={d: "capital_single_job_cap"})
    admitted = db_now(engine)
    faults = {
        coid(settings, c, 1): "reject",  # its binance order fills and is unwound
        coid(settings, r, 0): "reject",  # nothing fills: another attempt
        coid(settings, r, 1): "reject",
    }
    work(engine, settings, faults)
    worked = db_now(engine)
    moved = archive.archive_finished(engine, after_s=0, batch=100).jobs
    if moved != 4:
        raise RuntimeError(f"the archiver moved {moved} jobs, expected A, B, C and D")

    # 2. the retry and E complete, I is cancelled once admitted, G and H are held
    now = db_now(engine)
    eth = [leg("binance", "buy", "0.3"), leg("okx", "sell", "0.3")]
    g_deadline = now + timedelta(seconds=DEADLINE_S)
    jobs.update(
        submit(
            engine,
            settings,
            {
                "E": job_line("E", [leg("okx", "buy", "0.01"), leg("bybit", "sell", "0.01")]),
                "G": job_line("G", eth, symbol=ETH, notional_usd=930, deadline=g_deadline),
                "H": job_line(
                    "H", eth, symbol=ETH, notional_usd=930, deadline=now + timedelta(hours=1)
                ),
                "I": job_line(
                    "I",
                    [leg("binance", "sell", "0.01"), leg("bybit", "buy", "0.01")],
                    strategy="funding_arb",
                ),
            },
        )
    )
    e, g, i = (jobs[k] for k in "EGI")
    report = run_tick(engine, settings)
    expect(report, admitted=sorted([r, e, i]), held={"market_data_missing": 2})
    cancel.cancel(engine, i, **ACTOR)
    work(engine, settings, {})

    # 3. a tick at G's deadline expires it (no waiting: the tick takes its time as a
    # parameter); F is admitted then and keeps its capital
    jobs.update(
        submit(
            engine,
            settings,
            {
                "F": job_line(
                    "F",
                    [leg("binance", "buy", "0.01"), leg("okx", "sell", "0.01")],
                    strategy="funding_arb",
                )
            },
        )
    )
    report = run_tick(engine, settings, now=g_deadline)
    expect(report, admitted=[jobs["F"]], expired=[g])
    return Scenario(jobs, started=started, admitted=admitted, worked=worked, finished=g_deadline)


def plant_breaches(conn: Connection, run: Scenario) -> None:
    """By hand, for the examples of the two views a healthy run leaves empty: okx's fees
    of the last day raised by 0.5 USD, a reservation left active on the completed job E,
    and an active one in the archive for a job that never existed."""
    conn.execute(
        text(
            "UPDATE daily_counters SET fees_usd = fees_usd + 0.5 "
            "WHERE scope = 'okx' AND day = (SELECT max(day) FROM daily_counters)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO capital_reservations (job_id, exchange, tier, amount_usd) "
            "VALUES (:e, 'okx', 'arbitrage', 970)"
        ),
        {"e": run.job("E")},
    )
    conn.execute(
        text(
            "INSERT INTO capital_reservations_archive "
            "(id, job_id, exchange, tier, amount_usd, status, created_at) "
            "VALUES (999999, 999999, 'bybit', 'volume', 500, 'active', now())"
        )
    )


# -- the examples ----------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return f"'{value.astimezone(UTC).isoformat(sep=' ')}'"


def _day(value: datetime) -> str:
    return f"'{value.astimezone(UTC).date().isoformat()}'"


@dataclass(frozen=True)
class Example:
    name: str
    sql: Callable[[Scenario], str]
    planted: bool = False  # shown after :func:`plant_breaches`


EXAMPLES: tuple[Example, ...] = (
    Example(
        "job_timeline",
        lambda run: (
            "SELECT at, kind, exchange, to_status, actor, code, what\n"
            "FROM audit_job_timeline\n"
            f"WHERE job_id = {run.job('C')}\n"
            "ORDER BY at, kind_order, ref_id;"
        ),
    ),
    Example(
        "capital_now",
        lambda run: (
            "SELECT exchange, tier, budget_usd, held_usd, reservations, jobs, used_pct\n"
            "FROM audit_capital_now\n"
            "ORDER BY exchange, tier;"
        ),
    ),
    Example(
        "capital_at",
        lambda run: (
            f"SELECT * FROM audit_capital_at({_ts(run.admitted)})\nORDER BY exchange, tier;"
        ),
    ),
    Example(
        "daily_pnl",
        lambda run: (
            f"SELECT * FROM audit_daily_pnl\nWHERE day >= {_day(run.started)}\nORDER BY day, scope;"
        ),
    ),
    Example(
        "decisions",
        lambda run: (
            "SELECT outcome, code, jobs, last_job_id, last_context\n"
            f"FROM audit_decisions({_ts(run.started)}, 'infinity')\n"
            "ORDER BY outcome, jobs DESC, code;"
        ),
    ),
    Example(
        "holds_now",
        lambda run: "SELECT * FROM audit_holds_now ORDER BY jobs DESC, code;",
    ),
    Example(
        "counter_reconciliation",
        lambda run: (
            "SELECT day, scope, counter_volume_usd, legs_volume_usd, counter_fees_usd,\n"
            "       legs_fees_usd, counter_loss_used_usd, legs_loss_used_usd,\n"
            "       counter_jobs_failed, legs_jobs_failed, matches\n"
            "FROM audit_counter_reconciliation("
            f"{_day(run.started)}, {_day(run.finished)})\n"
            "ORDER BY day, scope;"
        ),
    ),
    Example(
        "counter_mismatches",
        lambda run: "SELECT * FROM audit_counter_mismatches ORDER BY day, scope;",
    ),
    Example(
        "orphan_reservations",
        lambda run: "SELECT * FROM audit_orphan_reservations ORDER BY reservation_id;",
    ),
    Example(
        "counter_mismatches_planted",
        lambda run: (
            "SELECT day, scope, counter_fees_usd, legs_fees_usd, matches\n"
            "FROM audit_counter_mismatches ORDER BY day, scope;"
        ),
        planted=True,
    ),
    Example(
        "orphan_reservations_planted",
        lambda run: (
            "SELECT reservation_id, job_id, exchange, tier, amount_usd,\n"
            "       reservation_archived, job_status, problem\n"
            "FROM audit_orphan_reservations ORDER BY reservation_id;"
        ),
        planted=True,
    ),
)


def cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, Decimal):
        shown = format(value.normalize(), "f") if value != 0 else "0"
    elif isinstance(value, datetime):
        shown = value.astimezone(UTC).isoformat(sep=" ", timespec="milliseconds")
        shown = shown.replace("+00:00", "+00")
    elif isinstance(value, date):
        shown = value.isoformat()
    elif isinstance(value, dict | list):
        shown = json.dumps(value, default=str, separators=(", ", ": "), sort_keys=True)
    else:
        shown = str(value)
    return shown if len(shown) <= CELL else shown[: CELL - 1] + "…"


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as psql prints them: a header, a rule, aligned cells, the row count."""
    cells = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | Decimal) and not isinstance(row[i], bool) for row in rows)
        and bool(rows)
        for i in range(len(columns))
    ]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: Sequence[str], header: bool = False) -> str:
        parts = [
            v.center(w) if header else (v.rjust(w) if numeric[i] else v.ljust(w))
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return (" " + " | ".join(parts)).rstrip()

    out = [line(columns, header=True), "-" + "-+-".join("-" * w for w in widths) + "-"]
    out += [line(row) for row in cells]
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


def run_example(conn: Connection, sql: str) -> str:
    result = conn.execute(text(sql))
    return table(list(result.keys()), [tuple(row) for row in result])


def render(conn: Connection, run: Scenario, *, planted: bool) -> dict[str, str]:
    """Each example (the planted ones only when ``planted``) as a markdown block."""
    out = {}
    for example in EXAMPLES:
        if example.planted != planted:
            continue
        sql = example.sql(run)
        out[example.name] = f"```sql\n{sql}\n```\n\n```\n{run_example(conn, sql)}\n```"
    return out


def all_examples(engine: Engine, run: Scenario) -> dict[str, str]:
    """Every example: the healthy ones, then the breaches planted (committed) and theirs."""
    with engine.connect() as conn:
        blocks = render(conn, run, planted=False)
    with engine.begin() as conn:
        plant_breaches(conn, run)
    with engine.connect() as conn:
        blocks.update(render(conn, run, planted=True))
    return blocks


BLOCK = re.compile(r"(<!-- example (?P<name>[a-z_]+) -->\n).*?(<!-- /example -->)", re.DOTALL)


def write_doc(path: Path, blocks: Mapping[str, str]) -> None:
    doc = path.read_text()
    found = {m.group("name") for m in BLOCK.finditer(doc)}
    missing = sorted(set(blocks) - found)
    if missing:
        raise SystemExit(f"{path} has no <!-- example NAME --> block for {', '.join(missing)}")
    doc = BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + "\n" + m.group(3), doc)
    path.write_text(doc)


# -- the command -----------------------------------------------------------------------------


def _main(url: str | None, write: Path | None) -> None:
    from perpbot_db.runtime import embedded, migrate
    from perpbot_db.runtime.db import engine_for
    from perpbot_db.settings import load_settings

    home = Path(tempfile.mkdtemp(prefix="perpbot-audit-examples-"))
    server = None
    try:
        config = home / "perpbot.toml"
        config.write_text(CONFIG)
        os.environ["PERPBOT_CONFIG"] = str(config)
        if url is None:
            server = embedded.start(embedded.Cluster(home / "pg"))
            url = server.url.render_as_string(hide_password=False)
        settings = load_settings(database_url=url)
        engine = engine_for(url)
        migrate.ensure_schema(engine, settings)
        with engine.connect() as conn:
            if conn.execute(text("SELECT count(*) FROM hedge_jobs_all")).scalar_one():
                raise SystemExit("the database already holds jobs: give an empty one")
        run = fill(engine, settings)
        blocks = all_examples(engine, run)
        engine.dispose()
        if write is not None:
            write_doc(write, blocks)
            print(f"{write}: {len(blocks)} examples written")
        else:
            for name, block in blocks.items():
                print(f"## {name}\n\n{block}\n")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database-url", help="an empty database (default: embedded)")
    parser.add_argument("--write", type=Path, help="replace the example blocks of this file")
    args = parser.parse_args(argv)
    _main(args.database_url, args.write)


if __name__ == "__main__":
    main()
