"""A process that ticks collects young objects less often; it never stops collecting."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from perpbot_db.runtime.scheduler import GC_GEN0_THRESHOLD, tune_collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("thresholds")
def test_tune_collector_raises_the_young_threshold_and_keeps_the_collector_on() -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_collector() == (700, 10, 10)
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
    assert gc.isenabled()


@pytest.mark.usefixtures("thresholds")
def test_tune_collector_leaves_a_higher_threshold_alone() -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD * 2, 5, 5)
    tune_collector()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 2, 5, 5)
