"""The worker's client order ids as each venue's field (workers/venues/ccxt_ids.py).

Property: for every id the worker can make (any valid prefix, job, leg and
attempt), the venue id is valid for the venue's charset and length, and the
mapping is injective and reversible.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpbot_db.domain.execution import client_order_id
from workers.venues.ccxt_ids import RULES, venue_client_id, worker_client_id

VENUES = sorted(RULES)
prefixes = st.from_regex(r"[a-z]{1,6}", fullmatch=True)
worker_ids = st.builds(
    client_order_id,
    prefixes,
    st.integers(min_value=1, max_value=10**15),
    st.integers(min_value=0, max_value=15),
    st.integers(min_value=1, max_value=999),
)


@given(coid=worker_ids)
def test_every_worker_id_is_valid_and_round_trips_on_every_venue(coid: str) -> None:
    for venue in VENUES:
        sent = venue_client_id(venue, coid)
        rule = RULES[venue]
        assert len(sent) <= rule.max_length and rule.pattern.fullmatch(sent)
        assert worker_client_id(venue, sent) == coid


@given(ids=st.lists(worker_ids, min_size=2, max_size=20, unique=True))
def test_the_mapping_is_injective_on_worker_ids(ids: list[str]) -> None:
    for venue in VENUES:
        assert len({venue_client_id(venue, coid) for coid in ids}) == len(ids)


def test_okx_refuses_an_id_with_a_hyphen_naming_its_field() -> None:
    with pytest.raises(ValueError, match="clOrdId"):
        venue_client_id("okx", "pb-1L0A1")
    assert venue_client_id("binanceusdm", "pb-1L0A1") == "pb-1L0A1"
    assert venue_client_id("bybit", "pb-1L0A1") == "pb-1L0A1"


@pytest.mark.parametrize(("venue", "limit"), [("binanceusdm", 36), ("okx", 32), ("bybit", 36)])
def test_an_id_over_the_venue_limit_is_refused(venue: str, limit: int) -> None:
    assert venue_client_id(venue, "a" * limit) == "a" * limit
    with pytest.raises(ValueError, match=RULES[venue].field):
        venue_client_id(venue, "a" * (limit + 1))
