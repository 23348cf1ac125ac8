"""One clock, injected: the wall clock in production, a virtual one in simulations.

Everything that produces market data or jobs (feeds, strategies, the demo and
the simulation) reads the time from a :class:`Clock` it is given, never from
``datetime.now`` itself, so a simulation can run a day of market in minutes and
give the same ledger twice for the same seed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class WallClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class VirtualClock:
    """A clock that moves only when told to (``advance``); starts at ``start``."""

    def __init__(self, start: datetime) -> None:
        if start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError(f"a clock never goes back ({seconds} s)")
        self._now += timedelta(seconds=seconds)
        return self._now
