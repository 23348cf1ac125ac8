"""Prometheus metrics computed from the database at scrape time: what ``GET /metrics`` serves.

Design note.  Every process of perpbot (schedulers, workers, the web console) writes
its state to PostgreSQL, so one scrape of the database sees the whole cluster; no
process keeps counters in memory and nothing needs prometheus-client's
multiprocess mode.  :func:`render` reads (:mod:`perpbot_db.store.metrics`, each read
in its own savepoint under a ``statement_timeout``) and writes the text exposition
format 0.0.4 by hand: ``# HELP`` and ``# TYPE`` once per family, every family
declared even when it has no sample, label values escaped, names ``perpbot_``
prefixed, in base units (seconds, ``_usd`` for dollars), ``_total`` on counters
and only on counters, and no job or worker id in any label (their number grows
without bound).

Counters come from what the database counts per UTC day (``job_events`` and
``daily_counters`` since midnight UTC): they reset to zero at midnight, which
``rate()`` and ``increase()`` treat as a counter reset.  Timestamps are exported
as Unix seconds (``_timestamp_seconds``), not ages: ``time() - x`` is the age.
A read that is cut by the timeout leaves its families without samples and sets
``perpbot_metrics_read_ok{read=...}`` to 0; the other families are still served.

Names and what each means: docs/metrics.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from datetime import time as day_time
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from perpbot_db.domain.capital import ExchangeBook
from perpbot_db.domain.lifecycle import CapitalTier, JobAction, RiskMode, SystemStatus
from perpbot_db.settings import Settings
from perpbot_db.store import metrics as reads
from perpbot_db.store import monitor as shared
from perpbot_db.store.overview import ReadConnection

#: The ``Content-Type`` of :func:`render`'s text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

T = TypeVar("T")

# -- the exposition format ------------------------------------------------------------------

METRIC_NAME = re.compile(r"^perpbot_[a-z0-9_]*[a-z0-9]$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Value = Decimal | int | float | bool


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    SUMMARY = "summary"


@dataclass(frozen=True)
class Sample:
    """One series of a family: its labels (name, value) and its value."""

    labels: tuple[tuple[str, str], ...]
    value: Value


def sample(value: Value, **labels: str) -> Sample:
    return Sample(tuple(labels.items()), value)


@dataclass(frozen=True)
class Family:
    """A metric family: one ``# HELP`` and ``# TYPE``, then its samples.

    Refuses what Prometheus would misread: a name without the ``perpbot_`` prefix or
    outside ``[a-z0-9_]``, ``_total`` on a non-counter or a counter without it, a
    reserved (``__``) or malformed label name, two series with the same labels, a
    summary sample without its ``quantile``."""

    name: str
    type: MetricType
    help: str
    samples: tuple[Sample, ...] = ()

    def __post_init__(self) -> None:
        if not METRIC_NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r}: must match {METRIC_NAME.pattern}")
        if (self.type is MetricType.COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"metric name {self.name!r}: _total is for counters, and only them")
        if not self.help.strip():
            raise ValueError(f"metric {self.name}: HELP text is empty")
        seen: set[tuple[tuple[str, str], ...]] = set()
        for s in self.samples:
            names = [name for name, _ in s.labels]
            for name in names:
                if not LABEL_NAME.match(name) or name.startswith("__"):
                    raise ValueError(f"metric {self.name}: label name {name!r} is not allowed")
            if len(set(names)) != len(names):
                raise ValueError(f"metric {self.name}: a label appears twice in {names}")
            if (self.type is MetricType.SUMMARY) != ("quantile" in names):
                raise ValueError(f"metric {self.name}: quantile is the summary's label only")
            key = tuple(sorted(s.labels))
            if key in seen:
                raise ValueError(f"metric {self.name}: two series with labels {dict(key)}")
            seen.add(key)


def escape_label_value(value: str) -> str:
    """A label value inside double quotes: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Value) -> str:
    """A sample value as Go's ``ParseFloat`` reads it; decimals exactly as stored."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return "NaN"
        if value.is_infinite():
            return "+Inf" if value > 0 else "-Inf"
        return format(value.normalize(), "f")  # 1000.00000000 -> 1000, 1E+3 -> 1000
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
    return f"{name}{{{inner}}}"


def exposition(families: Iterable[Family]) -> str:
    """The text format 0.0.4: every family's HELP, TYPE and samples; ends with a newline."""
    lines: list[str] = []
    names: set[str] = set()
    for fam in families:
        if fam.name in names:
            raise ValueError(f"metric {fam.name}: declared twice")
        names.add(fam.name)
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.type.value}")
        lines.extend(f"{_series(fam.name, s.labels)} {format_value(s.value)}" for s in fam.samples)
    return "\n".join(lines) + "\n"


# -- what a scrape reads --------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    """``timeout_ms``: each read's statement timeout; ``finish_window``: the jobs whose
    claim-to-finish times are summarised (finished this long before ``now``);
    ``worker_live``: a worker whose last heartbeat is older is counted lost."""

    timeout_ms: int = 2000
    finish_window: timedelta = timedelta(minutes=5)
    worker_live: timedelta = timedelta(seconds=30)
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 1.0)

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0:
            raise ValueError("timeout_ms: must be positive")
        if self.finish_window <= timedelta(0):
            raise ValueError("finish_window: must be positive")
        if self.worker_live <= timedelta(0):
            raise ValueError("worker_live: must be positive")
        if not self.quantiles or any(not 0 <= q <= 1 for q in self.quantiles):
            raise ValueError("quantiles: each must be within [0, 1]")

    @classmethod
    def from_settings(cls, settings: Settings) -> MetricsConfig:
        """A worker is live while its jobs' leases would still hold: ``lease_s``."""
        return cls(worker_live=timedelta(seconds=settings.lease_s))


@dataclass(frozen=True)
class Scrape:
    """Everything one scrape read; a read cut by the timeout is None."""

    now: datetime
    system: shared.SystemRow | None = None
    live: shared.LiveCounts | None = None
    pending_codes: list[reads.PendingByCode] | None = None
    counters: list[shared.CounterRow] | None = None
    events: list[reads.EventCount] | None = None
    claim_to_finish: reads.ClaimToFinish | None = None
    exchanges: list[reads.ExchangeRow] | None = None
    reserved: list[reads.TierReserved] | None = None
    markets: list[reads.MarketLatency] | None = None
    workers: reads.WorkerLiveness | None = None
    leader: reads.LeaderPresence | None = None
    ticks: reads.TickSummary | None = None
    locks: list[reads.LockCount] | None = None

    @property
    def failed(self) -> tuple[str, ...]:
        """The reads cut by the statement timeout."""
        return tuple(name for name in READS if getattr(self, name) is None)


#: The reads, by the name ``perpbot_metrics_read_ok`` gives them (the Scrape's fields).
READS: tuple[str, ...] = tuple(f.name for f in fields(Scrape) if f.name != "now")


def day_start(now: datetime) -> datetime:
    """Midnight UTC of ``now``'s UTC day."""
    return datetime.combine(now.astimezone(UTC).date(), day_time(0), tzinfo=UTC)


def collect(conn: ReadConnection, now: datetime, config: MetricsConfig) -> Scrape:
    """Every read of a scrape in one transaction under the statement timeout, each in its
    own savepoint (a cut read is None, the rest still read)."""
    if now.tzinfo is None:
        raise ValueError("now: must be timezone-aware")
    start = day_start(now)
    with conn.transaction():
        reads.statement_timeout_set(conn, timeout_ms=config.timeout_ms)

        def read(call: Callable[[ReadConnection], T]) -> T | None:
            return reads.bounded(conn, call)

        return Scrape(
            now=now,
            system=read(shared.system_state),
            live=read(shared.job_live_counts),
            pending_codes=read(reads.pending_by_code_count),
            counters=read(lambda c: shared.counters_of_day(c, shared.DayParams(start.date()))),
            events=read(
                lambda c: reads.job_events_count(c, since=start, until=start + timedelta(days=1))
            ),
            claim_to_finish=read(
                lambda c: reads.claim_to_finish_summarize(
                    c, since=now - config.finish_window, until=now, quantiles=config.quantiles
                )
            ),
            exchanges=read(reads.exchanges_read),
            reserved=read(reads.reservations_active_sum),
            markets=read(reads.market_latency_read),
            workers=read(lambda c: reads.workers_liveness(c, live_since=now - config.worker_live)),
            leader=read(reads.scheduler_leader_present),
            ticks=read(reads.scheduler_ticks_summary),
            locks=read(reads.protection_locks_active_count),
        )


def render(conn: ReadConnection, now: datetime, config: MetricsConfig | None = None) -> str:
    """The scrape: the database read now, in the Prometheus text format 0.0.4.

    Give it a connection of its own (the web app's, or the read commands'): its reads
    run in one transaction (a savepoint if one is open already, and then the statement
    timeout lasts until that transaction ends) and write nothing."""
    config = config or MetricsConfig()
    return exposition(families(collect(conn, now, config), config))


# -- the families ---------------------------------------------------------------------------

DAILY = "since 00:00 UTC; resets to 0 at midnight UTC (rate() and increase() handle the reset)"
TIERS = tuple(CapitalTier)


def _seconds(at: datetime) -> float:
    return at.timestamp()


def families(scrape: Scrape, config: MetricsConfig) -> list[Family]:
    """Every family, in a stable order; a family whose read failed has no samples."""
    return [
        *_system(scrape),
        *_jobs(scrape),
        *_events(scrape),
        *_daily(scrape),
        *_capital(scrape),
        *_markets(scrape),
        *_processes(scrape),
        *_claim_to_finish(scrape, config),
        Family(
            "perpbot_metrics_read_ok",
            MetricType.GAUGE,
            "1 if this scrape's read finished within the statement timeout, 0 if it was cut "
            "(its families then have no samples)",
            tuple(sample(name not in scrape.failed, read=name) for name in READS),
        ),
    ]


def _system(scrape: Scrape) -> list[Family]:
    s = scrape.system
    return [
        Family(
            "perpbot_system_status",
            MetricType.GAUGE,
            "1 for the system's current status (running, paused, halted, manual_override)",
            () if s is None else tuple(sample(s.status == v, status=v) for v in SystemStatus),
        ),
        Family(
            "perpbot_risk_mode",
            MetricType.GAUGE,
            "1 for the risk mode in force",
            () if s is None else tuple(sample(s.risk_mode == v, mode=v) for v in RiskMode),
        ),
        Family(
            "perpbot_daily_loss_limit_usd",
            MetricType.GAUGE,
            "The daily loss limit: the system halts when today's loss used reaches it",
            () if s is None else (sample(s.daily_loss_limit_usd),),
        ),
        Family(
            "perpbot_consecutive_failures",
            MetricType.GAUGE,
            "Failed attempts in a row, system-wide (a success resets it)",
            () if s is None else (sample(s.consecutive_failures),),
        ),
        Family(
            "perpbot_consecutive_failures_limit",
            MetricType.GAUGE,
            "Consecutive failed attempts that halt the system",
            () if s is None else (sample(s.max_consecutive_failures),),
        ),
    ]


def _jobs(scrape: Scrape) -> list[Family]:
    live = scrape.live
    global_row = _global_counters(scrape)
    return [
        Family(
            "perpbot_jobs",
            MetricType.GAUGE,
            "Jobs in a live status now (pending, admitted, running)",
            ()
            if live is None
            else (
                sample(live.pending, status="pending"),
                sample(live.admitted, status="admitted"),
                sample(live.running, status="running"),
            ),
        ),
        Family(
            "perpbot_pending_jobs_by_code",
            MetricType.GAUGE,
            "Pending jobs by the decision the last tick stored: the code of the hold that "
            "keeps them waiting, admitted (passed every check, waiting for room) or none "
            "(not judged yet)",
            ()
            if scrape.pending_codes is None
            else tuple(sample(r.jobs, code=r.code or "none") for r in scrape.pending_codes),
        ),
        Family(
            "perpbot_jobs_finished_total",
            MetricType.COUNTER,
            f"Jobs that ended completed or failed (daily_counters), {DAILY}",
            ()
            if scrape.counters is None
            else (
                sample(0 if global_row is None else global_row.jobs_completed, status="completed"),
                sample(0 if global_row is None else global_row.jobs_failed, status="failed"),
            ),
        ),
    ]


def _global_counters(scrape: Scrape) -> shared.CounterRow | None:
    return next((r for r in scrape.counters or () if r.scope == "global"), None)


def _sum_events(rows: Sequence[reads.EventCount], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        label = getattr(r, key) or "none"
        out[label] = out.get(label, 0) + r.events
    return out


def _events(scrape: Scrape) -> list[Family]:
    rows = scrape.events
    if rows is None:
        events: tuple[Sample, ...] = ()
        admissions: tuple[Sample, ...] = ()
        denials: tuple[Sample, ...] = ()
        expirations: tuple[Sample, ...] = ()
    else:
        by_edge: dict[tuple[str, str], int] = {}
        for r in rows:
            key = (r.action or "unknown", r.code or "none")
            by_edge[key] = by_edge.get(key, 0) + r.events
        events = tuple(sample(n, action=a, code=c) for (a, c), n in sorted(by_edge.items()))
        admissions = (sample(sum(r.events for r in rows if r.action == JobAction.ADMIT)),)
        rejects = [r for r in rows if r.action == JobAction.REJECT]
        denials = tuple(sample(n, code=c) for c, n in sorted(_sum_events(rejects, "code").items()))
        expires = [r for r in rows if r.action == JobAction.EXPIRE]
        expirations = tuple(
            sample(n, held_code=c) for c, n in sorted(_sum_events(expires, "held_code").items())
        )
    return [
        Family(
            "perpbot_job_events_total",
            MetricType.COUNTER,
            f"Job status changes (job_events) by action and decision code, {DAILY}",
            events,
        ),
        Family(
            "perpbot_admissions_total",
            MetricType.COUNTER,
            f"Jobs the tick admitted (job_events action admit), {DAILY}",
            admissions,
        ),
        Family(
            "perpbot_denials_total",
            MetricType.COUNTER,
            f"Jobs rejected, by the code that made them impossible (job_events action "
            f"reject), {DAILY}",
            denials,
        ),
        Family(
            "perpbot_expirations_total",
            MetricType.COUNTER,
            f"Pending jobs expired at their deadline, by the hold that kept them waiting "
            f"(held_code, none if never held; job_events action expire), {DAILY}. Holds "
            f"write no event: perpbot_pending_jobs_by_code counts the current ones",
            expirations,
        ),
    ]


def _daily(scrape: Scrape) -> list[Family]:
    rows = scrape.counters
    global_row = _global_counters(scrape)
    per_exchange = {r.scope: r for r in rows or () if r.scope != "global"}
    names = sorted(set(per_exchange) | {e.name for e in scrape.exchanges or ()})
    spec = (
        ("volume_usd", "Volume traded (filled notional)"),
        ("fees_usd", "Fees paid"),
        ("realized_pnl_usd", "Realized PnL (sells - buys - fees)"),
        ("loss_used_usd", "Loss used against the daily loss limit"),
    )
    out: list[Family] = []
    for column, text in spec:
        name = column.removesuffix("_usd")
        value = Decimal(0) if global_row is None else getattr(global_row, column)
        out.append(
            Family(
                f"perpbot_daily_{name}_usd",
                MetricType.GAUGE,
                f"{text} today, all exchanges (daily_counters, UTC day; 0 after midnight)",
                () if rows is None else (sample(value),),
            )
        )
        out.append(
            Family(
                f"perpbot_exchange_daily_{name}_usd",
                MetricType.GAUGE,
                f"{text} today on one exchange (daily_counters, UTC day; 0 after midnight)",
                ()
                if rows is None
                else tuple(
                    sample(
                        getattr(per_exchange[n], column) if n in per_exchange else Decimal(0),
                        exchange=n,
                    )
                    for n in names
                ),
            )
        )
    return out


def _capital(scrape: Scrape) -> list[Family]:
    ex = scrape.exchanges
    reserved: Mapping[tuple[str, str], reads.TierReserved] = {
        (r.exchange, r.tier): r for r in scrape.reserved or ()
    }
    names = sorted({e.name for e in ex or ()} | {k[0] for k in reserved})
    books = {e.name: _book(e) for e in ex or ()}

    def per_exchange(values: Mapping[str, Value]) -> tuple[Sample, ...]:
        return tuple(sample(v, exchange=n) for n, v in sorted(values.items()))

    return [
        Family(
            "perpbot_capital_reserved_usd",
            MetricType.GAUGE,
            "Capital held by active reservations (jobs admitted or running), per exchange "
            "and tier (volume S1, arbitrage S2, reserve S3)",
            ()
            if scrape.reserved is None
            else tuple(
                sample(
                    reserved[(n, t)].reserved_usd if (n, t) in reserved else Decimal(0),
                    exchange=n,
                    tier=t.value,
                )
                for n in names
                for t in TIERS
            ),
        ),
        Family(
            "perpbot_capital_reservations",
            MetricType.GAUGE,
            "Active capital reservations, per exchange and tier",
            ()
            if scrape.reserved is None
            else tuple(
                sample(
                    reserved[(n, t)].reservations if (n, t) in reserved else 0,
                    exchange=n,
                    tier=t.value,
                )
                for n in names
                for t in TIERS
            ),
        ),
        Family(
            "perpbot_capital_budget_usd",
            MetricType.GAUGE,
            "A tier's budget on an exchange: equity x the tier's share",
            tuple(
                sample(book.budget(t), exchange=n, tier=t.value)
                for n, book in books.items()
                for t in TIERS
            ),
        ),
        Family(
            "perpbot_capital_inflight_limit_usd",
            MetricType.GAUGE,
            "The most all active reservations on an exchange may hold: equity x in-flight cap",
            per_exchange({n: b.inflight_limit_usd for n, b in books.items()}),
        ),
        Family(
            "perpbot_exchange_equity_usd",
            MetricType.GAUGE,
            "An exchange account's equity",
            per_exchange({e.name: e.equity_usd for e in ex or ()}),
        ),
        Family(
            "perpbot_exchange_safe_mode",
            MetricType.GAUGE,
            "1 while the exchange is in safe mode (it admits no new risk-increasing job)",
            per_exchange({e.name: e.safe_mode for e in ex or ()}),
        ),
        Family(
            "perpbot_exchange_enabled",
            MetricType.GAUGE,
            "1 if the exchange is enabled in the settings",
            per_exchange({e.name: e.enabled for e in ex or ()}),
        ),
        Family(
            "perpbot_exchange_max_concurrent_jobs",
            MetricType.GAUGE,
            "Jobs that may run at once on the exchange",
            per_exchange({e.name: e.max_concurrent_jobs for e in ex or ()}),
        ),
        Family(
            "perpbot_exchange_consecutive_failures",
            MetricType.GAUGE,
            "Failed jobs in a row on the exchange (a success resets it)",
            per_exchange({e.name: e.consecutive_failures for e in ex or ()}),
        ),
    ]


def _book(row: reads.ExchangeRow) -> ExchangeBook:
    return ExchangeBook(
        exchange=row.name,
        equity_usd=row.equity_usd,
        volume_share=row.volume_share,
        arbitrage_share=row.arbitrage_share,
        reserve_share=row.reserve_share,
        single_job_cap=row.single_job_cap,
        inflight_cap=row.inflight_cap,
        safe_mode=row.safe_mode,
    )


def _markets(scrape: Scrape) -> list[Family]:
    rows = scrape.markets or []
    return [
        Family(
            "perpbot_exchange_latency_seconds",
            MetricType.GAUGE,
            "API latency measured with the latest market snapshot, per exchange and symbol",
            tuple(
                sample(r.latency_ms / 1000, exchange=r.exchange, symbol=r.symbol)
                for r in rows
                if r.latency_ms is not None
            ),
        ),
        Family(
            "perpbot_market_snapshot_timestamp_seconds",
            MetricType.GAUGE,
            "When the latest market snapshot was observed (Unix seconds), per exchange and "
            "symbol: time() - this is its age",
            tuple(
                sample(_seconds(r.observed_at), exchange=r.exchange, symbol=r.symbol) for r in rows
            ),
        ),
        Family(
            "perpbot_market_funding_rate",
            MetricType.GAUGE,
            "Funding rate of the latest market snapshot (a ratio per funding period)",
            tuple(
                sample(r.funding_rate, exchange=r.exchange, symbol=r.symbol)
                for r in rows
                if r.funding_rate is not None
            ),
        ),
    ]


def _processes(scrape: Scrape) -> list[Family]:
    w = scrape.workers
    t = scrape.ticks
    locks = scrape.locks or []
    return [
        Family(
            "perpbot_workers",
            MetricType.GAUGE,
            "Worker processes not stopped: live (a heartbeat within the lease) or lost (none "
            "since: killed or hung; a killed worker stays lost, its row is never removed)",
            () if w is None else (sample(w.live, state="live"), sample(w.lost, state="lost")),
        ),
        Family(
            "perpbot_worker_live_slots",
            MetricType.GAUGE,
            "Jobs the live workers may run at once (the sum of their concurrency)",
            () if w is None else (sample(w.live_slots),),
        ),
        Family(
            "perpbot_worker_last_heartbeat_timestamp_seconds",
            MetricType.GAUGE,
            "The newest heartbeat of a worker not stopped (Unix seconds; absent when none)",
            ()
            if w is None or w.newest_heartbeat_at is None
            else (sample(_seconds(w.newest_heartbeat_at)),),
        ),
        Family(
            "perpbot_tick_last_timestamp_seconds",
            MetricType.GAUGE,
            "When the newest admission tick ran (scheduler_ticks; Unix seconds, the database "
            "clock; absent before the first). Every tick that ran is recorded, paused or not",
            () if t is None or t.last_tick_at is None else (sample(_seconds(t.last_tick_at)),),
        ),
        Family(
            "perpbot_tick_last_duration_seconds",
            MetricType.GAUGE,
            "How long the newest admission tick took, from its tick lock to its record",
            () if t is None or t.duration_ms is None else (sample(t.duration_ms / 1000),),
        ),
        Family(
            "perpbot_ticks_total",
            MetricType.COUNTER,
            "Admission ticks that ran, every scheduler summed (scheduler_ticks keeps one row "
            "per scheduler process, never removed: this only grows)",
            () if t is None else (sample(t.ticks),),
        ),
        Family(
            "perpbot_scheduler_leader",
            MetricType.GAUGE,
            "1 if a scheduler holds the leader lock (it runs lease recovery, protection "
            "expiry and the archive)",
            () if scrape.leader is None else (sample(scrape.leader.present),),
        ),
        Family(
            "perpbot_protection_locks",
            MetricType.GAUGE,
            "Active protection locks by scope and code (unhedged_exposure: an exchange left "
            "with exposure by a failed unwind)",
            tuple(sample(r.locks, scope=r.scope, code=r.code) for r in locks),
        ),
    ]


def _claim_to_finish(scrape: Scrape, config: MetricsConfig) -> list[Family]:
    c = scrape.claim_to_finish
    window = config.finish_window.total_seconds()
    quantiles: tuple[Sample, ...] = ()
    if c is not None and c.quantiles is not None:
        quantiles = tuple(
            sample(v, quantile=f"{q:g}") for q, v in zip(config.quantiles, c.quantiles, strict=True)
        )
    return [
        Family(
            "perpbot_claim_to_finish_seconds",
            MetricType.SUMMARY,
            f"Claim to finish of the jobs finished in the last {window:g} s (a worker's "
            "last attempt: started_at to finished_at); quantiles over that sliding window "
            "only, no _sum or _count (see perpbot_claim_to_finish_window_jobs)",
            quantiles,
        ),
        Family(
            "perpbot_claim_to_finish_window_jobs",
            MetricType.GAUGE,
            f"Jobs a worker finished in the last {window:g} s (the summary's window)",
            () if c is None else (sample(c.jobs),),
        ),
    ]
