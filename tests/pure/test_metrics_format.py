"""The metrics renderer: names, units, escaping, HELP and TYPE, and a strict parser round trip.

:func:`parse` is a small, strict reader of the text format 0.0.4 (the subset Prometheus
itself accepts): every line a HELP, a TYPE or a sample; HELP and TYPE once per family,
before its samples; a family's samples together; no series twice.  The integration
tests read real scrapes with it too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpbot_db.services import metrics
from perpbot_db.services.metrics import Family, MetricType, Scrape, sample
from perpbot_db.store import metrics as reads
from perpbot_db.store import monitor as shared

# -- a strict parser ------------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(
    rf"^(?P<name>{NAME})(?:\{{(?P<labels>(?:{LABEL},)*(?:{LABEL})?)\}})? (?P<value>\S+)$"
)
HELP = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|summary|histogram|untyped)$")
VALUE = re.compile(r"^(NaN|[+-]Inf|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$")
SUFFIXES = {"summary": ("_sum", "_count"), "histogram": ("_bucket", "_sum", "_count")}


def _unescape(text: str, quote: bool) -> str:
    table = {"\\\\": "\\", "\\n": "\n", '\\"': '"'} if quote else {"\\\\": "\\", "\\n": "\n"}
    return re.sub(r"\\[\\n\"]" if quote else r"\\[\\n]", lambda m: table[m.group(0)], text)


@dataclass
class Parsed:
    type: str
    help: str
    #: (labels, value as written) in order
    samples: list[tuple[dict[str, str], str]] = field(default_factory=list)

    def value(self, **labels: str) -> Decimal:
        """The one sample with exactly these labels, as a Decimal."""
        found = [v for lb, v in self.samples if lb == labels]
        assert len(found) == 1, (labels, self.samples)
        return Decimal(found[0])

    def by(self, label: str) -> dict[str, Decimal]:
        return {lb[label]: Decimal(v) for lb, v in self.samples}


def parse(text: str) -> dict[str, Parsed]:
    """A scrape's families by name; raises AssertionError on anything out of format."""
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, Parsed] = {}
    helps: dict[str, str] = {}
    closed: set[str] = set()
    current: str | None = None
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        if m := HELP.match(line):
            assert m.group(1) not in helps, f"line {n}: a second HELP for {m.group(1)}"
            helps[m.group(1)] = _unescape(m.group(2), quote=False)
            continue
        if m := TYPE.match(line):
            name = m.group(1)
            assert name not in families, f"line {n}: a second TYPE for {name}"
            assert name in helps, f"line {n}: TYPE {name} before its HELP"
            families[name] = Parsed(m.group(2), helps[name])
            if current is not None:
                closed.add(current)
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n}: not a HELP, TYPE or sample: {line!r}"
        name, labels_text, value = m["name"], m["labels"] or "", m["value"]
        assert current is not None and current not in closed, f"line {n}: {name} outside family"
        fam = families[current]
        allowed = {current} | {current + s for s in SUFFIXES.get(fam.type, ())}
        assert name in allowed, f"line {n}: sample {name} in family {current}"
        assert VALUE.match(value), f"line {n}: value {value!r}"
        pairs = re.findall(LABEL, labels_text)
        labels = {k: _unescape(v, quote=True) for k, v in pairs}
        assert len(labels) == len(pairs), f"line {n}: a label twice"
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"line {n}: series {key} twice"
        seen.add(key)
        fam.samples.append((labels, value))
    assert set(helps) == set(families), "every HELP has its TYPE"
    return families


# -- the format ------------------------------------------------------------------------------


def test_exposition_writes_help_type_and_samples_in_order() -> None:
    text = metrics.exposition(
        [
            Family("perpbot_a_total", MetricType.COUNTER, "A thing.", (sample(3, code="x"),)),
            Family("perpbot_b_usd", MetricType.GAUGE, "B\\c\nd", (sample(Decimal("1.50")),)),
            Family("perpbot_empty", MetricType.GAUGE, "Nothing yet"),
        ]
    )
    assert text == (
        "# HELP perpbot_a_total A thing.\n"
        "# TYPE perpbot_a_total counter\n"
        'perpbot_a_total{code="x"} 3\n'
        "# HELP perpbot_b_usd B\\\\c\\nd\n"
        "# TYPE perpbot_b_usd gauge\n"
        "perpbot_b_usd 1.5\n"
        "# HELP perpbot_empty Nothing yet\n"
        "# TYPE perpbot_empty gauge\n"
    )
    parsed = parse(text)
    assert parsed["perpbot_b_usd"].help == "B\\c\nd"
    assert parsed["perpbot_empty"].samples == []


def test_label_values_are_escaped() -> None:
    fam = Family("perpbot_x", MetricType.GAUGE, "x", (sample(1, symbol='a"b\\c\nd'),))
    line = metrics.exposition([fam]).splitlines()[-1]
    assert line == 'perpbot_x{symbol="a\\"b\\\\c\\nd"} 1'
    assert parse(metrics.exposition([fam]))["perpbot_x"].samples == [({"symbol": 'a"b\\c\nd'}, "1")]


@given(
    st.lists(st.text(max_size=30), min_size=1, max_size=5, unique=True),
    st.text(min_size=1, max_size=40).filter(str.strip),
)
def test_any_label_value_and_help_text_round_trip(values: list[str], help_text: str) -> None:
    fam = Family(
        "perpbot_round_trip",
        MetricType.GAUGE,
        help_text,
        tuple(sample(i, symbol=v) for i, v in enumerate(values)),
    )
    parsed = parse(metrics.exposition([fam]))["perpbot_round_trip"]
    assert parsed.help == help_text
    assert parsed.samples == [({"symbol": v}, str(i)) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "1"),
        (False, "0"),
        (7, "7"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-0.00000001"), "-0.00000001"),
        (Decimal("25000.0000000000000"), "25000"),
        (Decimal("0E-8"), "0"),
        (Decimal("NaN"), "NaN"),
        (Decimal("-Infinity"), "-Inf"),
        (0.25, "0.25"),
        (math.inf, "+Inf"),
        (math.nan, "NaN"),
        (1e-9, "1e-09"),
    ],
)
def test_values_are_written_as_prometheus_reads_them(value: metrics.Value, text: str) -> None:
    assert metrics.format_value(value) == text
    assert parse(f"# HELP perpbot_v v\n# TYPE perpbot_v gauge\nperpbot_v {text}\n")


@pytest.mark.parametrize(
    ("name", "kind", "labels", "problem"),
    [
        ("jobs", MetricType.GAUGE, {}, "must match"),
        ("perpbot_Jobs", MetricType.GAUGE, {}, "must match"),
        ("perpbot_jobs", MetricType.COUNTER, {}, "_total is for counters"),
        ("perpbot_jobs_total", MetricType.GAUGE, {}, "_total is for counters"),
        ("perpbot_jobs", MetricType.GAUGE, {"__name": "x"}, "not allowed"),
        ("perpbot_jobs", MetricType.GAUGE, {"a-b": "x"}, "not allowed"),
        ("perpbot_jobs", MetricType.GAUGE, {"quantile": "0.5"}, "quantile"),
        ("perpbot_jobs_seconds", MetricType.SUMMARY, {}, "quantile"),
    ],
)
def test_a_family_refuses_what_prometheus_would_misread(
    name: str, kind: MetricType, labels: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Family(name, kind, "help", (metrics.Sample(tuple(labels.items()), 1),))


def test_a_series_twice_and_a_family_twice_are_refused() -> None:
    with pytest.raises(ValueError, match="two series"):
        Family(
            "perpbot_x", MetricType.GAUGE, "x", (sample(1, a="1", b="2"), sample(2, b="2", a="1"))
        )
    fam = Family("perpbot_x", MetricType.GAUGE, "x")
    with pytest.raises(ValueError, match="declared twice"):
        metrics.exposition([fam, fam])


def test_the_parser_refuses_what_prometheus_refuses() -> None:
    bad = [
        "perpbot_x 1\n",  # no TYPE
        '# HELP perpbot_x x\n# TYPE perpbot_x gauge\nperpbot_x{a="1"} one\n',
        "# HELP perpbot_x x\n# TYPE perpbot_x gauge\nperpbot_x 1\nperpbot_x 2\n",
        "# HELP perpbot_x x\n# TYPE perpbot_x gauge\nperpbot_y 1\n",
        '# HELP perpbot_x x\n# TYPE perpbot_x gauge\nperpbot_x{a="\n"} 1\n',
        "# HELP perpbot_x x\n# TYPE perpbot_x gauge\nperpbot_x 1",
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse(text)


# -- the families of a scrape -----------------------------------------------------------------

NOW = datetime(2026, 11, 21, 8, 30, tzinfo=UTC)


def _exchange(name: str, equity: int, safe: bool, jobs: int, failures: int) -> reads.ExchangeRow:
    """An exchange with the default shares (S1 50 %, S2 30 %, S3 20 %) and caps."""
    share = Decimal
    return reads.ExchangeRow(
        name, True, share(equity), safe, share("0.5"), share("0.3"), share("0.2"),
        share("0.1"), share("0.3"), jobs, failures,
    )  # fmt: skip


def system_row(status: str, limit: Decimal, failures: int, max_failures: int) -> shared.SystemRow:
    halt = "daily loss limit" if status == "halted" else None
    return shared.SystemRow(
        status, "balanced", limit, halt, failures, max_failures, NOW, "scheduler"
    )


def _full_scrape() -> Scrape:
    at = NOW - timedelta(seconds=2)
    return Scrape(
        now=NOW,
        system=system_row("halted", Decimal("1000.00000000"), 2, 5),
        live=shared.LiveCounts(pending=4, admitted=2, running=1),
        pending_codes=[reads.PendingByCode(None, 1), reads.PendingByCode("market_data_stale", 3)],
        counters=[
            shared.CounterRow(
                "binance", Decimal("970"), Decimal("0.5"), Decimal("-1.5"), Decimal("1.5"), 1, 0
            ),
            shared.CounterRow(
                "global", Decimal("1940"), Decimal("1"), Decimal("-3"), Decimal("3"), 2, 1
            ),
        ],
        events=[
            reads.EventCount("admit", "admitted", None, 3),
            reads.EventCount("complete", "filled", None, 2),
            reads.EventCount("expire", "deadline_passed", "market_data_stale", 2),
            reads.EventCount("expire", "deadline_passed", None, 1),
            reads.EventCount("fail", "unhedged", None, 1),
            reads.EventCount("reject", "capital_single_job_cap", None, 1),
            reads.EventCount(None, None, None, 4),
        ],
        claim_to_finish=reads.ClaimToFinish(2, [0.1, 0.2, 0.3, 0.4]),
        exchanges=[_exchange("binance", 50000, False, 10, 0), _exchange("okx", 40000, True, 3, 2)],
        reserved=[reads.TierReserved("okx", "arbitrage", Decimal("970"), 1)],
        markets=[
            reads.MarketLatency("binance", "BTC/USDT:USDT", Decimal(40), Decimal("0.0001"), at),
            reads.MarketLatency("okx", "BTC/USDT:USDT", None, None, at),
        ],
        workers=reads.WorkerLiveness(live=2, lost=1, live_slots=100, newest_heartbeat_at=at),
        leader=reads.LeaderPresence(True),
        ticks=reads.TickSummary(at, Decimal("12.5"), 4321),
        locks=[reads.LockCount("exchange", "unhedged_exposure", 1)],
    )


def _render(scrape: Scrape) -> dict[str, Parsed]:
    config = metrics.MetricsConfig()
    return parse(metrics.exposition(metrics.families(scrape, config)))


def test_every_family_is_named_and_typed_by_the_conventions() -> None:
    parsed = _render(_full_scrape())
    for name, fam in parsed.items():
        assert name.startswith("perpbot_")
        assert fam.help, name
        assert (fam.type == "counter") == name.endswith("_total"), name
        if fam.type == "counter":  # says how it resets: daily, or never
            assert "resets to 0 at midnight UTC" in fam.help or "only grows" in fam.help, name
        assert not re.search(r"_(ms|milliseconds|minutes|dollars)(_|$)", name), name
        for labels, _ in fam.samples:
            assert not {"job", "job_id", "id", "worker", "worker_id"} & set(labels), name


def test_a_full_scrape_says_what_the_rows_say() -> None:
    p = _render(_full_scrape())
    assert p["perpbot_system_status"].by("status") == {
        "running": 0,
        "paused": 0,
        "halted": 1,
        "manual_override": 0,
    }
    assert p["perpbot_risk_mode"].value(mode="balanced") == 1
    assert p["perpbot_daily_loss_limit_usd"].value() == Decimal(1000)
    assert p["perpbot_jobs"].by("status") == {"pending": 4, "admitted": 2, "running": 1}
    assert p["perpbot_pending_jobs_by_code"].by("code") == {"none": 1, "market_data_stale": 3}
    assert p["perpbot_jobs_finished_total"].by("status") == {"completed": 2, "failed": 1}
    assert p["perpbot_admissions_total"].value() == 3
    assert p["perpbot_denials_total"].by("code") == {"capital_single_job_cap": 1}
    assert p["perpbot_expirations_total"].by("held_code") == {"market_data_stale": 2, "none": 1}
    assert p["perpbot_job_events_total"].value(action="fail", code="unhedged") == 1
    assert p["perpbot_job_events_total"].value(action="expire", code="deadline_passed") == 3
    assert p["perpbot_job_events_total"].value(action="unknown", code="none") == 4
    at = (NOW - timedelta(seconds=2)).timestamp()
    assert p["perpbot_tick_last_timestamp_seconds"].value() == Decimal(repr(at))
    assert p["perpbot_tick_last_duration_seconds"].value() == Decimal("0.0125")
    assert p["perpbot_ticks_total"].value() == 4321
    assert p["perpbot_daily_volume_usd"].value() == 1940
    assert p["perpbot_daily_realized_pnl_usd"].value() == -3
    assert p["perpbot_daily_loss_used_usd"].value() == 3
    assert p["perpbot_exchange_daily_fees_usd"].by("exchange") == {
        "binance": Decimal("0.5"),
        "okx": 0,
    }
    reserved = p["perpbot_capital_reserved_usd"]
    assert reserved.value(exchange="okx", tier="arbitrage") == 970
    assert reserved.value(exchange="binance", tier="volume") == 0
    assert len(reserved.samples) == 6  # every exchange x tier, zeros included
    budget = p["perpbot_capital_budget_usd"]
    assert budget.value(exchange="okx", tier="volume") == 20000
    assert budget.value(exchange="okx", tier="reserve") == 8000
    assert p["perpbot_capital_inflight_limit_usd"].value(exchange="binance") == 15000
    assert p["perpbot_exchange_safe_mode"].by("exchange") == {"binance": 0, "okx": 1}
    assert p["perpbot_exchange_latency_seconds"].samples == [
        ({"exchange": "binance", "symbol": "BTC/USDT:USDT"}, "0.04")
    ]
    assert p["perpbot_workers"].by("state") == {"live": 2, "lost": 1}
    assert p["perpbot_scheduler_leader"].value() == 1
    assert p["perpbot_protection_locks"].value(scope="exchange", code="unhedged_exposure") == 1
    summary = p["perpbot_claim_to_finish_seconds"]
    assert summary.type == "summary"
    assert summary.by("quantile") == {
        "0.5": Decimal("0.1"),
        "0.9": Decimal("0.2"),
        "0.99": Decimal("0.3"),
        "1": Decimal("0.4"),
    }
    assert p["perpbot_claim_to_finish_window_jobs"].value() == 2
    assert set(p["perpbot_metrics_read_ok"].by("read").values()) == {1}


def test_a_cut_read_leaves_its_families_declared_and_empty_and_the_rest_served() -> None:
    full = _full_scrape()
    cut = Scrape(**{**full.__dict__, "events": None, "workers": None})
    p = _render(cut)
    assert p["perpbot_metrics_read_ok"].value(read="events") == 0
    assert p["perpbot_metrics_read_ok"].value(read="workers") == 0
    assert p["perpbot_metrics_read_ok"].value(read="system") == 1
    for name in ("perpbot_job_events_total", "perpbot_admissions_total", "perpbot_workers"):
        assert p[name].samples == [], name
    assert p["perpbot_system_status"].value(status="halted") == 1
    assert p["perpbot_ticks_total"].value() == 4321
    assert set(_render(full)) == set(p), "the same families, whatever was cut"


def test_an_empty_database_scrapes_zeros_not_gaps() -> None:
    empty = Scrape(
        now=NOW,
        system=system_row("running", Decimal(1000), 0, 5),
        live=shared.LiveCounts(0, 0, 0),
        pending_codes=[],
        counters=[],
        events=[],
        claim_to_finish=reads.ClaimToFinish(0, None),
        exchanges=[],
        reserved=[],
        markets=[],
        workers=reads.WorkerLiveness(0, 0, 0, None),
        leader=reads.LeaderPresence(False),
        ticks=reads.TickSummary(None, None, 0),
        locks=[],
    )
    p = _render(empty)
    assert p["perpbot_daily_loss_used_usd"].value() == 0
    assert p["perpbot_jobs_finished_total"].by("status") == {"completed": 0, "failed": 0}
    assert p["perpbot_admissions_total"].value() == 0
    assert p["perpbot_workers"].by("state") == {"live": 0, "lost": 0}
    assert p["perpbot_claim_to_finish_window_jobs"].value() == 0
    assert p["perpbot_claim_to_finish_seconds"].samples == []
    assert p["perpbot_tick_last_timestamp_seconds"].samples == []
    assert p["perpbot_tick_last_duration_seconds"].samples == []
    assert p["perpbot_ticks_total"].value() == 0
    assert p["perpbot_worker_last_heartbeat_timestamp_seconds"].samples == []


def test_the_config_refuses_nonsense_naming_the_field() -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        metrics.MetricsConfig(timeout_ms=0)
    with pytest.raises(ValueError, match="finish_window"):
        metrics.MetricsConfig(finish_window=timedelta(0))
    with pytest.raises(ValueError, match="worker_live"):
        metrics.MetricsConfig(worker_live=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="quantiles"):
        metrics.MetricsConfig(quantiles=(0.5, 1.5))


def test_the_day_starts_at_midnight_utc_whatever_the_zone_of_now() -> None:
    from zoneinfo import ZoneInfo

    late = datetime(2026, 11, 21, 23, 30, tzinfo=ZoneInfo("America/New_York"))  # 04:30Z next day
    assert metrics.day_start(late) == datetime(2026, 11, 22, tzinfo=UTC)
