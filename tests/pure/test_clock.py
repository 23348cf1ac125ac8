from datetime import UTC, datetime, timedelta

import pytest

from perpbot_db.domain.clock import VirtualClock, WallClock


def test_virtual_clock_moves_only_when_advanced() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = VirtualClock(start)
    assert clock.now() == start
    assert clock.advance(1.5) == start + timedelta(seconds=1.5)
    assert clock.now() == start + timedelta(seconds=1.5)


def test_virtual_clock_refuses_naive_start_and_going_back() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="never goes back"):
        VirtualClock(datetime(2026, 1, 1, tzinfo=UTC)).advance(-1)


def test_wall_clock_is_aware_utc() -> None:
    assert WallClock().now().utcoffset() == timedelta(0)
