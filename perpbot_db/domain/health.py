"""The health verdict: from a few readings, ``ok``, ``degraded`` or ``down``, with reasons.

Design note.  The console, ``/readyz``, ``perpbot status`` and the alert rules all
ask one question, "can this system do its work right now, and if not, why?", and
must get one answer.  :func:`assess` gives it from plain readings (what the
monitoring state read from the database) and ``now``; it reads no clock and no
database, so every rule is a microsecond test.

A verdict is the worst of its reasons.  ``down``: nothing can start or finish —
the system is halted, no worker is alive, no scheduler holds the leader lock, or
no admission tick has run for ``stale_ticks`` intervals.  ``degraded``: work goes
on but an operator must look — market data is stale (admission holds those jobs,
fail closed), unhedged exposure is open, an exchange is in safe mode, the system
is paused or running under a manual override.

Every tick that runs records itself (``scheduler_ticks``, in the tick's own
transaction), whatever the system's status and whether or not it had work, so
the newest record's age is the tick's age.  A grace on top of the intervals
covers a slow tick (its record carries its start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from perpbot_db.domain.lifecycle import SystemStatus


class Verdict(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


_RANK = {Verdict.OK: 0, Verdict.DEGRADED: 1, Verdict.DOWN: 2}


class ReasonCode(StrEnum):
    HALTED = "halted"
    NO_LIVE_WORKER = "no_live_worker"
    NO_SCHEDULER_LEADER = "no_scheduler_leader"
    TICK_STALE = "tick_stale"
    MARKET_DATA_STALE = "market_data_stale"
    MARKET_DATA_MISSING = "market_data_missing"
    UNHEDGED_EXPOSURE = "unhedged_exposure"
    EXCHANGE_SAFE_MODE = "exchange_safe_mode"
    PAUSED = "paused"
    MANUAL_OVERRIDE = "manual_override"


#: How bad each reason is: the verdict is the worst of them.
SEVERITY: dict[ReasonCode, Verdict] = {
    ReasonCode.HALTED: Verdict.DOWN,
    ReasonCode.NO_LIVE_WORKER: Verdict.DOWN,
    ReasonCode.NO_SCHEDULER_LEADER: Verdict.DOWN,
    ReasonCode.TICK_STALE: Verdict.DOWN,
    ReasonCode.MARKET_DATA_STALE: Verdict.DEGRADED,
    ReasonCode.MARKET_DATA_MISSING: Verdict.DEGRADED,
    ReasonCode.UNHEDGED_EXPOSURE: Verdict.DEGRADED,
    ReasonCode.EXCHANGE_SAFE_MODE: Verdict.DEGRADED,
    ReasonCode.PAUSED: Verdict.DEGRADED,
    ReasonCode.MANUAL_OVERRIDE: Verdict.DEGRADED,
}


@dataclass(frozen=True)
class Reason:
    """One reason, with a stable code, its severity and a line for a human."""

    code: ReasonCode
    text: str

    @property
    def severity(self) -> Verdict:
        return SEVERITY[self.code]


@dataclass(frozen=True)
class Health:
    verdict: Verdict
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class MarketAge:
    """When one (exchange, symbol) snapshot was observed."""

    exchange: str
    symbol: str
    observed_at: datetime


@dataclass(frozen=True)
class Exposure:
    """Open exposure left on an exchange by a failed unwind (``usd`` None: unknown size)."""

    exchange: str
    usd: Decimal | None
    jobs: str = ""


@dataclass(frozen=True)
class TickReading:
    """When a scheduler last ticked (None: never on this database), and how old is too old."""

    last_tick_at: datetime | None
    interval: timedelta
    stale_ticks: int = 5
    grace: timedelta = timedelta(seconds=5)

    @property
    def stale_after(self) -> timedelta:
        return self.interval * self.stale_ticks + self.grace


@dataclass(frozen=True)
class Readings:
    status: SystemStatus
    halt_reason: str | None
    live_workers: int
    leader: str | None
    tick: TickReading
    max_market_age: timedelta
    markets: Sequence[MarketAge] = ()
    #: exchanges admission may trade on: each needs market data (empty: not judged)
    exchanges: Sequence[str] = ()
    exposures: Sequence[Exposure] = ()
    safe_mode: Sequence[tuple[str, str | None]] = field(default_factory=tuple)


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.1f} s"


def _stale_markets(readings: Readings, now: datetime) -> list[Reason]:
    """Snapshots older (or further ahead) than the mode's age limit, one reason per
    exchange naming its symbols; an exchange with no snapshot at all, one reason."""
    limit = readings.max_market_age
    stale: dict[str, list[str]] = {}
    for m in sorted(readings.markets, key=lambda m: (m.exchange, m.symbol)):
        age = now - m.observed_at
        if abs(age) > limit:
            stale.setdefault(m.exchange, []).append(f"{m.symbol} ({_seconds(age)})")
    reasons = [
        Reason(
            ReasonCode.MARKET_DATA_STALE,
            f"{exchange}: market data older than {_seconds(limit)}: {', '.join(symbols)}",
        )
        for exchange, symbols in stale.items()
    ]
    seen = {m.exchange for m in readings.markets}
    missing = sorted(set(readings.exchanges) - seen)
    if missing:
        reasons.append(
            Reason(ReasonCode.MARKET_DATA_MISSING, f"no market data for {', '.join(missing)}")
        )
    return reasons


def _tick(readings: Readings, now: datetime) -> Reason | None:
    tick = readings.tick
    if tick.last_tick_at is None:
        return Reason(ReasonCode.TICK_STALE, "no scheduler has ever ticked on this database")
    age = now - tick.last_tick_at
    if age <= tick.stale_after:
        return None
    return Reason(
        ReasonCode.TICK_STALE,
        f"the last tick was {_seconds(age)} ago (more than {tick.stale_ticks} intervals "
        f"of {_seconds(tick.interval)} + {_seconds(tick.grace)})",
    )


def _exposure(readings: Readings) -> Reason | None:
    if not readings.exposures:
        return None
    parts = []
    for e in sorted(readings.exposures, key=lambda e: e.exchange):
        size = "unknown size" if e.usd is None else f"{e.usd} USD"
        parts.append(f"{e.exchange} {size}" + (f" (job {e.jobs})" if e.jobs else ""))
    return Reason(ReasonCode.UNHEDGED_EXPOSURE, "unhedged exposure open: " + "; ".join(parts))


def assess(readings: Readings, now: datetime) -> Health:
    """The verdict and every reason for it, worst first (then in a fixed order)."""
    found: list[Reason] = []
    if readings.status is SystemStatus.HALTED:
        found.append(Reason(ReasonCode.HALTED, f"halted: {readings.halt_reason or '?'}"))
    elif readings.status is SystemStatus.PAUSED:
        found.append(Reason(ReasonCode.PAUSED, "paused by an operator: nothing starts"))
    elif readings.status is SystemStatus.MANUAL_OVERRIDE:
        found.append(
            Reason(ReasonCode.MANUAL_OVERRIDE, "running under a manual override of a halt")
        )
    if readings.live_workers <= 0:
        found.append(Reason(ReasonCode.NO_LIVE_WORKER, "no worker has a recent heartbeat"))
    if readings.leader is None:
        found.append(Reason(ReasonCode.NO_SCHEDULER_LEADER, "no scheduler holds the leader lock"))
    tick = _tick(readings, now)
    if tick is not None:
        found.append(tick)
    found.extend(_stale_markets(readings, now))
    exposure = _exposure(readings)
    if exposure is not None:
        found.append(exposure)
    for name, why in sorted(readings.safe_mode):
        found.append(
            Reason(ReasonCode.EXCHANGE_SAFE_MODE, f"{name} in safe mode: {why or 'no reason'}")
        )
    order = list(ReasonCode)
    found.sort(key=lambda r: (-_RANK[r.severity], order.index(r.code)))
    verdict = max((r.severity for r in found), key=_RANK.__getitem__, default=Verdict.OK)
    return Health(verdict, tuple(found))
