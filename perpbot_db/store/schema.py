"""The schema as typed SQLAlchemy 2 models.

The Alembic revisions in ``migrations/`` are the only way the schema changes;
these models describe it (a test proves the two agree) and serve simple reads.
Rules live in the database too: statuses are CHECKed against the lifecycle's
words, money is ``numeric`` and non-negative where it must be, client order
ids and idempotency keys are unique, and ``job_events`` refuses UPDATE and
DELETE through a trigger (created by the migration).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from perpbot_db.domain.lifecycle import (
    JOB_ACTIONS,
    JOB_STATUSES,
    REFUSAL_ACTIONS,
    CapitalTier,
    LegStatus,
    ReservationStatus,
    RiskMode,
    Side,
    Strategy,
    SystemStatus,
    sql_in,
)
from perpbot_db.domain.protections import Scope
from perpbot_db.domain.risk import LIMIT_NAMES

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Money = Numeric(24, 8)
Quantity = Numeric(28, 12)
Score = Numeric(6, 3)
Ratio = Numeric(6, 5)
TZ = DateTime(timezone=True)

FINISHED_SQL = sql_in(["completed", "failed", "rejected", "cancelled", "expired"])


def _values(enum: Any) -> str:
    return sql_in([member.value for member in enum])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Exchange(Base):
    __tablename__ = "exchanges"
    __table_args__ = (
        CheckConstraint("name ~ '^[a-z][a-z0-9_]{0,31}$'", name="name_format"),
        CheckConstraint("equity_usd >= 0", name="equity_nonneg"),
        CheckConstraint("starting_equity_usd > 0", name="starting_equity_pos"),
        CheckConstraint(
            "volume_share >= 0 AND arbitrage_share >= 0 AND reserve_share >= 0 "
            "AND volume_share + arbitrage_share + reserve_share <= 1",
            name="tier_shares",
        ),
        CheckConstraint(
            "single_job_cap > 0 AND inflight_cap <= 1 AND single_job_cap <= inflight_cap",
            name="caps",
        ),
        CheckConstraint("max_concurrent_jobs > 0", name="concurrency_pos"),
        CheckConstraint(
            "max_inflight_notional_usd IS NULL OR max_inflight_notional_usd > 0",
            name="inflight_notional_pos",
        ),
        CheckConstraint(
            "safe_mode OR (safe_mode_reason IS NULL AND safe_mode_until IS NULL)",
            name="safe_mode_fields",
        ),
    )

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    equity_usd: Mapped[Decimal] = mapped_column(Money)
    starting_equity_usd: Mapped[Decimal] = mapped_column(Money)
    safe_mode: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    safe_mode_reason: Mapped[str | None] = mapped_column(Text)
    safe_mode_until: Mapped[datetime | None] = mapped_column(TZ)
    volume_share: Mapped[Decimal] = mapped_column(Ratio)
    arbitrage_share: Mapped[Decimal] = mapped_column(Ratio)
    reserve_share: Mapped[Decimal] = mapped_column(Ratio)
    single_job_cap: Mapped[Decimal] = mapped_column(Ratio)
    inflight_cap: Mapped[Decimal] = mapped_column(Ratio)
    max_concurrent_jobs: Mapped[int] = mapped_column(Integer)
    max_inflight_notional_usd: Mapped[Decimal | None] = mapped_column(Money)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class HedgeJob(Base):
    __tablename__ = "hedge_jobs"
    __table_args__ = (
        CheckConstraint(f"strategy IN ({_values(Strategy)})", name="strategy"),
        CheckConstraint(f"status IN ({sql_in(JOB_STATUSES)})", name="status"),
        CheckConstraint("symbol ~ '^[A-Za-z0-9]+/[A-Za-z0-9]+(:[A-Za-z0-9]+)?'", name="symbol"),
        CheckConstraint("notional_usd > 0", name="notional_pos"),
        CheckConstraint("expected_volume_usd >= 0", name="volume_nonneg"),
        CheckConstraint(
            "(risk_score IS NULL OR risk_score BETWEEN 0 AND 100) AND "
            "(latency_score IS NULL OR latency_score BETWEEN 0 AND 100) AND "
            "(vol_score IS NULL OR vol_score BETWEEN 0 AND 100) AND "
            "(funding_score IS NULL OR funding_score BETWEEN 0 AND 100) AND "
            "(liquidity_score IS NULL OR liquidity_score BETWEEN 0 AND 100) AND "
            "(final_score IS NULL OR final_score BETWEEN 0 AND 100)",
            name="scores_0_100",
        ),
        CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts"),
        CheckConstraint(
            f"(status IN ({FINISHED_SQL})) = (finished_at IS NOT NULL)", name="finished_at"
        ),
        CheckConstraint(
            "status <> 'running' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="running_has_lease",
        ),
        # nothing waits forever: a held job expires at its deadline (migration 0006)
        CheckConstraint("status <> 'pending' OR deadline IS NOT NULL", name="pending_has_deadline"),
        CheckConstraint(
            "idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 200",
            name="idempotency_key_len",
        ),
        Index(
            "ix_hedge_jobs_pending_score",
            text("final_score DESC NULLS LAST"),
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_hedge_jobs_pending_due", "run_after", postgresql_where=text("status = 'pending'")
        ),
        Index(
            "ix_hedge_jobs_pending_deadline",
            "deadline",
            postgresql_where=text("status = 'pending' AND deadline IS NOT NULL"),
        ),
        Index(
            "ix_hedge_jobs_admitted",
            "admitted_at",
            "id",
            postgresql_where=text("status = 'admitted'"),
        ),
        Index(
            "ix_hedge_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index(
            "ix_hedge_jobs_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
        Index(  # the rolling re-score's order, ties included (migration 0007)
            "ix_hedge_jobs_pending_scored_at_id",
            "scored_at",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(  # the closes of an opening, by the key they name (migration 0016)
            "ix_hedge_jobs_close_opens",
            text("(metadata ->> 'opens')"),
            postgresql_where=text("(metadata ->> 'phase') = 'close'"),
        ),
        Index(  # the producers' counts of their jobs in flight (migration 0017)
            "ix_hedge_jobs_in_flight",
            "strategy",
            "symbol",
            postgresql_where=text(
                "status IN ('pending', 'admitted', 'running') "
                "AND strategy IN ('volume', 'arb', 'funding_arb')"
            ),
        ),
        Index(  # the rebalance rounds per symbol (migration 0017)
            "ix_hedge_jobs_rebalance",
            "symbol",
            "status",
            postgresql_where=text("strategy = 'hedge_rebalance'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    strategy: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    notional_usd: Mapped[Decimal] = mapped_column(Money)
    expected_edge_bps: Mapped[Decimal] = mapped_column(Numeric(12, 4), server_default=text("0"))
    expected_pnl_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    expected_volume_usd: Mapped[Decimal] = mapped_column(Money)
    risk_score: Mapped[Decimal | None] = mapped_column(Score)
    latency_score: Mapped[Decimal | None] = mapped_column(Score)
    vol_score: Mapped[Decimal | None] = mapped_column(Score)
    funding_score: Mapped[Decimal | None] = mapped_column(Score)
    liquidity_score: Mapped[Decimal | None] = mapped_column(Score)
    final_score: Mapped[Decimal | None] = mapped_column(Score)
    # -infinity until first scored, so never-scored jobs come first in the rolling re-score.
    scored_at: Mapped[datetime] = mapped_column(TZ, server_default=text("'-infinity'"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    run_after: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    deadline: Mapped[datetime | None] = mapped_column(TZ)
    worker_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ)
    idempotency_key: Mapped[str | None] = mapped_column(Text, unique=True)
    decision_code: Mapped[str | None] = mapped_column(Text)
    decision_context: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    unhedged: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # An operator's force-admit past soft limits (who); hard limits still apply.
    override_by: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    admitted_at: Mapped[datetime | None] = mapped_column(TZ)
    started_at: Mapped[datetime | None] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)


class Leg(Base):
    __tablename__ = "legs"
    __table_args__ = (
        CheckConstraint(f"side IN ({_values(Side)})", name="side"),
        CheckConstraint(f"status IN ({_values(LegStatus)})", name="status"),
        CheckConstraint("quantity > 0", name="quantity_pos"),
        CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_within_quantity"
        ),
        CheckConstraint("avg_price IS NULL OR avg_price > 0", name="avg_price_pos"),
        CheckConstraint("client_order_id ~ '^[A-Za-z0-9-]{1,32}$'", name="client_order_id_format"),
        CheckConstraint("leg_index >= 0 AND attempt >= 1", name="numbering"),
        Index("uq_legs_job_id_leg_index_attempt", "job_id", "leg_index", "attempt", unique=True),
        Index("ix_legs_booked_at", "booked_at", postgresql_using="brin"),
        Index(
            "ix_legs_unwinds_leg_id",
            "unwinds_leg_id",
            postgresql_where=text("unwinds_leg_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("hedge_jobs.id", ondelete="CASCADE"))
    leg_index: Mapped[int] = mapped_column(SmallInteger)
    attempt: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    # No foreign key to exchanges (migration 0005): a key-share lock on an exchange row
    # per leg; submission checks the name and ``perpbot audit`` checks every leg's.
    exchange: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    side: Mapped[str] = mapped_column(Text)
    quantity: Mapped[Decimal] = mapped_column(Quantity)
    reduce_only: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    client_order_id: Mapped[str] = mapped_column(Text, unique=True)
    exchange_order_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    filled_quantity: Mapped[Decimal] = mapped_column(Quantity, server_default=text("0"))
    avg_price: Mapped[Decimal | None] = mapped_column(Numeric(28, 12))
    fee_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    # The leg whose filled quantity this reduce-only order closes (an unwind).
    unwinds_leg_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("legs.id", ondelete="CASCADE")
    )
    # Booked into daily_counters at the finish of its attempt (day = booked_at's UTC date).
    realized_pnl_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    booked_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class CapitalReservation(Base):
    __tablename__ = "capital_reservations"
    __table_args__ = (
        CheckConstraint(f"tier IN ({_values(CapitalTier)})", name="tier"),
        CheckConstraint(f"status IN ({_values(ReservationStatus)})", name="status"),
        CheckConstraint("amount_usd > 0", name="amount_pos"),
        CheckConstraint(
            "(status = 'released') = (released_at IS NOT NULL AND release_reason IS NOT NULL)",
            name="released_fields",
        ),
        Index(
            "uq_capital_reservations_active_job_exchange",
            "job_id",
            "exchange",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        # Every reservation of a job, released ones too: the archive's delete and its
        # foreign-key cascade find them by job.
        Index("ix_capital_reservations_job_id", "job_id"),
        Index(
            "ix_capital_reservations_active_exchange",
            "exchange",
            "tier",
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("hedge_jobs.id", ondelete="CASCADE"))
    exchange: Mapped[str] = mapped_column(Text)  # no foreign key: as ``legs.exchange``
    tier: Mapped[str] = mapped_column(Text)
    amount_usd: Mapped[Decimal] = mapped_column(Money)
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    release_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    released_at: Mapped[datetime | None] = mapped_column(TZ)


class DailyCounter(Base):
    __tablename__ = "daily_counters"
    __table_args__ = (
        CheckConstraint("scope = 'global' OR scope ~ '^[a-z][a-z0-9_]{0,31}$'", name="scope"),
        CheckConstraint(
            "volume_usd >= 0 AND loss_used_usd >= 0 AND jobs_completed >= 0 AND jobs_failed >= 0",
            name="nonneg",
        ),
    )

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    volume_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    fees_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    realized_pnl_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    loss_used_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    jobs_completed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    jobs_failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class JobEvent(Base):
    """Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.  Events never move to the
    archive: the table is insert-only and no claim, tick or finish reads it."""

    __tablename__ = "job_events"
    __table_args__ = (
        CheckConstraint(
            f"from_status IS NULL OR from_status IN ({sql_in(JOB_STATUSES)})", name="from_status"
        ),
        CheckConstraint(f"to_status IN ({sql_in(JOB_STATUSES)})", name="to_status"),
        CheckConstraint(f"action IS NULL OR action IN ({sql_in(JOB_ACTIONS)})", name="action"),
        CheckConstraint("length(actor) > 0", name="actor"),
        Index("ix_job_events_job_id_id", "job_id", "id"),
        Index("ix_job_events_at", "at", postgresql_using="brin"),
        Index(  # the console's tally of refusals and failures (migration 0015)
            "ix_job_events_refusals",
            "at",
            postgresql_where=text(f"action IN ({sql_in(REFUSAL_ACTIONS)})"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    # No foreign key (migration 0005): every event is written from the RETURNING of the
    # UPDATE that moves its job; ``perpbot audit`` checks each event has its job.
    job_id: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    from_status: Mapped[str | None] = mapped_column(Text)
    to_status: Mapped[str] = mapped_column(Text)
    # The lifecycle edge's action (``JobAction``); NULL on events written before 0010.
    action: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    code: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class SystemState(Base):
    """The one control row (``id`` is always true)."""

    __tablename__ = "system_state"
    __table_args__ = (
        CheckConstraint("id", name="single_row"),
        CheckConstraint(f"status IN ({_values(SystemStatus)})", name="status"),
        CheckConstraint(f"risk_mode IN ({_values(RiskMode)})", name="risk_mode"),
        CheckConstraint("daily_loss_limit_usd > 0", name="loss_limit_pos"),
        CheckConstraint("(status = 'halted') = (halt_reason IS NOT NULL)", name="halt_reason"),
    )

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'running'"))
    risk_mode: Mapped[str] = mapped_column(Text, server_default=text("'balanced'"))
    daily_loss_limit_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("1000"))
    max_consecutive_failures: Mapped[int] = mapped_column(Integer, server_default=text("5"))
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    halt_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_by: Mapped[str] = mapped_column(Text, server_default=text("'migration'"))


class RiskLimit(Base):
    """A risk mode's limit in force (settings synced, or ``perpbot risk set``); a limit
    without a row is its default (``perpbot_db.domain.risk.LIMITS``)."""

    __tablename__ = "risk_limits"
    __table_args__ = (
        CheckConstraint(f"mode IN ({_values(RiskMode)})", name="mode"),
        CheckConstraint(f"name IN ({sql_in(LIMIT_NAMES)})", name="name"),
        CheckConstraint("abs(value) < 1000000000000", name="finite"),
        CheckConstraint("length(updated_by) > 0", name="updated_by"),
    )

    mode: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Decimal] = mapped_column(Numeric)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_by: Mapped[str] = mapped_column(Text)


class SchedulerTick(Base):
    """The last admission tick of each scheduler process (migration 0013)."""

    __tablename__ = "scheduler_ticks"
    __table_args__ = (CheckConstraint("duration_ms >= 0", name="duration"),)

    scheduler: Mapped[str] = mapped_column(Text, primary_key=True)
    last_tick_at: Mapped[datetime] = mapped_column(TZ)
    duration_ms: Mapped[Decimal] = mapped_column(Numeric(14, 3))
    rescored: Mapped[int] = mapped_column(Integer)
    admitted: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    expired: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[str | None] = mapped_column(Text)
    ticks: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))


class MarketSnapshot(Base):
    __tablename__ = "market_snapshots"
    __table_args__ = (
        CheckConstraint("bid > 0 AND ask > 0 AND last > 0 AND bid <= ask", name="prices"),
        CheckConstraint("volatility IS NULL OR volatility >= 0", name="volatility_nonneg"),
        CheckConstraint("latency_ms IS NULL OR latency_ms >= 0", name="latency_nonneg"),
    )

    exchange: Mapped[str] = mapped_column(Text, ForeignKey("exchanges.name"), primary_key=True)
    symbol: Mapped[str] = mapped_column(Text, primary_key=True)
    bid: Mapped[Decimal] = mapped_column(Numeric(28, 12))
    ask: Mapped[Decimal] = mapped_column(Numeric(28, 12))
    last: Mapped[Decimal] = mapped_column(Numeric(28, 12))
    funding_rate: Mapped[Decimal | None] = mapped_column(Numeric(12, 8))
    volatility: Mapped[Decimal | None] = mapped_column(Numeric(12, 8))
    latency_ms: Mapped[Decimal | None] = mapped_column(Numeric(12, 3))
    observed_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


class ControlEvent(Base):
    """Append-only audit of operator actions: who, when, what and why."""

    __tablename__ = "control_events"
    __table_args__ = (
        CheckConstraint("length(actor) > 0", name="actor"),
        CheckConstraint("length(reason) > 0", name="reason"),
        Index("ix_control_events_at", "at", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class Blacklist(Base):
    """A time-bounded lock on a symbol or an exchange, with its reason (a protection)."""

    __tablename__ = "blacklist"
    __table_args__ = (
        CheckConstraint("kind IN ('symbol', 'exchange')", name="kind"),
        CheckConstraint("expires_at > created_at", name="expiry"),
        Index(
            "ix_blacklist_active",
            "kind",
            "target",
            "expires_at",
            postgresql_where=text("lifted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TZ)
    lifted_at: Mapped[datetime | None] = mapped_column(TZ)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class ProtectionLock(Base):
    """A protection's time-bounded lock, with its reason (domain/protections.py).

    At most one active lock per (scope, target, code): a unique partial index, so a
    protection that keeps tripping writes one row, not one per tick.  A lock ends
    once: at its ``until`` (released by the leader's protection expiry) or by an
    operator; ``released_at`` and ``released_by`` are written together.
    """

    __tablename__ = "protection_locks"
    __table_args__ = (
        CheckConstraint(f"scope IN ({_values(Scope)})", name="scope"),
        CheckConstraint("until > created_at", name="until_after_created"),
        CheckConstraint("(released_at IS NULL) = (released_by IS NULL)", name="released_fields"),
        Index(
            "ix_protection_locks_active",
            "scope",
            "target",
            "code",
            unique=True,
            postgresql_where=text("released_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    scope: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    until: Mapped[datetime] = mapped_column(TZ)
    released_at: Mapped[datetime | None] = mapped_column(TZ)
    released_by: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    """The worker registry: one row per worker process, its heartbeat and its tally."""

    __tablename__ = "workers"
    __table_args__ = (CheckConstraint("concurrency > 0", name="concurrency_pos"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    stopped_at: Mapped[datetime | None] = mapped_column(TZ)
    jobs_finished: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class PaperOrder(Base):
    """The paper exchange's own book of record: one row per client order id it has seen.

    A row with ``status = 'cancelled'`` and no quantity is a tombstone: the id was
    cancelled before any order with it arrived, so a late order with it is refused.
    """

    __tablename__ = "paper_orders"
    __table_args__ = (
        CheckConstraint(
            "status IN ('open', 'filled', 'partially_filled', 'rejected', 'cancelled')",
            name="status",
        ),
        CheckConstraint(f"side IS NULL OR side IN ({_values(Side)})", name="side"),
        CheckConstraint("quantity IS NULL OR quantity > 0", name="quantity_pos"),
        CheckConstraint(
            "filled_quantity >= 0 AND (quantity IS NULL OR filled_quantity <= quantity)",
            name="filled_within_quantity",
        ),
        CheckConstraint("fee_usd >= 0", name="fee_nonneg"),
        Index(
            "uq_paper_orders_exchange_client_order_id", "exchange", "client_order_id", unique=True
        ),
        Index("ix_paper_orders_exchange_symbol", "exchange", "symbol"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    exchange: Mapped[str] = mapped_column(Text)
    client_order_id: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str | None] = mapped_column(Text)
    side: Mapped[str | None] = mapped_column(Text)
    quantity: Mapped[Decimal | None] = mapped_column(Quantity)
    reduce_only: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    status: Mapped[str] = mapped_column(Text)
    filled_quantity: Mapped[Decimal] = mapped_column(Quantity, server_default=text("0"))
    avg_price: Mapped[Decimal | None] = mapped_column(Numeric(28, 12))
    fee_usd: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())


# -- archive -------------------------------------------------------------------
#
# Finished jobs leave the hot tables (perpbot_db/services/archive.py): a job, its legs
# and reservations move to ``<table>_archive``, a table with the same columns in
# the same order, no defaults and no foreign keys; the views ``<table>_all``
# (migration 0004) show live and archived rows together.  ``job_events`` is
# insert-only and off the hot path: events stay where they are (migration 0005).  A
# migration that adds a column to a live table adds it to its archive too
# (tests/test_schema.py checks the two agree).

ARCHIVED_TABLES = ("hedge_jobs", "legs", "capital_reservations")


def _archive_of(table: str, *indexes: Index) -> Table:
    live = Base.metadata.tables[table]
    columns = [
        Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            unique=c.unique,
            autoincrement=False,
        )
        for c in live.columns
    ]
    return Table(f"{live.name}_archive", Base.metadata, *columns, *indexes)


HEDGE_JOBS_ARCHIVE = _archive_of(
    "hedge_jobs",
    Index("ix_hedge_jobs_archive_finished_at", "finished_at", postgresql_using="brin"),
    Index(
        "ix_hedge_jobs_archive_close_opens",
        text("(metadata ->> 'opens')"),
        postgresql_where=text("(metadata ->> 'phase') = 'close'"),
    ),
    Index(
        "ix_hedge_jobs_archive_rebalance",
        "symbol",
        "status",
        postgresql_where=text("strategy = 'hedge_rebalance'"),
    ),
)
LEGS_ARCHIVE = _archive_of(
    "legs",
    Index("ix_legs_archive_job_id", "job_id"),
    Index("ix_legs_archive_booked_at", "booked_at", postgresql_using="brin"),
)
CAPITAL_RESERVATIONS_ARCHIVE = _archive_of(
    "capital_reservations", Index("ix_capital_reservations_archive_job_id", "job_id")
)


class OpenPair(Base):
    """A completed opening (volume, funding_arb, arb) whose close has not completed yet.

    Kept by triggers on ``hedge_jobs`` (migration 0016): added when the opening
    completes, removed when a close naming it (``metadata.opens``) completes.  No
    foreign key: the opening moves to the archive while it is held.  The producers'
    read of what to close starts here (:mod:`perpbot_db.store.producers`)."""

    __tablename__ = "open_pairs"
    __table_args__ = (Index("ix_open_pairs_idempotency_key", "idempotency_key"),)

    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    strategy: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(TZ, server_default=func.now())
