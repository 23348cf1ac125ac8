"""Protections: small pure units that each decide one lock (freqtrade's protections).

Design note.  A protection reads plain values (a counter, a streak, a market
reading) and ``now``, and returns either nothing or a :class:`Lock`: what it
locks (the whole system, one exchange, one symbol), until when, a stable code
and a reason with the numbers that tripped it.  Nothing here reads a clock or
a database; :mod:`perpbot_db.services.protect` gathers the readings, writes one
``protection_locks`` row per lock and applies its effect (a system lock halts
the system, an exchange lock puts the exchange in safe mode, a symbol lock
blacklists the symbol), and it is the one place where locks end.

The units and what they lock:

* :func:`daily_loss` — today's realized losses reached the daily loss limit:
  the system, until the next UTC midnight (the day's counters start again then).
* :func:`failure_streak` — consecutive failed jobs, globally (the system) or on
  one exchange (that exchange), for the safe-mode cool-down.
* :func:`drawdown` — an exchange's realized PnL since the start of the UTC day,
  against its equity (``exchanges.equity_usd``): the exchange, for the cool-down.
  Decision: *start of day*, not *peak*.  The engine keeps one realized-PnL
  counter per exchange and day and no equity history; a peak would need a
  running high-water mark that nothing books today, and a day-bounded figure
  resets with the daily loss limit it sits beside.
* :func:`api_latency` — an exchange's API latency above the risk mode's hard
  limit: the exchange, for the cool-down.
* :func:`fast_market` — a symbol's volatility above the mode's hard limit on
  some exchange: the symbol, for the blacklist cool-down.
* :func:`unhedged_exposure` — a job ended with exposure left open on an
  exchange (a failed unwind) beyond ``unhedged_exposure_limit_usd``: that
  exchange, for ``unhedged_lock_s``.

A system lock's effect (the halt) is lifted by an operator only
(``perpbot override clear-halt``), as before; its ``until`` says when the
condition stops being true on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Protocol, TypeVar

from perpbot_db.domain.execution import JobRun, Settlement

SYSTEM_TARGET = "system"


class Scope(StrEnum):
    SYSTEM = "system"
    EXCHANGE = "exchange"
    SYMBOL = "symbol"


class ProtectionCode(StrEnum):
    DAILY_LOSS = "daily_loss"
    FAILURE_STREAK = "failure_streak"
    DRAWDOWN = "drawdown"
    API_LATENCY = "api_latency"
    FAST_MARKET = "fast_market"
    UNHEDGED_EXPOSURE = "unhedged_exposure"


@dataclass(frozen=True)
class Lock:
    """What a protection locks, until when, and why (``context``: the numbers, as text)."""

    scope: Scope
    target: str
    code: ProtectionCode
    reason: str
    until: datetime
    context: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scope.value, self.target, self.code.value)


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f") if value.is_finite() else str(value)


def next_utc_midnight(now: datetime) -> datetime:
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# -- the units ---------------------------------------------------------------------------


def daily_loss(*, loss_used_usd: Decimal, limit_usd: Decimal, now: datetime) -> Lock | None:
    """Today's losses reached the limit: the system, until the day's counters start again."""
    if loss_used_usd < limit_usd:
        return None
    return Lock(
        Scope.SYSTEM,
        SYSTEM_TARGET,
        ProtectionCode.DAILY_LOSS,
        f"daily loss limit: lost {_num(loss_used_usd)} of {_num(limit_usd)} USD today",
        next_utc_midnight(now),
        {"loss_used_usd": _num(loss_used_usd), "limit_usd": _num(limit_usd)},
    )


def failure_streak(
    *,
    failures: int,
    limit: int,
    now: datetime,
    cooldown: timedelta,
    exchange: str | None = None,
) -> Lock | None:
    """``failures`` consecutive failed jobs, at or above ``limit``: the system (no
    exchange given) or that exchange, for ``cooldown``."""
    if failures < limit:
        return None
    context = {"failures": str(failures), "limit": str(limit)}
    if exchange is None:
        reason = f"consecutive failures: {failures} (limit {limit})"
        return Lock(
            Scope.SYSTEM,
            SYSTEM_TARGET,
            ProtectionCode.FAILURE_STREAK,
            reason,
            now + cooldown,
            context,
        )
    return Lock(
        Scope.EXCHANGE,
        exchange,
        ProtectionCode.FAILURE_STREAK,
        f"{failures} consecutive failed jobs (limit {limit})",
        now + cooldown,
        context,
    )


def drawdown(
    *,
    exchange: str,
    equity_usd: Decimal,
    pnl_today_usd: Decimal,
    limit: Decimal,
    now: datetime,
    cooldown: timedelta,
) -> Lock | None:
    """Realized loss since the start of the UTC day beyond ``limit`` (a fraction) of the
    exchange's equity: the exchange, for ``cooldown``.  No equity, no drawdown."""
    if equity_usd <= 0 or -pnl_today_usd <= limit * equity_usd:
        return None
    return Lock(
        Scope.EXCHANGE,
        exchange,
        ProtectionCode.DRAWDOWN,
        f"intraday drawdown {_num(-pnl_today_usd)} USD beyond {limit:%} of equity "
        f"{_num(equity_usd)} USD",
        now + cooldown,
        {
            "pnl_today_usd": _num(pnl_today_usd),
            "equity_usd": _num(equity_usd),
            "limit": _num(limit),
        },
    )


def api_latency(
    *,
    exchange: str,
    symbol: str,
    latency_ms: Decimal | None,
    limit_ms: Decimal,
    now: datetime,
    cooldown: timedelta,
) -> Lock | None:
    """API latency above the hard limit: the exchange, for ``cooldown``.  A reading
    without latency is no evidence of slowness (admission holds its jobs anyway)."""
    if latency_ms is None or not latency_ms > limit_ms:
        return None
    return Lock(
        Scope.EXCHANGE,
        exchange,
        ProtectionCode.API_LATENCY,
        f"API latency {_num(latency_ms)} ms above hard limit {_num(limit_ms)}",
        now + cooldown,
        {"symbol": symbol, "latency_ms": _num(latency_ms), "limit_ms": _num(limit_ms)},
    )


def fast_market(
    *,
    exchange: str,
    symbol: str,
    volatility: Decimal | None,
    limit: Decimal,
    now: datetime,
    cooldown: timedelta,
) -> Lock | None:
    """Volatility above the hard limit: the symbol, for ``cooldown``.

    A missing volatility locks nothing (admission holds such jobs for missing
    data); an unusable one (NaN, infinite, negative) fails closed, as
    :func:`perpbot_db.domain.risk.is_fast_market` does."""
    if volatility is None:
        return None
    usable = volatility.is_finite() and volatility >= 0
    if usable and not volatility > limit:
        return None
    return Lock(
        Scope.SYMBOL,
        symbol,
        ProtectionCode.FAST_MARKET,
        f"fast market: volatility {_num(volatility)} on {exchange} (hard limit {_num(limit)})",
        now + cooldown,
        {"exchange": exchange, "volatility": _num(volatility), "limit": _num(limit)},
    )


def unhedged_exposure(
    *,
    exchange: str,
    exposure_usd: Decimal | None,
    job_ids: Sequence[int],
    limit_usd: Decimal,
    now: datetime,
    duration: timedelta,
) -> Lock | None:
    """Exposure left open on an exchange by failed unwinds above ``limit_usd``: the
    exchange, for ``duration``.  An exposure whose size is unknown (no fill price)
    fails closed."""
    if exposure_usd is not None and exposure_usd <= limit_usd:
        return None
    jobs = ", ".join(str(j) for j in job_ids)
    size = "of unknown size" if exposure_usd is None else f"{_num(exposure_usd)} USD"
    return Lock(
        Scope.EXCHANGE,
        exchange,
        ProtectionCode.UNHEDGED_EXPOSURE,
        f"job {jobs} left unhedged: exposure {size} above {_num(limit_usd)} USD "
        "after a failed unwind",
        now + duration,
        {
            "jobs": jobs,
            "exposure_usd": "unknown" if exposure_usd is None else _num(exposure_usd),
            "limit_usd": _num(limit_usd),
        },
    )


# -- readings and the whole evaluation ------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Every threshold the units need, in plain values."""

    cooldown: timedelta  # safe mode (exchange locks) and the system failure streak
    blacklist_cooldown: timedelta  # a fast market's symbol lock
    drawdown: Decimal  # fraction of equity, realized since the start of the UTC day
    exchange_failures: int  # consecutive failed jobs on one exchange
    latency_ms: Decimal  # the risk mode's hard limit
    volatility: Decimal  # the risk mode's hard limit
    unhedged_exposure_usd: Decimal
    unhedged_lock: timedelta


@dataclass(frozen=True)
class SystemReading:
    loss_used_usd: Decimal
    loss_limit_usd: Decimal
    failures: int | None  # None: the streak did not change (it cannot newly trip)
    max_failures: int


@dataclass(frozen=True)
class ExchangeReading:
    name: str
    equity_usd: Decimal
    pnl_today_usd: Decimal
    failures: int


@dataclass(frozen=True)
class MarketReading:
    exchange: str
    symbol: str
    latency_ms: Decimal | None
    volatility: Decimal | None


@dataclass(frozen=True)
class Exposure:
    """Open exposure one ended job left on one exchange (``exposure_usd`` None: unknown)."""

    exchange: str
    job_id: int
    exposure_usd: Decimal | None


@dataclass(frozen=True)
class Readings:
    system: SystemReading | None = None
    exchanges: Sequence[ExchangeReading] = ()
    markets: Sequence[MarketReading] = ()
    exposures: Sequence[Exposure] = ()


def evaluate(readings: Readings, limits: Limits, now: datetime) -> list[Lock]:
    """Every lock the readings call for, at most one per (scope, target, code), in a
    stable order (system, then exchanges, then symbols; by target, then code)."""
    found: dict[tuple[str, str, str], Lock] = {}

    def add(lock: Lock | None) -> None:
        if lock is not None and lock.key not in found:
            found[lock.key] = lock

    system = readings.system
    if system is not None:
        add(
            daily_loss(loss_used_usd=system.loss_used_usd, limit_usd=system.loss_limit_usd, now=now)
        )
        if system.failures is not None:
            add(
                failure_streak(
                    failures=system.failures,
                    limit=system.max_failures,
                    now=now,
                    cooldown=limits.cooldown,
                )
            )
    for ex in readings.exchanges:
        add(
            drawdown(
                exchange=ex.name,
                equity_usd=ex.equity_usd,
                pnl_today_usd=ex.pnl_today_usd,
                limit=limits.drawdown,
                now=now,
                cooldown=limits.cooldown,
            )
        )
        add(
            failure_streak(
                failures=ex.failures,
                limit=limits.exchange_failures,
                now=now,
                cooldown=limits.cooldown,
                exchange=ex.name,
            )
        )
    for m in sorted(readings.markets, key=lambda m: (m.exchange, m.symbol)):
        add(
            api_latency(
                exchange=m.exchange,
                symbol=m.symbol,
                latency_ms=m.latency_ms,
                limit_ms=limits.latency_ms,
                now=now,
                cooldown=limits.cooldown,
            )
        )
        add(
            fast_market(
                exchange=m.exchange,
                symbol=m.symbol,
                volatility=m.volatility,
                limit=limits.volatility,
                now=now,
                cooldown=limits.blacklist_cooldown,
            )
        )
    for exchange, exposures in _by_exchange(readings.exposures).items():
        sizes = [e.exposure_usd for e in exposures]
        total = None if None in sizes else sum((s for s in sizes if s is not None), Decimal(0))
        add(
            unhedged_exposure(
                exchange=exchange,
                exposure_usd=total,
                job_ids=sorted({e.job_id for e in exposures}),
                limit_usd=limits.unhedged_exposure_usd,
                now=now,
                duration=limits.unhedged_lock,
            )
        )
    order = {Scope.SYSTEM: 0, Scope.EXCHANGE: 1, Scope.SYMBOL: 2}
    return sorted(found.values(), key=lambda lk: (order[lk.scope], lk.target, lk.code.value))


class MarketFigures(Protocol):
    """What the market units read of a market (a :class:`MarketReading`, or the row or
    view it is made from)."""

    @property
    def latency_ms(self) -> Decimal | None: ...

    @property
    def volatility(self) -> Decimal | None: ...


M = TypeVar("M", bound=MarketFigures)


def markets_that_may_lock(
    markets: Sequence[M], *, latency_ms: Decimal, volatility: Decimal
) -> list[M]:
    """The markets on which :func:`api_latency` or :func:`fast_market` may lock under
    these hard limits, in their order: on every other one neither can, so
    :func:`evaluate` decides exactly the same over these markets' readings alone as
    over all of them (an empty list: as over none).

    A pre-screen for a caller that asks often (the simulation's left-out ticks): the
    comparisons the units make, on the plain values.  A market whose latency is
    within its limit and whose volatility is within 0 and its limit cannot lock;
    every other one (a NaN, an infinity, a negative volatility, a value beyond its
    limit) is left to the units, which lock or raise as they do; all of them when
    a limit itself is not finite."""
    if not (latency_ms.is_finite() and volatility.is_finite()):
        return list(markets)
    zero = Decimal(0)
    out: list[M] = []
    for m in markets:
        latency, vol = m.latency_ms, m.volatility
        try:  # between finite limits no NaN nor infinity passes (a NaN may raise)
            if (latency is None or latency <= latency_ms) and (
                vol is None or zero <= vol <= volatility
            ):
                continue
        except InvalidOperation:
            pass
        out.append(m)
    return out


def exposures(job: JobRun, end: Settlement) -> list[Exposure]:
    """The open exposure an unhedged end leaves on each exchange: the net filled
    quantity there times the average price it filled at (None if no price is known)."""
    if not end.unhedged:
        return []
    out = []
    for exchange in end.exposure_exchanges:
        legs = [leg for leg in job.legs if leg.exchange == exchange]
        net = sum((leg.sign * leg.filled for leg in legs), Decimal(0))
        priced = [
            (leg.filled, leg.fill.avg_price)
            for leg in legs
            if leg.fill is not None and leg.fill.avg_price is not None and leg.filled > 0
        ]
        qty = sum((q for q, _ in priced), Decimal(0))
        if not priced or qty == 0:
            out.append(Exposure(exchange, job.id, None))
            continue
        price = sum((q * p for q, p in priced), Decimal(0)) / qty
        out.append(Exposure(exchange, job.id, abs(net) * price))
    return out


def _by_exchange(exposures: Iterable[Exposure]) -> dict[str, list[Exposure]]:
    out: dict[str, list[Exposure]] = {}
    for e in exposures:
        out.setdefault(e.exchange, []).append(e)
    return dict(sorted(out.items()))
