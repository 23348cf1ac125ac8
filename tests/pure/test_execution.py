"""Execution decisions (unwind, settle, book, streaks), decided without a database.

Jobs are written as legs on three exchanges: X (binance), Y (okx), Z (bybit);
W (hyperliquid) is a fourth for the larger hedges.  Quantities are base units,
prices USD; an unwind leg is what the executor appends after ``unwind_plan``:
the leg it closes, with the opposite side, ``100 + index`` and reduce-only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from perpbot_db.domain.execution import (
    GLOBAL,
    UNWIND_INDEX_BASE,
    Booking,
    EndCode,
    Fill,
    JobRun,
    LegRun,
    Settlement,
    Streak,
    Unwind,
    book,
    leg_pnl,
    money,
    retry_orders,
    settle,
    streaks,
    unwind_plan,
)
from perpbot_db.domain.lifecycle import JobStatus, LegStatus, Side

D = Decimal
X, Y, Z, W = "binance", "okx", "bybit", "hyperliquid"
BUY, SELL = Side.BUY, Side.SELL
ONE_E8 = D("0.00000001")


# --------------------------------------------------------------------------- #
# helpers


def got(
    qty: str | Decimal,
    price: str | Decimal = "100",
    fee: str | Decimal = "0",
    *,
    of: str | None = None,
) -> Fill:
    """The exchange's answer: ``qty`` filled at ``price`` (out of ``of``, when partial)."""
    q = D(qty)
    if q == 0:
        return Fill(LegStatus.REJECTED, fee_usd=D(fee), error="rejected")
    status = LegStatus.PARTIALLY_FILLED if of is not None and q < D(of) else LegStatus.FILLED
    return Fill(status, filled=q, avg_price=D(price), fee_usd=D(fee), exchange_order_id=f"e{q}")


REJECTED = got("0")


def leg(
    leg_id: int,
    side: Side,
    qty: str,
    exchange: str,
    fill: Fill | None = None,
    *,
    index: int | None = None,
    job_id: int = 1,
    attempt: int = 1,
) -> LegRun:
    """An original leg (index defaults to ``leg_id - 1``)."""
    leg_index = leg_id - 1 if index is None else index
    return LegRun(
        id=leg_id,
        job_id=job_id,
        leg_index=leg_index,
        attempt=attempt,
        exchange=exchange,
        symbol="BTC-PERP",
        side=side,
        quantity=D(qty),
        client_order_id=f"pb{job_id}L{leg_index}A{attempt}",
        fill=fill,
    )


def unwind_leg(leg_id: int, of: LegRun, qty: str | Decimal, fill: Fill | None) -> LegRun:
    """A recorded reduce-only unwind of ``of``, as the executor writes it."""
    side = SELL if of.side is BUY else BUY
    index = UNWIND_INDEX_BASE + of.leg_index
    return replace(
        of,
        id=leg_id,
        leg_index=index,
        side=side,
        quantity=D(qty),
        client_order_id=f"pb{of.job_id}L{index}A{of.attempt}",
        reduce_only=True,
        unwinds_leg_id=of.id,
        fill=fill,
    )


def job(*legs: LegRun, job_id: int = 1, attempt: int = 1, max_attempts: int = 3) -> JobRun:
    return JobRun(
        id=job_id, attempt=attempt, max_attempts=max_attempts, symbol="BTC-PERP", legs=legs
    )


def apply(run: JobRun, plan: Sequence[Unwind], fills: Sequence[Fill | None]) -> JobRun:
    """Append the planned unwinds with their answers (fresh ids, as the executor does)."""
    next_id = max(leg.id for leg in run.legs) + 1
    added = tuple(
        replace(
            u.unwinds,
            id=next_id + i,
            leg_index=u.leg_index,
            side=u.side,
            quantity=u.quantity,
            client_order_id=f"pb{run.id}L{u.leg_index}A{u.unwinds.attempt}#{next_id + i}",
            reduce_only=True,
            unwinds_leg_id=u.unwinds.id,
            fill=fill,
        )
        for i, (u, fill) in enumerate(zip(plan, fills, strict=True))
    )
    return replace(run, legs=run.legs + added)


def unwound_fully(run: JobRun, price: str = "100") -> JobRun:
    plan = unwind_plan(run)
    return apply(run, plan, [got(u.quantity, price) for u in plan])


def shape(plan: Sequence[Unwind]) -> list[tuple[int, str, Side, Decimal]]:
    """(leg closed, exchange, unwind side, quantity) of each planned unwind."""
    return [(u.unwinds.id, u.unwinds.exchange, u.side, u.quantity) for u in plan]


def held(run: JobRun) -> dict[int, Decimal]:
    """What each original leg still holds after the recorded unwinds."""
    out = {leg.id: leg.filled for leg in run.originals}
    for leg in run.legs:
        if leg.unwinds_leg_id is not None:
            out[leg.unwinds_leg_id] -= leg.filled
    return out


def cash(run: JobRun) -> Decimal:
    """Exact cash result of the attempt: sells - buys - fees, unrounded."""
    total = D(0)
    for leg in run.legs:
        if leg.fill is None:
            continue
        if leg.filled > 0:
            assert leg.fill.avg_price is not None
            total -= leg.sign * leg.filled * leg.fill.avg_price
        total -= leg.fill.fee_usd
    return total


def end(job_id: int, status: JobStatus, code: EndCode = EndCode.FILLED) -> Settlement:
    return Settlement(job_id, status, code, False, D(0))


# The usual two-leg hedge: buy 0.01 on X against sell 0.01 on Y.
def pair(buy_fill: Fill | None, sell_fill: Fill | None, **kw) -> JobRun:
    return job(leg(1, BUY, "0.01", X, buy_fill), leg(2, SELL, "0.01", Y, sell_fill), **kw)


# The three-leg hedge of the brief: buy 0.1 on X; sell 0.05 on Y; sell 0.05 on Z.
def triple(x: Fill | None, y: Fill | None, z: Fill | None, **kw) -> JobRun:
    return job(
        leg(1, BUY, "0.1", X, x), leg(2, SELL, "0.05", Y, y), leg(3, SELL, "0.05", Z, z), **kw
    )


# --------------------------------------------------------------------------- #
# unwind_plan


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(pair(got("0.01"), got("0.01")), id="both-filled"),
        pytest.param(pair(REJECTED, REJECTED), id="nothing-filled"),
        pytest.param(pair(got("0.004", of="0.01"), got("0.004", of="0.01")), id="equal-partials"),
        pytest.param(triple(got("0.1"), got("0.05"), got("0.05")), id="three-legs-filled"),
    ],
)
def test_flat_job_plans_no_unwind(run: JobRun) -> None:
    assert run.net() == 0
    assert unwind_plan(run) == []


def test_second_leg_rejected_after_first_filled_unwinds_the_first_in_full() -> None:
    run = pair(got("0.01"), REJECTED)
    [u] = unwind_plan(run)
    assert u.unwinds == run.legs[0]
    assert shape([u]) == [(1, X, SELL, D("0.01"))]
    assert u.leg_index == UNWIND_INDEX_BASE + 0


def test_an_unwind_becomes_a_reduce_only_order_named_for_its_leg_and_attempt() -> None:
    run = job(
        leg(1, BUY, "0.01", X, got("0.01"), attempt=2),
        leg(2, SELL, "0.01", Y, REJECTED, attempt=2),
        attempt=2,
    )
    [u] = unwind_plan(run)
    order = u.order("pb")
    filled = run.legs[0]
    assert order == unwind_leg(0, filled, "0.01", None)  # id 0 until it is recorded
    assert (order.reduce_only, order.unwinds_leg_id, order.side) == (True, filled.id, SELL)
    assert order.client_order_id == f"pb1L{UNWIND_INDEX_BASE}A2"
    assert order.attempt == filled.attempt == 2


def test_a_retry_orders_the_original_legs_again_for_the_next_attempt() -> None:
    run = pair(REJECTED, REJECTED, attempt=1)
    run = replace(run, legs=(*run.legs, unwind_leg(9, run.legs[0], "0.01", REJECTED)))
    orders = retry_orders(run, "pb")
    assert [(o.leg_index, o.attempt, o.side, o.fill, o.id) for o in orders] == [
        (0, 2, BUY, None, 0),
        (1, 2, SELL, None, 0),
    ]  # the unwind is not ordered again
    assert [o.client_order_id for o in orders] == ["pb1L0A2", "pb1L1A2"]


def test_buy_rejected_after_sell_filled_unwinds_the_sell_with_a_buy() -> None:
    run = pair(REJECTED, got("0.01"))
    assert shape(unwind_plan(run)) == [(2, Y, BUY, D("0.01"))]
    assert unwind_plan(run)[0].leg_index == UNWIND_INDEX_BASE + 1


def test_partial_fill_unwinds_the_excess_of_the_fuller_leg() -> None:
    run = pair(got("0.01"), got("0.004", of="0.01"))
    assert shape(unwind_plan(run)) == [(1, X, SELL, D("0.006"))]
    # both partial: only the difference
    run = pair(got("0.004", of="0.01"), got("0.007", of="0.01"))
    assert shape(unwind_plan(run)) == [(2, Y, BUY, D("0.003"))]


def test_multi_leg_with_one_sell_rejected_unwinds_the_buy_by_the_missing_half() -> None:
    run = triple(got("0.1"), got("0.05"), REJECTED)
    assert shape(unwind_plan(run)) == [(1, X, SELL, D("0.05"))]


def test_recorded_partial_unwind_is_accounted_for() -> None:
    first = leg(1, BUY, "0.01", X, got("0.01"))
    run = job(first, leg(2, SELL, "0.01", Y, REJECTED), unwind_leg(3, first, "0.01", got("0.004")))
    assert run.net() == D("0.006")
    assert shape(unwind_plan(run)) == [(1, X, SELL, D("0.006"))]
    # the recorded unwind got everything: nothing left to plan
    done = job(first, leg(2, SELL, "0.01", Y, REJECTED), unwind_leg(3, first, "0.01", got("0.01")))
    assert unwind_plan(done) == []


def test_unwind_never_plans_more_than_a_leg_still_holds() -> None:
    # two buys of 0.05 on X and W against a sell of 0.1 on Y that got 0.02;
    # an earlier unwind already took 0.045 of the X buy, which now holds 0.005
    x = leg(1, BUY, "0.05", X, got("0.05"))
    w = leg(2, BUY, "0.05", W, got("0.05"))
    y = leg(3, SELL, "0.1", Y, got("0.02", of="0.1"))
    run = job(x, w, y, unwind_leg(4, x, "0.045", got("0.045")))
    assert run.net() == D("0.035")
    plan = unwind_plan(run)
    assert shape(plan) == [(2, W, SELL, D("0.035"))]
    left = held(run)
    assert all(u.quantity <= left[u.unwinds.id] for u in plan)


def test_unwind_takes_the_largest_fill_first_and_splits_the_rest() -> None:
    # buys of 0.03 (X) and 0.05 (W) against a sell of 0.08 (Y) that got 0.02: net 0.06
    run = job(
        leg(1, BUY, "0.03", X, got("0.03")),
        leg(2, BUY, "0.05", W, got("0.05")),
        leg(3, SELL, "0.08", Y, got("0.02", of="0.08")),
    )
    assert shape(unwind_plan(run)) == [(2, W, SELL, D("0.05")), (1, X, SELL, D("0.01"))]


def test_equal_fills_are_unwound_in_leg_order() -> None:
    run = job(
        leg(1, SELL, "0.05", X, got("0.05")),
        leg(2, SELL, "0.05", Z, got("0.05")),
        leg(3, BUY, "0.1", Y, got("0.04", of="0.1")),
    )
    assert shape(unwind_plan(run)) == [(1, X, BUY, D("0.05")), (2, Z, BUY, D("0.01"))]


def test_unwind_only_reduces_legs_on_the_excess_side() -> None:
    # net long 0.03: the sells (short exposure) are never touched, even the big one
    run = job(
        leg(1, BUY, "0.1", X, got("0.08", of="0.1")),
        leg(2, SELL, "0.05", Y, got("0.05")),
        leg(3, SELL, "0.05", Z, REJECTED),
    )
    plan = unwind_plan(run)
    assert all(u.unwinds.side is BUY and u.side is SELL for u in plan)
    assert shape(plan) == [(1, X, SELL, D("0.03"))]


def test_a_second_unwind_of_a_leg_gets_a_leg_index_of_its_own() -> None:
    """BUG: a re-planned unwind reuses ``100 + index`` of the unwind already recorded.

    A worker records the unwind of leg 0 (leg_index 100, ``pb1L100A1``) as sent and
    dies; recovery asks the exchange, which never saw it (cancelled, 0 filled), and
    plans the unwind again: ``Unwind.leg_index`` is 100 again, so the executor's
    insert of it breaks ``uq_legs_job_id_leg_index_attempt`` (and the unique client
    order id) and the open position can never be unwound.  The module promises
    "client order ids stay unique".
    """
    first = leg(1, BUY, "0.01", X, got("0.01"))
    recorded = unwind_leg(3, first, "0.01", Fill(LegStatus.CANCELLED, error="never seen"))
    run = job(first, leg(2, SELL, "0.01", Y, REJECTED), recorded)
    [u] = unwind_plan(run)
    assert u.quantity == D("0.01")
    taken = {(leg.leg_index, leg.attempt) for leg in run.legs}
    assert (u.leg_index, u.unwinds.attempt) not in taken, (
        f"re-planned unwind reuses leg_index {u.leg_index} of recorded unwind leg {recorded.id}"
    )


def test_unwind_side_and_index_follow_the_leg_closed() -> None:
    sell = leg(5, SELL, "1", Z, got("1"), index=3)
    u = Unwind(sell, D("1"))
    assert u.side is BUY and u.leg_index == 103
    assert Unwind(replace(sell, side=BUY), D("1")).side is SELL


# --------------------------------------------------------------------------- #
# settle


def test_all_filled_completes_as_filled() -> None:
    s = settle(pair(got("0.01"), got("0.01")))
    assert (s.to_status, s.code, s.unhedged, s.net) == (
        JobStatus.COMPLETED,
        EndCode.FILLED,
        False,
        0,
    )
    assert s.succeeded and s.exposure_exchanges == ()
    s3 = settle(triple(got("0.1"), got("0.05"), got("0.05"), job_id=7))
    assert (s3.job_id, s3.to_status, s3.code) == (7, JobStatus.COMPLETED, EndCode.FILLED)


def test_partial_fill_hedged_completes_as_partial() -> None:
    run = unwound_fully(pair(got("0.01"), got("0.004", of="0.01")))
    assert len(run.legs) == 3
    s = settle(run)
    assert (s.to_status, s.code, s.unhedged) == (
        JobStatus.COMPLETED,
        EndCode.PARTIAL_FILL_HEDGED,
        False,
    )
    # equal partials need no unwind and are partial too
    s = settle(pair(got("0.004", of="0.01"), got("0.004", of="0.01")))
    assert (s.to_status, s.code) == (JobStatus.COMPLETED, EndCode.PARTIAL_FILL_HEDGED)


def test_one_leg_filled_then_unwound_fails_flat_not_unhedged() -> None:
    run = unwound_fully(pair(got("0.01"), REJECTED))
    s = settle(run)
    assert (s.to_status, s.code, s.unhedged, s.net) == (
        JobStatus.FAILED,
        EndCode.LEG_FAILED_UNWOUND,
        False,
        0,
    )
    assert not s.succeeded and s.exposure_exchanges == ()


def test_multi_leg_with_a_leg_rejected_and_unwound_fails_flat() -> None:
    run = unwound_fully(triple(got("0.1"), got("0.05"), REJECTED))
    s = settle(run)
    assert (s.to_status, s.code, s.unhedged) == (
        JobStatus.FAILED,
        EndCode.LEG_FAILED_UNWOUND,
        False,
    )


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "status"),
    [
        (1, 3, JobStatus.PENDING),
        (2, 3, JobStatus.PENDING),
        (3, 3, JobStatus.FAILED),
        (1, 1, JobStatus.FAILED),
    ],
)
def test_nothing_filled_retries_while_attempts_are_left(
    attempt: int, max_attempts: int, status: JobStatus
) -> None:
    s = settle(pair(REJECTED, REJECTED, attempt=attempt, max_attempts=max_attempts))
    assert (s.to_status, s.code, s.unhedged, s.net) == (status, EndCode.NOTHING_FILLED, False, 0)
    assert not s.succeeded


def test_failed_unwind_leaves_the_job_failed_unhedged_on_the_exchange_holding_it() -> None:
    run = pair(got("0.01"), REJECTED)
    run = apply(run, unwind_plan(run), [REJECTED])
    s = settle(run)
    assert (s.to_status, s.code, s.unhedged, s.net) == (
        JobStatus.FAILED,
        EndCode.UNHEDGED,
        True,
        D("0.01"),
    )
    assert s.exposure_exchanges == (X,)
    assert not s.succeeded


def test_failed_unwind_of_a_short_reports_negative_net() -> None:
    run = pair(REJECTED, got("0.01"))
    run = apply(run, unwind_plan(run), [REJECTED])
    s = settle(run)
    assert (s.code, s.unhedged, s.net, s.exposure_exchanges) == (
        EndCode.UNHEDGED,
        True,
        D("-0.01"),
        (Y,),
    )


def test_partially_failed_unwind_names_every_exchange_left_with_a_position() -> None:
    # buy 0.01 on X against 0.004 sold on Y; the 0.006 unwind on X gets 0.002
    run = pair(got("0.01"), got("0.004", of="0.01"))
    run = apply(run, unwind_plan(run), [got("0.002", of="0.006")])
    s = settle(run)
    assert s.unhedged and s.code is EndCode.UNHEDGED and s.net == D("0.004")
    assert X in s.exposure_exchanges
    positions: dict[str, Decimal] = defaultdict(Decimal)
    for one in run.legs:
        positions[one.exchange] += one.sign * one.filled
    assert s.exposure_exchanges == tuple(sorted(ex for ex, q in positions.items() if q != 0))


def test_unhedged_does_not_name_an_exchange_whose_orders_cancel_out() -> None:
    # X holds the long and the failed unwind; Z bought and sold the same amount
    run = job(
        leg(1, BUY, "0.1", X, got("0.1")),
        leg(2, SELL, "0.05", Z, got("0.05")),
        leg(3, BUY, "0.05", Z, got("0.05")),
        leg(4, SELL, "0.1", Y, REJECTED),
    )
    run = apply(run, unwind_plan(run), [REJECTED])
    assert settle(run).exposure_exchanges == (X,)


def test_settle_refuses_a_job_with_an_unknown_leg() -> None:
    with pytest.raises(ValueError, match="job 9"):
        settle(pair(got("0.01"), None, job_id=9))
    run = pair(got("0.01"), REJECTED, job_id=9)
    run = apply(run, unwind_plan(run), [None])  # unwind sent, answer unknown
    with pytest.raises(ValueError):
        settle(run)


# --------------------------------------------------------------------------- #
# leg_pnl and book


def pnl_of(run: JobRun) -> dict[int, Decimal]:
    return {b.leg_id: b.realized_pnl_usd for b in leg_pnl(run)}


def test_flat_attempt_pnl_is_the_exact_cash_result() -> None:
    # ref 100.25: buy (100.25 - 100) * 0.01 - 0.0006; sell (100.5 - 100.25) * 0.01 - 0.0007
    run = pair(got("0.01", "100", "0.0006"), got("0.01", "100.5", "0.0007"))
    pnl = pnl_of(run)
    assert pnl == {1: D("0.0019"), 2: D("0.0018")}
    assert sum(pnl.values()) == cash(run) == D("0.0037")


def test_flat_attempt_with_repeating_reference_rounds_at_most_once_per_leg() -> None:
    # ref = 5.9858 / 0.06 = 99.76333...: the three sells round down, 0.0254 books as 0.02540001
    run = job(
        leg(1, BUY, "0.03", X, got("0.03", "99.34")),
        leg(2, SELL, "0.01", Y, got("0.01", "100.45")),
        leg(3, SELL, "0.01", Z, got("0.01", "100.95")),
        leg(4, SELL, "0.01", W, got("0.01", "99.16")),
    )
    assert run.net() == 0 and cash(run) == D("0.0254")
    pnl = pnl_of(run)
    assert pnl == {1: D("0.0127"), 2: D("0.00686667"), 3: D("0.01186667"), 4: D("-0.00603333")}
    assert all(v == money(v) for v in pnl.values())
    assert abs(sum(pnl.values()) - cash(run)) <= ONE_E8 * len(run.legs)
    # partial fills, fees and an unwind leg at its own price
    run = unwound_fully(
        triple(got("0.1", "100.1", "0.00012345"), got("0.05", "100.3", "0.00000001"), REJECTED),
        "99.7",
    )
    assert run.net() == 0
    pnl = pnl_of(run)
    assert set(pnl) == {1, 2, 3, 4}
    assert cash(run) == D("5.015") + D("4.985") - D("10.01") - D("0.00012346")
    assert abs(sum(pnl.values()) - cash(run)) <= ONE_E8 * len(run.legs)


def test_unhedged_remainder_is_valued_at_the_reference() -> None:
    run = pair(got("0.01", "100", "0.004"), REJECTED)
    run = apply(run, unwind_plan(run), [REJECTED])
    assert pnl_of(run) == {1: D("-0.004"), 2: D(0), 3: D(0)}


def test_nothing_filled_books_only_fees() -> None:
    run = pair(got("0", fee="0.001"), REJECTED)
    assert pnl_of(run) == {1: D("-0.001"), 2: D(0)}


def test_book_puts_volume_fees_and_pnl_in_global_and_each_exchange() -> None:
    run = pair(got("0.01", "100", "0.0006"), got("0.01", "100.5", "0.0007"))
    b = book([(run, settle(run))])
    x, y, g = b.counters[X], b.counters[Y], b.counters[GLOBAL]
    assert set(b.counters) == {GLOBAL, X, Y}
    assert (x.volume_usd, x.fees_usd, x.realized_pnl_usd) == (D("1"), D("0.0006"), D("0.0019"))
    assert (y.volume_usd, y.fees_usd, y.realized_pnl_usd) == (D("1.005"), D("0.0007"), D("0.0018"))
    assert (g.volume_usd, g.fees_usd, g.realized_pnl_usd) == (D("2.005"), D("0.0013"), D("0.0037"))
    assert (g.loss_used_usd, x.loss_used_usd, y.loss_used_usd) == (0, 0, 0)
    assert sorted(b.legs, key=lambda lb: lb.leg_id) == sorted(
        leg_pnl(run), key=lambda lb: lb.leg_id
    )


def test_book_counts_unwind_volume_and_fees_on_the_unwound_exchange() -> None:
    run = pair(got("0.01", "100", "0.01"), REJECTED)
    plan = unwind_plan(run)
    run = apply(run, plan, [got(plan[0].quantity, "99", "0.02")])
    b = book([(run, settle(run))])
    assert b.counters[X].volume_usd == D("1") + D("0.99")
    assert b.counters[X].fees_usd == D("0.03")
    assert b.counters[Y].volume_usd == 0 and b.counters[Y].fees_usd == 0
    # flat: the whole loss (1 - 0.99 + fees) is on X
    assert b.counters[X].realized_pnl_usd == D("-0.04") == b.counters[GLOBAL].realized_pnl_usd
    assert b.counters[GLOBAL].loss_used_usd == D("0.04") == b.counters[X].loss_used_usd


def test_loss_used_is_each_attempts_loss_globally_and_per_exchange() -> None:
    # job 1 gains 0.01 overall but loses 0.01 on X (its fee); job 2 loses 0.005 on each side
    gain = pair(got("0.01", "100", "0.03"), got("0.01", "104"), job_id=1)
    loss = job(
        leg(3, BUY, "0.01", X, got("0.01", "101"), job_id=2),
        leg(4, SELL, "0.01", Y, got("0.01", "100"), job_id=2),
        job_id=2,
    )
    assert pnl_of(gain) == {1: D("-0.01"), 2: D("0.02")}
    assert pnl_of(loss) == {3: D("-0.005"), 4: D("-0.005")}
    b = book([(gain, settle(gain)), (loss, settle(loss))])
    g, x, y = b.counters[GLOBAL], b.counters[X], b.counters[Y]
    assert g.realized_pnl_usd == 0
    assert g.loss_used_usd == D("0.01")  # job 2 only: a gain elsewhere does not offset it
    assert x.loss_used_usd == D("0.015")
    assert y.loss_used_usd == D("0.005")
    assert (x.realized_pnl_usd, y.realized_pnl_usd) == (D("-0.015"), D("0.015"))


def test_jobs_are_counted_once_per_scope_touched_and_a_retry_counts_as_failed() -> None:
    done = pair(got("0.01"), got("0.01"), job_id=1)
    failed = unwound_fully(
        job(
            leg(11, BUY, "0.1", X, got("0.1"), job_id=2),
            leg(12, SELL, "0.05", Y, got("0.05"), job_id=2),
            leg(13, SELL, "0.05", Z, REJECTED, job_id=2),
            job_id=2,
        )
    )
    retry = job(
        leg(21, BUY, "0.01", Y, REJECTED, job_id=3),
        leg(22, SELL, "0.01", Z, REJECTED, job_id=3),
        job_id=3,
    )
    ends = {r.id: settle(r) for r in (done, failed, retry)}
    assert [ends[i].to_status for i in (1, 2, 3)] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.PENDING,
    ]
    assert sum(1 for one in failed.legs if one.exchange == X) == 2  # the buy and its unwind
    b = book((r, ends[r.id]) for r in (done, failed, retry))
    counts = {s: (d.jobs_completed, d.jobs_failed) for s, d in b.counters.items()}
    assert counts == {GLOBAL: (1, 2), X: (1, 1), Y: (1, 2), Z: (0, 2)}
    assert len(b.legs) == len(done.legs) + len(failed.legs) + len(retry.legs)


def test_book_of_nothing_is_empty() -> None:
    b = book([])
    assert b.legs == [] and b.counters == {}


# --------------------------------------------------------------------------- #
# streaks


def test_success_resets_and_later_failures_add() -> None:
    ends = [
        end(1, JobStatus.FAILED),
        end(2, JobStatus.COMPLETED),
        end(3, JobStatus.FAILED),
        end(4, JobStatus.PENDING, EndCode.NOTHING_FILLED),
    ]
    exchanges = {1: [X, Y], 2: [X, Y], 3: [X, Z], 4: [Y, Y]}
    out = streaks(ends, exchanges)
    assert out == {
        GLOBAL: Streak(True, 2),
        X: Streak(True, 1),
        Y: Streak(True, 1),  # job 4 is on Y twice: counted once
        Z: Streak(False, 1),
    }


def test_failures_without_a_success_only_add() -> None:
    ends = [end(1, JobStatus.FAILED), end(2, JobStatus.FAILED)]
    out = streaks(ends, {1: [X, Y], 2: [X]})
    assert out == {GLOBAL: Streak(False, 2), X: Streak(False, 2), Y: Streak(False, 1)}


def test_a_final_success_leaves_a_reset_with_nothing_added() -> None:
    ends = [end(1, JobStatus.FAILED), end(2, JobStatus.FAILED), end(3, JobStatus.COMPLETED)]
    out = streaks(ends, {1: [X], 2: [Y], 3: [X]})
    assert out == {GLOBAL: Streak(True, 0), X: Streak(True, 0), Y: Streak(False, 1)}
    assert streaks([], {}) == {}


@given(
    st.lists(
        st.tuples(st.booleans(), st.lists(st.sampled_from([X, Y, Z, W]), min_size=1, max_size=4)),
        max_size=12,
    ),
    st.dictionaries(st.sampled_from([GLOBAL, X, Y, Z, W]), st.integers(0, 50)),
)
def test_streak_update_equals_applying_each_end_in_order(
    seq: list[tuple[bool, list[str]]], before: dict[str, int]
) -> None:
    ends = [
        end(i, JobStatus.COMPLETED if ok else JobStatus.FAILED) for i, (ok, _) in enumerate(seq)
    ]
    out = streaks(ends, {i: exs for i, (_, exs) in enumerate(seq)})
    model = dict(before)
    for ok, exs in seq:
        for scope in {GLOBAL, *exs}:
            model[scope] = 0 if ok else model.get(scope, 0) + 1
    for scope, s in out.items():
        assert (0 if s.reset else before.get(scope, 0)) + s.add == model[scope]
    assert set(out) == ({GLOBAL} | {ex for _, exs in seq for ex in exs} if seq else set())


# --------------------------------------------------------------------------- #
# properties over random hedges

UNIT = D("0.001")
EXCHANGES = (X, Y, Z, W)


@st.composite
def fills(draw: st.DrawFn, qty: Decimal) -> Fill:
    """Any answer to an order of ``qty``: 0..qty filled at some price with some fee."""
    units = draw(st.integers(0, int(qty / UNIT)))
    fee = D(draw(st.integers(0, 5_000_000))) * ONE_E8
    if units == 0:
        return Fill(LegStatus.REJECTED, fee_usd=fee)
    price = D(draw(st.integers(90_000_000, 110_000_000))) / 10_000  # 9000.0000 .. 11000.0000
    status = LegStatus.FILLED if units * UNIT == qty else LegStatus.PARTIALLY_FILLED
    return Fill(status, filled=units * UNIT, avg_price=price, fee_usd=fee)


def _split(draw: st.DrawFn, total: int, parts: int) -> list[int]:
    cuts = draw(st.lists(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1,
                         unique=True))  # fmt: skip
    return [b - a for a, b in pairwise([0, *sorted(cuts), total])]


@st.composite
def hedges(draw: st.DrawFn, job_id: int = 1, first_leg_id: int = 1) -> JobRun:
    """A 2..4-leg hedge whose buys and sells add up to the same quantity, with fills."""
    n = draw(st.integers(2, 4))
    buys = draw(st.integers(1, n - 1))
    total = draw(st.integers(4, 400))
    sides = [BUY] * buys + [SELL] * (n - buys)
    sizes = _split(draw, total, buys) + _split(draw, total, n - buys)
    order = draw(st.permutations(range(n)))
    legs = []
    for i, k in enumerate(order):
        qty = sizes[k] * UNIT
        legs.append(
            replace(
                leg(first_leg_id + i, sides[k], str(qty), draw(st.sampled_from(EXCHANGES))),
                leg_index=i,
                job_id=job_id,
                fill=draw(fills(qty)),
            )
        )
    attempt = draw(st.integers(1, 3))
    return job(*legs, job_id=job_id, attempt=attempt, max_attempts=3)


def unwind_answers(draw: st.DrawFn, plan: Sequence[Unwind]) -> list[Fill]:
    return [draw(fills(u.quantity)) for u in plan]


def check_plan(run: JobRun, plan: Sequence[Unwind]) -> None:
    """What every plan must be: exactly the net, off the excess side, within holdings."""
    net = run.net()
    left = held(run)
    assert sum((u.quantity for u in plan), D(0)) == abs(net)
    assert len({u.unwinds.id for u in plan}) == len(plan)
    for u in plan:
        assert u.unwinds in run.originals
        assert u.unwinds.sign * net > 0  # the excess side only
        assert u.side is not u.unwinds.side
        assert 0 < u.quantity <= left[u.unwinds.id]
    assert [left[u.unwinds.id] for u in plan] == sorted(
        (left[u.unwinds.id] for u in plan), reverse=True
    )


@settings(max_examples=300)
@given(hedges(), st.data())
def test_full_unwinds_always_flatten_and_never_leave_unhedged(run: JobRun, data) -> None:
    plan = unwind_plan(run)
    check_plan(run, plan)
    price = D(data.draw(st.integers(9_000_00, 11_000_00))) / 100
    after = apply(run, plan, [got(u.quantity, price, "0.01") for u in plan])
    assert after.net() == 0
    assert unwind_plan(after) == []
    s = settle(after)
    assert not s.unhedged and s.code is not EndCode.UNHEDGED and s.exposure_exchanges == ()
    assert all(v >= 0 for v in held(after).values())
    if any(one.filled > 0 for one in run.legs):
        assert s.to_status in (JobStatus.COMPLETED, JobStatus.FAILED)
        assert (s.to_status is JobStatus.COMPLETED) == all(v > 0 for v in held(after).values())
    else:
        assert plan == [] and s.code is EndCode.NOTHING_FILLED
        assert s.to_status is (JobStatus.PENDING if run.attempt < 3 else JobStatus.FAILED)
    # flat: the legs' PnL is the cash result, at most one rounding per leg away
    pnl = pnl_of(after)
    assert abs(sum(pnl.values()) - cash(after)) <= ONE_E8 * len(after.legs)


@settings(max_examples=300)
@given(hedges())
def test_failed_unwinds_leave_unhedged_exactly_when_the_hedge_was_not_flat(run: JobRun) -> None:
    plan = unwind_plan(run)
    after = apply(run, plan, [Fill(LegStatus.REJECTED, error="reduce-only refused") for _ in plan])
    s = settle(after)
    assert s.unhedged == (run.net() != 0)
    assert s.net == run.net()
    assert (s.code is EndCode.UNHEDGED) == s.unhedged
    assert bool(s.exposure_exchanges) == s.unhedged
    if s.unhedged:
        assert s.to_status is JobStatus.FAILED
        # the whole net sits on the exchanges named; every other one is flat
        positions: dict[str, Decimal] = defaultdict(Decimal)
        for one in after.legs:
            positions[one.exchange] += one.sign * one.filled
        assert sum((positions[ex] for ex in s.exposure_exchanges), D(0)) == s.net
        assert all(positions[ex] != 0 for ex in s.exposure_exchanges)
        assert all(q == 0 for ex, q in positions.items() if ex not in s.exposure_exchanges)


@settings(max_examples=200)
@given(hedges(), st.data())
def test_partial_unwinds_never_overshoot_and_the_remainder_is_planned(run: JobRun, data) -> None:
    plan = unwind_plan(run)
    after = apply(run, plan, unwind_answers(data.draw, plan))
    net0, net1 = run.net(), after.net()
    assert abs(net1) <= abs(net0) and net1 * net0 >= 0  # toward flat, never past it
    assert all(v >= 0 for v in held(after).values())
    again = unwind_plan(after)
    check_plan(after, again)
    assert settle(after).unhedged == (net1 != 0)


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[JobRun, Settlement]]:
    out = []
    next_leg = 1
    for job_id in range(1, draw(st.integers(1, 4)) + 1):
        run = draw(hedges(job_id=job_id, first_leg_id=next_leg))
        plan = unwind_plan(run)
        run = apply(run, plan, unwind_answers(draw, plan))
        next_leg = max(one.id for one in run.legs) + 1
        out.append((run, settle(run)))
    return out


@settings(max_examples=200)
@given(batches())
def test_book_global_counters_are_the_sum_of_the_exchanges(
    finished: list[tuple[JobRun, Settlement]],
) -> None:
    b: Booking = book(finished)
    exchanges = [d for scope, d in b.counters.items() if scope != GLOBAL]
    g = b.counters[GLOBAL]
    for name in ("volume_usd", "fees_usd", "realized_pnl_usd"):
        assert getattr(g, name) == sum((getattr(d, name) for d in exchanges), D(0)), name
    # jobs: once globally, once in every exchange a job touched
    assert g.jobs_completed + g.jobs_failed == len(finished)
    assert g.jobs_completed == sum(1 for _, s in finished if s.succeeded)
    for d in exchanges:
        touching = [s for r, s in finished if any(one.exchange == d.scope for one in r.legs)]
        assert (d.jobs_completed, d.jobs_failed) == (
            sum(1 for s in touching if s.succeeded),
            sum(1 for s in touching if not s.succeeded),
        )
    # loss: each attempt's own loss, globally and per exchange
    per_job = [sum(pnl_of(r).values(), D(0)) for r, _ in finished]
    assert g.loss_used_usd == sum((max(D(0), -p) for p in per_job), D(0))
    for d in exchanges:
        expected = D(0)
        for r, _ in finished:
            pnl = pnl_of(r)
            here = sum((pnl[one.id] for one in r.legs if one.exchange == d.scope), D(0))
            expected += max(D(0), -here)
        assert d.loss_used_usd == expected
    assert {lb.leg_id for lb in b.legs} == {one.id for r, _ in finished for one in r.legs}
    assert g.loss_used_usd <= sum((d.loss_used_usd for d in exchanges), D(0))


# --------------------------------------------------------------------------- #
# repeated unwind rounds (recovery finds partial unwinds and plans again)


@dataclass
class _Round:
    before: Decimal
    after: Decimal


class UnwindRounds(RuleBasedStateMachine):
    """A hedge, then any number of unwind rounds, each filled partly or not at all."""

    @initialize(run=hedges())
    def start(self, run: JobRun) -> None:
        self.run = run
        self.rounds: list[_Round] = []

    @rule(data=st.data())
    def unwind_round(self, data: st.DataObject) -> None:
        plan = unwind_plan(self.run)
        check_plan(self.run, plan)
        before = self.run.net()
        self.run = apply(self.run, plan, unwind_answers(data.draw, plan))
        self.rounds.append(_Round(before, self.run.net()))

    @rule()
    def unwind_round_filled(self) -> None:
        self.run = unwound_fully(self.run)
        assert self.run.net() == 0

    @invariant()
    def never_past_flat(self) -> None:
        for r in self.rounds:
            assert abs(r.after) <= abs(r.before) and r.after * r.before >= 0

    @invariant()
    def no_leg_unwound_beyond_its_fill(self) -> None:
        assert all(v >= 0 for v in held(self.run).values())

    @invariant()
    def settles_unhedged_exactly_when_not_flat(self) -> None:
        s = settle(self.run)
        assert s.unhedged == (self.run.net() != 0)
        if self.run.net() == 0:
            assert unwind_plan(self.run) == []


UnwindRounds.TestCase.settings = settings(max_examples=100, stateful_step_count=10)
TestUnwindRounds = UnwindRounds.TestCase


# --------------------------------------------------------------------------- #
# hedge rebalancing: legs that offset exposure other jobs left


def test_rebalance_that_fills_its_one_sided_legs_completes_and_is_never_unwound() -> None:
    run = replace(
        job(leg(1, BUY, "0.005", Y, got("0.005")), leg(2, BUY, "0.005", X, got("0.005"))),
        reduces_exposure=True,
    )
    assert unwind_plan(run) == []
    end = settle(run)
    assert (end.to_status, end.code, end.unhedged) == (JobStatus.COMPLETED, EndCode.FILLED, False)
    assert end.net == D("0.01")


def test_rebalance_keeps_a_partial_fill_and_retries_only_when_nothing_filled() -> None:
    partial = replace(
        job(leg(1, BUY, "0.005", Y, got("0.002", of="0.005")), leg(2, BUY, "0.005", X, REJECTED)),
        reduces_exposure=True,
    )
    assert unwind_plan(partial) == []
    end = settle(partial)
    assert (end.to_status, end.code) == (JobStatus.COMPLETED, EndCode.PARTIAL_FILL_HEDGED)
    nothing = replace(job(leg(1, BUY, "1", Y, REJECTED), leg(2, BUY, "1", X, REJECTED)),
                      reduces_exposure=True)  # fmt: skip
    assert settle(nothing).to_status is JobStatus.PENDING
    # the same legs in any other job are unhedged: its unwind is planned
    assert unwind_plan(replace(partial, reduces_exposure=False)) != []
