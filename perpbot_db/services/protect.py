"""Protections applied in one place, and their locks ended in one place.

Design note.  The units in :mod:`perpbot_db.domain.protections` decide; this
service applies what they decide, in the caller's transaction:

* :func:`run_once` — called by the admission tick (with everything the tick read:
  today's loss, the streaks, every exchange's PnL, every market reading) and by
  a worker after it finished a batch (with what the finish returned: today's
  loss, the global streak, the exposure its unhedged jobs left).  Each lock is
  written to ``protection_locks`` with its reason and ``until`` (at most one
  active per scope, target and code), and its effect applied so admission
  keeps working as it did: a system lock halts the system
  (:func:`perpbot_db.services.control.halt_in`, audited), an exchange lock puts
  the exchange in safe mode until the lock's ``until`` (extending a timed safe
  mode it is already in), a symbol lock blacklists the symbol until then.
* :func:`expire` — the one place where locks end on their own, run by the
  leader's maintenance (:mod:`perpbot_db.runtime.leader`): every lock past its
  ``until`` is released, and an exchange whose timed safe mode has passed
  leaves it (its failure streak starts over), audited as
  ``safe_mode_cooldown_ended``.  One safe-mode rule: an exchange is in safe
  mode until the latest ``until`` of the locks that put it there, or until an
  operator lets it out (``leave_safe_mode``, which releases its locks).  A
  symbol's blacklist row carries the same ``until`` and admission reads it by
  time.  A system halt stays until an operator clears it (``clear_halt``
  releases the system's locks): a halt is never lifted by a clock.

Until the leader's next round a lock past its ``until`` still holds (safe
mode, the halt): a late expiry only ever keeps things locked a little longer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine

from perpbot_db.domain import protections, risk
from perpbot_db.domain.decisions import DecisionCode
from perpbot_db.domain.lifecycle import RiskMode, SystemStatus
from perpbot_db.domain.protections import (
    ExchangeReading,
    Limits,
    Lock,
    M,
    MarketReading,
    Readings,
    Scope,
    evaluate,
)
from perpbot_db.services import control
from perpbot_db.settings import Settings
from perpbot_db.store import blacklist, control_events, exchanges, locks, system

log = logging.getLogger("perpbot.protect")


@dataclass(frozen=True)
class ProtectConfig:
    safe_mode_cooldown: timedelta = timedelta(minutes=15)
    blacklist_cooldown: timedelta = timedelta(minutes=5)
    drawdown: Decimal = Decimal("0.05")  # of equity, realized since the start of the day
    exchange_failures: int = 3  # consecutive failed jobs on one exchange
    unhedged_exposure_limit_usd: Decimal = Decimal(0)
    unhedged_lock: timedelta = timedelta(days=1)
    limits: Mapping[RiskMode, risk.ModeLimits] = field(default_factory=lambda: risk.LIMITS)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProtectConfig:
        return cls(
            safe_mode_cooldown=timedelta(seconds=settings.safe_mode_cooldown_s),
            blacklist_cooldown=timedelta(seconds=settings.blacklist_cooldown_s),
            drawdown=settings.safe_mode_drawdown,
            exchange_failures=settings.safe_mode_failures,
            unhedged_exposure_limit_usd=settings.unhedged_exposure_limit_usd,
            unhedged_lock=timedelta(seconds=settings.unhedged_lock_s),
        )

    def unit_limits(self, mode: RiskMode) -> Limits:
        return Limits(
            cooldown=self.safe_mode_cooldown,
            blacklist_cooldown=self.blacklist_cooldown,
            drawdown=self.drawdown,
            exchange_failures=self.exchange_failures,
            latency_ms=self.limits[mode].latency_hard_ms,
            volatility=self.limits[mode].volatility_hard,
            unhedged_exposure_usd=self.unhedged_exposure_limit_usd,
            unhedged_lock=self.unhedged_lock,
        )


@dataclass
class ProtectReport:
    locks: list[int] = field(default_factory=list)  # ids of the locks written
    halted: str | None = None
    safe_mode_entered: list[str] = field(default_factory=list)
    blacklisted: list[str] = field(default_factory=list)
    # the locks written (new or renewed), by (scope, target, code), with their until
    placed: dict[tuple[str, str, str], datetime] = field(default_factory=dict)


def decide(
    config: ProtectConfig, now: datetime, *, readings: Readings, mode: RiskMode, status: str
) -> list[Lock]:
    """Every lock the readings call for (what :func:`run_once` then writes).  A halted
    system's own protections are not evaluated: it is not halted again."""
    if status == SystemStatus.HALTED.value and readings.system is not None:
        readings = Readings(None, readings.exchanges, readings.markets, readings.exposures)
    return evaluate(readings, config.unit_limits(mode), now)


def markets_that_may_lock(config: ProtectConfig, mode: RiskMode, markets: Sequence[M]) -> list[M]:
    """The markets of ``markets`` on which a market protection may lock under
    ``mode``'s hard limits (:func:`perpbot_db.domain.protections.markets_that_may_lock`):
    :func:`decide` over these markets' readings alone decides as over all of them."""
    limits = config.unit_limits(mode)
    return protections.markets_that_may_lock(
        markets, latency_ms=limits.latency_ms, volatility=limits.volatility
    )


def run_once(
    conn: Connection,
    config: ProtectConfig,
    now: datetime,
    *,
    readings: Readings,
    mode: RiskMode,
    status: str,
    actor: str,
) -> ProtectReport:
    """Decide every protection on ``readings`` and apply what trips, in ``conn``'s
    transaction.  ``status`` is the system status the caller read: a halted system
    is not halted again (its system protections are not evaluated)."""
    report = ProtectReport()
    decided = decide(config, now, readings=readings, mode=mode, status=status)
    if any(lock.scope is Scope.SYSTEM for lock in decided):
        # The control row first, then the lock's index entry: a tick and a worker's
        # finish that both trip the daily loss limit queue on the row instead of each
        # holding what the other needs (the index entry, the row) — no deadlock.
        system.lock(conn)
    for lock in decided:
        lock_id = locks.protection_lock_insert(conn, lock, created_by=actor, now=now)
        if lock_id is None:  # already locked for this reason: its effect is in place
            continue
        report.locks.append(lock_id)
        report.placed[lock.key] = lock.until
        _apply(conn, lock, lock_id, actor, now, report)
    return report


def _apply(
    conn: Connection, lock: Lock, lock_id: int, actor: str, now: datetime, report: ProtectReport
) -> None:
    details: dict[str, Any] = {"lock_id": lock_id, "code": lock.code.value, **lock.context}
    if lock.scope is Scope.SYSTEM:
        if report.halted is None and control.halt_in(
            conn, actor=actor, reason=lock.reason, **details
        ):
            report.halted = lock.reason
    elif lock.scope is Scope.EXCHANGE:
        if exchanges.enter_safe_mode(conn, name=lock.target, reason=lock.reason, until=lock.until):
            _audit(conn, actor, "safe_mode_entered", lock.reason, exchange=lock.target, **details)
            report.safe_mode_entered.append(lock.target)
        else:
            locks.exchange_extend_safe_mode(conn, name=lock.target, until=lock.until)
    else:
        blacklist.insert(
            conn,
            kind="symbol",
            target=lock.target,
            code=DecisionCode.VOLATILITY_HARD_LIMIT.value,
            reason=lock.reason,
            created_by=actor,
            now=now,
            expires_at=lock.until,
            details=json.dumps(details),
        )
        report.blacklisted.append(lock.target)


@dataclass
class ExpiryReport:
    released: list[int] = field(default_factory=list)
    safe_mode_left: list[str] = field(default_factory=list)


def expire(conn: Connection, now: datetime, *, actor: str) -> ExpiryReport:
    """End what has run its time: locks past their ``until`` and timed safe modes."""
    released = locks.protection_lock_release_expired(conn, now=now)
    left = exchanges.leave_expired_safe_mode(conn, now=now)
    for name in left:
        _audit(conn, actor, "safe_mode_cooldown_ended", f"{name} cool-down over", exchange=name)
    if released or left:
        log.info("protections expired: %d lock(s), safe mode left: %s", len(released), left)
    return ExpiryReport([r.id for r in released], left)


def expire_once(engine: Engine, *, actor: str = "scheduler") -> ExpiryReport:
    """:func:`expire` in its own transaction at the database clock (the leader's round)."""
    with engine.begin() as conn:
        return expire(conn, system.db_now(conn), actor=actor)


def _audit(conn: Connection, actor: str, action: str, reason: str, **details: Any) -> None:
    control_events.insert(
        conn, actor=actor, action=action, reason=reason, details=json.dumps(details, default=str)
    )


# -- readings from what the callers read --------------------------------------------------


def exchange_readings(rows: Sequence[exchanges.ExchangeBookRow]) -> list[ExchangeReading]:
    """From :func:`perpbot_db.store.exchanges.books` rows."""
    return [
        ExchangeReading(
            name=r.name,
            equity_usd=r.equity_usd,
            pnl_today_usd=r.pnl_today_usd,
            failures=r.consecutive_failures,
        )
        for r in rows
    ]


def market_readings(markets: Mapping[tuple[str, str], risk.MarketView]) -> list[MarketReading]:
    return [
        MarketReading(v.exchange, v.symbol, v.latency_ms, v.volatility)
        for _, v in sorted(markets.items())
    ]
