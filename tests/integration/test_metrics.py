"""``GET /metrics``'s text against PostgreSQL: the scrape says what the tables hold, every
query of the Grafana dashboard and the alert rules names a metric it exports, a slow read
is cut without hiding the rest, and the decisions read does not scan history."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from psycopg import Connection
from sqlalchemy import Engine, text

from perpbot_db.domain.lifecycle import CapitalTier
from perpbot_db.domain.protections import Lock, ProtectionCode, Scope
from perpbot_db.services import metrics, tick
from perpbot_db.settings import Settings
from perpbot_db.store import locks, workers
from perpbot_db.store import metrics as reads
from tests.builders import config, job, put_market, submit, work
from tests.pure.test_metrics_format import Parsed, parse

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "perpbot-dashboard.json"
ALERTS = ROOT / "ops" / "prometheus" / "perpbot-alerts.yml"
DOCS = ROOT / "docs" / "metrics.md"


@pytest.fixture
def read(engine: Engine) -> Iterator[Connection[Any]]:
    """The bare driver connection the read commands (and the web app) use."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, Connection)
        conn.autocommit = True
        yield conn
    finally:
        raw.close()


def db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        value: datetime = conn.execute(text("SELECT statement_timestamp()")).scalar_one()
    return value


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def scrape(
    read: Connection[Any], engine: Engine, **config: Any
) -> tuple[dict[str, Parsed], datetime]:
    now = db_now(engine)
    cfg = replace(metrics.MetricsConfig(finish_window=timedelta(hours=1)), **config)
    return parse(metrics.render(read, now, cfg)), now


def by_labels(fam: Parsed, *names: str) -> dict[tuple[str, ...], Decimal]:
    return {tuple(lb[n] for n in names): Decimal(v) for lb, v in fam.samples}


# -- the scrape holds what the tables hold ------------------------------------------------------


def _loose_leverage() -> Any:
    from perpbot_db.domain import risk

    return {mode: replace(lim, leverage_soft=Decimal(1), leverage_hard=Decimal(1))
            for mode, lim in risk.LIMITS.items()}  # fmt: skip


def test_scrape_after_submit_and_tick_holds_jobs_holds_denials_and_capital(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(3)])
    submit(engine, settings, [job(10, symbol="SOL/USDT:USDT"), job(11, symbol="SOL/USDT:USDT")])
    too_big = [
        {"exchange": "bybit", "side": "buy", "quantity": "0.05"},  # 4,850 > 10 % of 30,000
        {"exchange": "binance", "side": "sell", "quantity": "0.05"},
    ]
    submit(engine, settings, [job(20, legs=too_big, notional_usd=4850)])
    report = tick.run_tick(engine, config(limits=_loose_leverage()))
    assert len(report.admitted) == 3 and report.held == {"market_data_missing": 2}
    assert list(report.rejected.values()) == ["capital_single_job_cap"]

    p, _ = scrape(read, engine)

    live = dict(rows(engine, "SELECT status, count(*) FROM hedge_jobs GROUP BY status"))
    assert p["perpbot_jobs"].by("status") == {
        s: live.get(s, 0) for s in ("pending", "admitted", "running")
    }
    assert p["perpbot_jobs"].by("status") == {"pending": 2, "admitted": 3, "running": 0}
    held = rows(
        engine,
        "SELECT coalesce(decision_code, 'none'), count(*) FROM hedge_jobs "
        "WHERE status = 'pending' GROUP BY 1",
    )
    assert p["perpbot_pending_jobs_by_code"].by("code") == dict(held)

    events = rows(engine, "SELECT action, code, count(*) FROM job_events GROUP BY 1, 2")
    assert by_labels(p["perpbot_job_events_total"], "action", "code") == {
        (a, c or "none"): n for a, c, n in events
    }
    assert p["perpbot_admissions_total"].value() == 3
    denials = rows(
        engine, "SELECT code, count(*) FROM job_events WHERE action = 'reject' GROUP BY code"
    )
    assert p["perpbot_denials_total"].by("code") == dict(denials)
    assert p["perpbot_denials_total"].by("code") == {"capital_single_job_cap": 1}

    reserved = rows(
        engine,
        "SELECT exchange, tier, sum(amount_usd), count(*) FROM capital_reservations "
        "WHERE status = 'active' GROUP BY 1, 2",
    )
    assert reserved, "the admitted jobs hold capital"
    got = by_labels(p["perpbot_capital_reserved_usd"], "exchange", "tier")
    for exchange, tier, amount, _ in reserved:
        assert got[(exchange, tier)] == amount
    assert sum(got.values()) == sum(r[2] for r in reserved)
    assert set(got) == {(e, t.value) for e in ("binance", "bybit", "okx") for t in CapitalTier}
    counts = by_labels(p["perpbot_capital_reservations"], "exchange", "tier")
    assert sum(counts.values()) == sum(r[3] for r in reserved) == 6

    [(equity, share)] = rows(
        engine, "SELECT equity_usd, volume_share FROM exchanges WHERE name = 'okx'"
    )
    assert p["perpbot_capital_budget_usd"].value(exchange="okx", tier="volume") == equity * share
    assert p["perpbot_exchange_equity_usd"].value(exchange="okx") == equity

    # the tick recorded itself: when, how long, how many
    [(tick_at, duration_ms, ticks)] = rows(
        engine, "SELECT last_tick_at, duration_ms, ticks FROM scheduler_ticks"
    )
    last = p["perpbot_tick_last_timestamp_seconds"].value()
    assert abs(last - Decimal(repr(tick_at.timestamp()))) < Decimal("0.000002")
    assert p["perpbot_tick_last_duration_seconds"].value() == duration_ms / 1000
    assert p["perpbot_ticks_total"].value() == ticks == 1

    markets = rows(engine, "SELECT exchange, symbol, latency_ms FROM market_snapshots")
    assert by_labels(p["perpbot_exchange_latency_seconds"], "exchange", "symbol") == {
        (e, s): ms / 1000 for e, s, ms in markets
    }
    assert p["perpbot_system_status"].value(status="running") == 1
    assert set(p["perpbot_metrics_read_ok"].by("read").values()) == {1}


def test_scrape_after_work_holds_the_days_counters_and_claim_to_finish_times(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(3)])  # okx runs 3 at once
    assert len(tick.run_tick(engine, config()).admitted) == 3
    work(engine, settings)
    assert dict(rows(engine, "SELECT status, count(*) FROM hedge_jobs GROUP BY 1")) == {
        "completed": 3
    }

    p, now = scrape(read, engine)

    counters = {
        r.scope: r
        for r in rows(
            engine,
            "SELECT * FROM daily_counters WHERE day = (now() AT TIME ZONE 'UTC')::date",
        )
    }
    day = counters.pop("global")
    assert p["perpbot_daily_volume_usd"].value() == day.volume_usd > 0
    assert p["perpbot_daily_fees_usd"].value() == day.fees_usd
    assert p["perpbot_daily_realized_pnl_usd"].value() == day.realized_pnl_usd
    assert p["perpbot_daily_loss_used_usd"].value() == day.loss_used_usd
    assert p["perpbot_jobs_finished_total"].by("status") == {
        "completed": day.jobs_completed,
        "failed": day.jobs_failed,
    }
    assert day.jobs_completed == 3
    assert counters, "the legs' exchanges have their own rows"
    for scope, row in counters.items():
        assert p["perpbot_exchange_daily_volume_usd"].value(exchange=scope) == row.volume_usd
        assert p["perpbot_exchange_daily_fees_usd"].value(exchange=scope) == row.fees_usd
        assert (
            p["perpbot_exchange_daily_realized_pnl_usd"].value(exchange=scope)
            == row.realized_pnl_usd
        )

    events = rows(engine, "SELECT action, code, count(*) FROM job_events GROUP BY 1, 2")
    assert by_labels(p["perpbot_job_events_total"], "action", "code") == {
        (a, c or "none"): n for a, c, n in events
    }
    assert p["perpbot_jobs"].by("status") == {"pending": 0, "admitted": 0, "running": 0}
    assert set(p["perpbot_capital_reserved_usd"].by("tier").values()) == {0}

    [(jobs, longest)] = rows(
        engine,
        "SELECT count(*), max(extract(epoch FROM finished_at - started_at)) FROM hedge_jobs_all "
        "WHERE started_at IS NOT NULL AND finished_at >= :since",
        since=now - timedelta(hours=1),
    )
    assert p["perpbot_claim_to_finish_window_jobs"].value() == jobs == 3
    quantiles = p["perpbot_claim_to_finish_seconds"].by("quantile")
    assert abs(quantiles["1"] - longest) < Decimal("0.000001")
    assert quantiles["0.5"] <= quantiles["0.9"] <= quantiles["0.99"] <= quantiles["1"]

    # the worker that drained the queue stopped: none is live
    assert p["perpbot_workers"].by("state") == {"live": 0, "lost": 0}


def test_a_job_that_finished_before_the_window_is_not_summarised(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(1)])
    tick.run_tick(engine, config())
    work(engine, settings)
    later = db_now(engine) + timedelta(hours=2)
    p = parse(metrics.render(read, later, metrics.MetricsConfig(finish_window=timedelta(hours=1))))
    assert p["perpbot_claim_to_finish_window_jobs"].value() == 0
    assert p["perpbot_claim_to_finish_seconds"].samples == []


def test_workers_are_counted_live_or_lost_by_heartbeat_without_their_ids(
    engine: Engine, read: Connection[Any]
) -> None:
    with engine.begin() as conn:
        for name, slots in (("w-live", 8), ("w-lost", 4), ("w-stopped", 2)):
            workers.register(conn, worker_id=name, host="h", pid=1, concurrency=slots)
        conn.execute(
            text("UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'w-lost'")
        )
        workers.stop(conn, worker_id="w-stopped")
    p, _ = scrape(read, engine, worker_live=timedelta(seconds=300))
    assert p["perpbot_workers"].by("state") == {"live": 1, "lost": 1}
    assert p["perpbot_worker_live_slots"].value() == 8
    [(beat,)] = rows(engine, "SELECT heartbeat_at FROM workers WHERE id = 'w-live'")
    newest = p["perpbot_worker_last_heartbeat_timestamp_seconds"].value()
    assert abs(newest - Decimal(repr(beat.timestamp()))) < Decimal("0.000002")
    for fam in p.values():
        for labels, _ in fam.samples:
            assert not any(v.startswith("w-") for v in labels.values()), fam


def test_leader_and_protection_locks_show_while_they_are_held(
    engine: Engine, read: Connection[Any]
) -> None:
    p, _ = scrape(read, engine)
    assert p["perpbot_scheduler_leader"].value() == 0
    assert p["perpbot_protection_locks"].samples == []
    now = db_now(engine)
    with engine.begin() as conn:
        locks.protection_lock_insert(
            conn,
            Lock(Scope.EXCHANGE, "okx", ProtectionCode.UNHEDGED_EXPOSURE, "job 7 left unhedged",
                 now + timedelta(hours=1), {"jobs": "7"}),
            created_by="worker",
            now=now,
        )  # fmt: skip
    with engine.connect() as leader:
        assert locks.leader_try_acquire(leader)
        p, _ = scrape(read, engine)
        assert p["perpbot_scheduler_leader"].value() == 1
        locks.leader_release(leader)
    assert p["perpbot_protection_locks"].samples == [
        ({"scope": "exchange", "code": "unhedged_exposure"}, "1")
    ]


def test_ticks_of_every_scheduler_are_summed_and_the_newest_is_the_last_tick(
    engine: Engine, read: Connection[Any]
) -> None:
    p, _ = scrape(read, engine)
    assert p["perpbot_ticks_total"].value() == 0
    assert p["perpbot_tick_last_timestamp_seconds"].samples == []
    for scheduler in ("scheduler:a", "scheduler:a", "scheduler:b"):
        assert tick.run_tick(engine, config(), scheduler=scheduler).ran
    p, _ = scrape(read, engine)
    assert p["perpbot_ticks_total"].value() == 3
    [(newest,)] = rows(engine, "SELECT max(last_tick_at) FROM scheduler_ticks")
    last = p["perpbot_tick_last_timestamp_seconds"].value()
    assert abs(last - Decimal(repr(newest.timestamp()))) < Decimal("0.000002")
    for fam in p.values():  # a scheduler's identity is no label either
        for labels, _ in fam.samples:
            assert not any(v.startswith("scheduler:") for v in labels.values()), fam


# -- the statement timeout ------------------------------------------------------------------


def test_statement_timeout_is_set_for_the_scrapes_transaction_only(
    read: Connection[Any],
) -> None:
    with read.transaction():
        reads.statement_timeout_set(read, timeout_ms=1234)
        assert read.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert reads.bounded(read, lambda c: c.execute("SELECT pg_sleep(600)").fetchone()) is None
        assert read.execute("SELECT 1").fetchone() == (1,), "the transaction is still usable"
    assert read.execute("SHOW statement_timeout").fetchone() == ("0",)
    with pytest.raises(ValueError, match="timeout_ms"):
        reads.statement_timeout_set(read, timeout_ms=0)


def test_a_read_cut_by_the_timeout_leaves_the_rest_of_the_scrape(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(1)])
    now = db_now(engine)
    with engine.begin() as blocker:  # the events read waits on this lock until it is cut
        blocker.execute(text("LOCK TABLE job_events IN ACCESS EXCLUSIVE MODE"))
        text_out = metrics.render(read, now, metrics.MetricsConfig(timeout_ms=200))
    p = parse(text_out)
    ok = p["perpbot_metrics_read_ok"].by("read")
    assert ok.pop("events") == 0 and set(ok.values()) == {1}
    assert p["perpbot_job_events_total"].samples == []
    assert p["perpbot_admissions_total"].samples == []
    assert p["perpbot_jobs"].value(status="pending") == 1
    assert p["perpbot_system_status"].value(status="running") == 1


def test_render_works_on_the_read_commands_read_only_connection(
    engine: Engine, settings: Settings, read: Connection[Any]
) -> None:
    put_market(engine)
    submit(engine, settings, [job(1)])
    read.autocommit = False
    read.read_only = True  # as perpbot_db.runtime.reader opens it
    p = parse(metrics.render(read, db_now(engine)))
    assert p["perpbot_jobs"].value(status="pending") == 1
    read.rollback()


# -- every query in the dashboard and the alert rules names an exported metric ----------------

FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "clamp_max", "clamp_min", "count",
    "delta", "deriv", "floor", "histogram_quantile", "increase", "irate", "label_values",
    "max", "max_over_time", "min", "min_over_time", "quantile", "rate", "round", "sort",
    "sort_desc", "sum", "sum_over_time", "time", "timestamp", "topk", "bottomk", "vector",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's ``label_values(m, label)``) reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*\w+\s*\)", r"\1", e)
    e = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)  # numbers
    names: set[str] = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        if word in KEYWORDS:
            continue
        if e[m.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"{word}( in {expr!r}: not a PromQL function"
        else:
            names.add(word)
    return names


def test_metric_names_reads_promql() -> None:
    assert metric_names(
        'sum by (exchange) (rate(perpbot_a_total{code="x y",b=~"$e"}[$__rate_interval])) '
        "/ on (exchange) group_left perpbot_b_usd > 0.8 and on () absent(perpbot_c) or vector(1e3)"
    ) == {"perpbot_a_total", "perpbot_b_usd", "perpbot_c"}
    assert metric_names("label_values(perpbot_exchange_equity_usd, exchange)") == {
        "perpbot_exchange_equity_usd"
    }
    with pytest.raises(AssertionError, match="not a PromQL function"):
        metric_names("perpbot_x(1)")


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                elif key == "query" and isinstance(value, dict) and "query" in value:
                    found.append(value["query"])  # a templating variable's query
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(board["panels"])
    walk(board["templating"])
    return found


def alert_rules() -> dict[str, str]:
    """Each alert's ``expr``: a line-based reader of the rules file's plain YAML (an
    ``expr:`` on one line, or a ``|`` block indented below it)."""
    lines = ALERTS.read_text().splitlines()
    rules: dict[str, str] = {}
    alert: str | None = None
    for i, line in enumerate(lines):
        if m := re.match(r"^\s*- alert: (\w+)\s*$", line):
            alert = m.group(1)
            assert alert not in rules, f"alert {alert} twice"
        elif m := re.match(r"^(\s*)expr: (.*)$", line):
            assert alert is not None and alert not in rules, f"line {i + 1}: expr outside a rule"
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in ("|", ">"):
                block = []
                for follow in lines[i + 1 :]:
                    if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                        break
                    block.append(follow.strip())
                value = " ".join(b for b in block if b)
            rules[alert] = value
    return rules


def test_every_query_of_the_dashboard_and_the_alerts_names_an_exported_metric(
    engine: Engine, read: Connection[Any]
) -> None:
    p, _ = scrape(read, engine)
    exported = set(p)
    queries = dashboard_queries()
    rules = alert_rules()
    assert len(queries) >= 30 and len(rules) >= 5
    for expr in [*queries, *rules.values()]:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} not exported, in {expr!r}"
    # what the issue asks the alert rules to cover
    assert {
        "PerpbotDailyLossAbove80Percent",
        "PerpbotHalted",
        "PerpbotTickStale",
        "PerpbotNoLiveWorker",
        "PerpbotUnhedgedExposure",
    } <= set(rules)
    assert "> 0.8" in rules["PerpbotDailyLossAbove80Percent"]
    alerts_text = ALERTS.read_text()
    assert alerts_text.count("- alert:") == alerts_text.count("severity:") == len(rules)


def test_every_exported_metric_is_documented_and_every_documented_one_exported(
    engine: Engine, read: Connection[Any]
) -> None:
    p, _ = scrape(read, engine)
    # metric names, not module paths (perpbot_db.services, perpbot_db/store)
    documented = set(re.findall(r"(?<![\w.])(perpbot_[a-z0-9_]+)(?![\w./])", DOCS.read_text()))
    assert set(p) <= documented, f"undocumented: {sorted(set(p) - documented)}"
    assert documented <= set(p), f"documented, not exported: {sorted(documented - set(p))}"


# -- the decisions read does not scan history ---------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_todays_events_by_code_read_only_todays_block_ranges(
    engine: Engine, read: Connection[Any]
) -> None:
    history = 300_000
    start = metrics.day_start(db_now(engine))
    with engine.begin() as conn:  # 35 days of history, then today: in insertion order
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, "
                "reason, code) SELECT g, CAST(:start AS timestamptz) - interval '35 days' "
                "+ g * interval '10 seconds', 'pending', 'admitted', 'admit', 'test', 'old', "
                "'admitted' FROM generate_series(1, :n) g"
            ),
            {"start": start, "n": history},
        )
        conn.execute(
            text(
                "INSERT INTO job_events (job_id, at, from_status, to_status, action, actor, "
                "reason, code) SELECT g, CAST(:start AS timestamptz) + g * interval '1 ms', "
                "'pending', 'rejected', 'reject', 'test', 'today', 'spread_hard_limit' "
                "FROM generate_series(1, 1000) g"
            ),
            {"start": start},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # VACUUM summarises the BRIN ranges, as autovacuum does for an insert-only table;
        # a range not summarised yet is always read (docs/metrics.md, "Cost").
        conn.execute(text("VACUUM ANALYZE job_events"))

    counted = reads.job_events_count(read, since=start, until=start + timedelta(days=1))
    assert [(r.action, r.code, r.events) for r in counted] == [
        ("reject", "spread_hard_limit", 1000)
    ]
    [(plan,)] = read.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + reads.JOB_EVENTS_BY_CODE,
        {"since": start, "until": start + timedelta(days=1)},
    ).fetchall()
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == "job_events"]
    assert [n["Node Type"] for n in scans] == ["Bitmap Heap Scan"], scans
    assert any(n.get("Index Name") == "ix_job_events_at" for n in nodes)
    [heap] = scans
    examined = heap["Actual Rows"] + heap.get("Rows Removed by Index Recheck", 0)
    assert heap["Actual Rows"] == 1000
    assert examined < history / 10, f"read {examined} rows of {history} for today's 1000"
