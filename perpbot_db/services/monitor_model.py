"""The monitoring state's model: the pydantic sections :mod:`perpbot_db.services.monitor`
builds and the console serves (the JSON shape is described there; ``"version": 1``)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perpbot_db.domain import health
from perpbot_db.domain.lifecycle import CapitalTier, RiskMode, SystemStatus

VERSION: Literal[1] = 1


class _Model(BaseModel):
    # A NaN a hand-written row may hold is shown as "NaN", not a failed build.
    model_config = ConfigDict(frozen=True, populate_by_name=True, allow_inf_nan=True)


class Override(_Model):
    """An operator's override of a halt (status ``manual_override``): who, when, why."""

    active: bool
    by: str | None = None
    at: datetime | None = None
    reason: str | None = None


class GlobalSection(_Model):
    status: SystemStatus
    risk_mode: RiskMode
    day: date
    volume_usd: Decimal
    fees_usd: Decimal
    realized_pnl_usd: Decimal
    jobs_completed: int
    jobs_failed: int
    daily_loss_limit_usd: Decimal
    loss_used_usd: Decimal
    loss_used_ratio: Decimal
    halt_reason: str | None
    override: Override
    updated_at: datetime
    updated_by: str | None


class TierCapital(_Model):
    tier: CapitalTier
    share: Decimal
    budget_usd: Decimal
    used_usd: Decimal
    available_usd: Decimal


class ExchangeCapital(_Model):
    exchange: str
    enabled: bool
    equity_usd: Decimal
    tiers: list[TierCapital]
    reserve_usd: Decimal
    inflight_usd: Decimal
    inflight_limit_usd: Decimal
    single_job_limit_usd: Decimal
    max_inflight_notional_usd: Decimal | None
    active_jobs: int
    breaches: list[str]


class DayCounters(_Model):
    volume_usd: Decimal = Decimal(0)
    fees_usd: Decimal = Decimal(0)
    realized_pnl_usd: Decimal = Decimal(0)
    loss_used_usd: Decimal = Decimal(0)
    jobs_completed: int = 0
    jobs_failed: int = 0


class ExchangeStatus(_Model):
    name: str
    enabled: bool
    safe_mode: bool
    safe_mode_reason: str | None
    safe_mode_until: datetime | None
    latency_ms: Decimal | None
    latency_hard_ms: Decimal
    funding_rates: dict[str, Decimal | None]
    open_positions: None = None  # no adapter reports positions yet
    concurrent_jobs: int
    running_jobs: int
    max_concurrent_jobs: int
    consecutive_failures: int
    market_age_s: float | None
    stale_symbols: list[str]
    today: DayCounters


class LegView(_Model):
    leg_index: int
    exchange: str
    side: str
    quantity: Decimal
    reduce_only: bool
    status: str
    filled_quantity: Decimal
    avg_price: Decimal | None
    fee_usd: Decimal


class RunningJob(_Model):
    id: int
    strategy: str
    symbol: str
    notional_usd: Decimal
    worker_id: str | None
    attempt: int
    started_at: datetime
    age_s: float
    lease_expires_at: datetime | None
    override_by: str | None
    legs: list[LegView]


class RunningCursor(_Model):
    """Where the next page of running jobs starts (after this job)."""

    started_at: datetime
    id: int


class RunningJobsPage(_Model):
    jobs: list[RunningJob]
    next: RunningCursor | None


class JobsSection(_Model):
    pending: int
    admitted: int
    running: int
    completed_today: int
    failed_today: int
    running_jobs: list[RunningJob]
    running_next: RunningCursor | None


class LockView(_Model):
    id: int
    scope: str
    target: str
    code: str
    reason: str
    context: dict[str, Any]
    created_by: str
    created_at: datetime
    until: datetime
    expires_in_s: float  # at or below 0: past its end, released at the leader's next round


class FastMarket(_Model):
    """A symbol whose volatility is beyond the mode's hard limit now, or that is locked
    for it (blacklisted until ``locked_until``)."""

    symbol: str
    exchange: str | None
    volatility: str | None
    limit: Decimal
    locked_until: datetime | None


class DelayedExchange(_Model):
    """An exchange whose API latency is beyond the mode's hard limit now, or that is locked
    for it (in safe mode until ``locked_until``)."""

    exchange: str
    latency_ms: str | None
    limit_ms: Decimal
    locked_until: datetime | None


class HoldCount(_Model):
    code: str
    jobs: int
    example_job_id: int
    example: str


class EventCount(_Model):
    action: str
    code: str | None
    held_code: str | None
    events: int
    latest_at: datetime
    example_job_id: int
    example: str


class RiskSection(_Model):
    mode: RiskMode
    halted: bool
    halt_reason: str | None
    override: Override
    consecutive_failures: int
    max_consecutive_failures: int
    exchange_failures: dict[str, int]
    fast_markets: list[FastMarket]
    delayed_exchanges: list[DelayedExchange]
    locks: list[LockView]
    holds: list[HoldCount]
    denials: list[EventCount]
    failures: list[EventCount]
    unhedged_ends: int
    window_s: float
    events_problem: str | None  # why denials and failures are missing (a read cut short)
    max_market_age_s: float
    limits_problem: str | None


class MarketRow(_Model):
    exchange: str
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    funding_rate: Decimal | None
    volatility: Decimal | None
    latency_ms: Decimal | None
    observed_at: datetime
    age_s: float
    stale: bool


class WorkerView(_Model):
    id: str
    host: str
    pid: int
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    jobs_finished: int


class SchedulerView(_Model):
    """One scheduler process's last tick: when, how long, what it did, why it skipped."""

    scheduler: str
    last_tick_at: datetime
    age_s: float
    duration_ms: Decimal
    rescored: int
    admitted: int
    rejected: int
    expired: int
    skipped: str | None
    ticks: int


class ProcessesSection(_Model):
    leader: str | None
    last_tick_at: datetime | None
    tick_age_s: float | None
    schedulers: list[SchedulerView]
    live_workers: int
    workers: list[WorkerView]


class ReasonView(_Model):
    code: health.ReasonCode
    severity: health.Verdict
    text: str


class HealthSection(_Model):
    verdict: health.Verdict
    reasons: list[ReasonView]


class MonitoringState(_Model):
    """The whole state, version 1 (see the module docstring for the shape)."""

    version: Literal[1] = VERSION
    built_at: datetime
    build_ms: float
    global_: GlobalSection = Field(alias="global")
    capital: list[ExchangeCapital]
    exchanges: list[ExchangeStatus]
    jobs: JobsSection
    risk: RiskSection
    market: list[MarketRow]
    processes: ProcessesSection
    health: HealthSection

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (decimals as strings), ``global`` by its name."""
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)
