"""The paper exchange against a real PostgreSQL: fills, refusals, faults, recovery, account."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import URL, Engine, event, text
from sqlalchemy.exc import OperationalError

from perpbot_db.runtime.db import engine_for
from perpbot_db.services.market import SnapshotIn, upsert_snapshots
from workers.venues import paper_sql
from workers.venues.exchange import (
    EXPIRED,
    ExchangeAdapter,
    ExchangeError,
    ExchangeUnavailable,
    OrderRequest,
    OrderState,
)
from workers.venues.paper import (
    DUPLICATE,
    SIMULATED_REJECTION,
    Fill,
    PaperConfig,
    PaperExchange,
    draws_for,
    latency_seconds,
    realized_pnl,
)

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
D = Decimal


def put_quote(
    engine: Engine,
    symbol: str = BTC,
    bid: str = "100",
    ask: str = "101",
    *,
    exchange: str = "binance",
    observed_at: datetime = NOW,
) -> None:
    snap = SnapshotIn(
        exchange=exchange,
        symbol=symbol,
        bid=D(bid),
        ask=D(ask),
        last=D(bid),
        observed_at=observed_at,
    )
    with engine.begin() as conn:
        assert upsert_snapshots(conn, [snap], NOW) == 1


def venue(
    engine: Engine, name: str = "binance", *, now: datetime = NOW, **config: Any
) -> PaperExchange:
    config.setdefault("latency_ms", 0.0)
    return PaperExchange(name, engine, PaperConfig(**config), clock=lambda: now)


def buy(coid: str, qty: str, symbol: str = BTC, *, reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(coid, symbol, "buy", D(qty), reduce_only=reduce_only)


def sell(coid: str, qty: str, symbol: str = BTC, *, reduce_only: bool = False) -> OrderRequest:
    return OrderRequest(coid, symbol, "sell", D(qty), reduce_only=reduce_only)


def answered(states: list[OrderState | None]) -> list[OrderState]:
    assert all(s is not None for s in states), states
    return [s for s in states if s is not None]


def row_of(engine: Engine, coid: str, exchange: str = "binance") -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM paper_orders WHERE exchange = :e AND client_order_id = :c"),
                {"e": exchange, "c": coid},
            )
            .mappings()
            .first()
        )
    return None if row is None else dict(row)


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine sends, in order."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


# -- the interface --------------------------------------------------------------


def test_paper_exchange_is_an_exchange_adapter(engine: Engine) -> None:
    assert isinstance(venue(engine), ExchangeAdapter)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"side": "long"}, ValueError),
        ({"quantity": D(0)}, ValueError),
        ({"quantity": D("NaN")}, ValueError),
        ({"quantity": 1.5}, TypeError),
        ({"client_order_id": ""}, ValueError),
        ({"expires_at": datetime(2026, 11, 21, 8, 0)}, ValueError),  # naive: whose clock?
        ({"expires_at": "2026-11-21T08:00:00Z"}, ValueError),
    ],
)
def test_malformed_order_request_is_refused_before_anything_is_sent(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    fields: dict[str, Any] = {
        "client_order_id": "a1",
        "symbol": BTC,
        "side": "buy",
        "quantity": D(1),
    }
    with pytest.raises(error):
        OrderRequest(**{**fields, **kwargs})


def test_config_refuses_unknown_fault_and_bad_rates() -> None:
    with pytest.raises(ValueError, match="explode"):
        PaperConfig(faults={"a": "explode"})
    with pytest.raises(ValueError, match="fraction"):
        PaperConfig(faults={"a": "partial:1.5"})
    with pytest.raises(ValueError, match="reject_rate"):
        PaperConfig(reject_rate=1.5)
    assert PaperConfig(taker_fee_bps=4).taker_fee_bps == D(4)  # type: ignore[arg-type]


# -- fills -----------------------------------------------------------------------


def test_market_buy_fills_at_ask_plus_size_impact_and_pays_taker_fee(engine: Engine) -> None:
    put_quote(engine, bid="100", ask="101")
    ex = venue(engine, impact_bps_per_100k_usd=D(10), taker_fee_bps=D(5))
    [state] = answered(ex.create_orders([buy("b1", "500")]))
    # notional at the touch 50 500 USD -> 10 * 0.505 = 5.05 bps above the ask
    assert state.status == "filled"
    assert state.done
    assert state.filled == D(500)
    assert state.average == D("101.051005")
    assert state.fee_usd == D("25.26275125")  # 500 * 101.051005 * 5 / 10^4
    assert state.exchange_order_id is not None
    assert state.error is None


def test_market_sell_fills_at_bid_minus_size_impact_and_pays_taker_fee(engine: Engine) -> None:
    put_quote(engine, bid="100", ask="101")
    ex = venue(engine, impact_bps_per_100k_usd=D(10), taker_fee_bps=D(5))
    [state] = answered(ex.create_orders([sell("s1", "500")]))
    assert (state.status, state.filled) == ("filled", D(500))
    assert state.average == D("99.95")  # 50 000 USD at the bid -> 5 bps below it
    assert state.fee_usd == D("24.98750000")


def test_fill_price_is_rounded_against_the_taker(engine: Engine) -> None:
    put_quote(engine, bid="3.333333333333", ask="3.333333333334")
    ex = venue(engine, impact_bps_per_100k_usd=D(1))
    buy_state, sell_state = answered(ex.create_orders([buy("b1", "0.3"), sell("s1", "0.3")]))
    exact_buy = D("3.333333333334") * (1 + D("3.333333333334") * D("0.3") / 10**9)
    exact_sell = D("3.333333333333") * (1 - D("3.333333333333") * D("0.3") / 10**9)
    assert buy_state.average is not None and sell_state.average is not None
    assert D(0) <= buy_state.average - exact_buy < D("1e-12")
    assert D(0) <= exact_sell - sell_state.average < D("1e-12")


def test_unsupported_order_type_is_refused_and_recorded(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine)
    order = OrderRequest("l1", BTC, "buy", D(1), type="limit")
    [state] = answered(ex.create_orders([order]))
    assert state.status == "rejected"
    assert state.error is not None and "limit" in state.error
    assert ex.fetch_orders(["l1"])["l1"] == state


@pytest.mark.parametrize("quantity", ["0.0000000000001", "1e15"])
def test_quantity_off_the_venue_step_or_too_large_is_refused_and_recorded(
    engine: Engine, quantity: str
) -> None:
    put_quote(engine)
    ex = venue(engine)
    [state] = answered(ex.create_orders([buy("q1", quantity)]))
    assert state.status == "rejected"
    assert state.error is not None and "step" in state.error
    assert ex.fetch_orders(["q1"])["q1"] == state


def test_order_deeper_than_the_simulated_book_is_refused(engine: Engine) -> None:
    put_quote(engine, bid="100", ask="101")
    ex = venue(engine, impact_bps_per_100k_usd=D(1))
    # 200 M USD at the bid would move the price 2000 bps: more than the book holds.
    deep, fine = answered(ex.create_orders([sell("big", "2000000"), sell("ok", "1000")]))
    assert deep.status == "rejected" and "liquidity" in (deep.error or "")
    assert fine.status == "filled"


def test_same_client_order_id_on_two_exchanges_is_two_orders(engine: Engine) -> None:
    put_quote(engine)
    put_quote(engine, exchange="okx", bid="200", ask="201")
    [on_binance] = answered(venue(engine).create_orders([buy("x1", "1")]))
    [on_okx] = answered(venue(engine, "okx").create_orders([buy("x1", "1")]))
    assert (on_binance.status, on_okx.status) == ("filled", "filled")
    assert on_binance.average is not None and on_binance.average < 102
    assert on_okx.average is not None and on_okx.average > 200


# -- duplicates, tombstones, cancel ------------------------------------------------


def test_duplicate_client_order_id_is_refused_and_the_existing_row_untouched(
    engine: Engine,
) -> None:
    put_quote(engine)
    ex = venue(engine)
    [first] = answered(ex.create_orders([buy("d1", "2")]))
    before = row_of(engine, "d1")
    [again] = answered(ex.create_orders([sell("d1", "5")]))
    assert again.status == "rejected"
    assert again.error == DUPLICATE
    assert row_of(engine, "d1") == before
    assert ex.fetch_orders(["d1"])["d1"] == first
    assert ex.positions() == {BTC: D(2)}


def test_duplicate_inside_one_batch_fills_only_the_first(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine)
    first, second = answered(ex.create_orders([buy("d2", "1"), sell("d2", "3")]))
    assert first.status == "filled"
    assert (second.status, second.error) == ("rejected", DUPLICATE)
    assert ex.positions() == {BTC: D(1)}


def test_cancel_of_unseen_id_tombstones_it_and_a_late_order_is_refused(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine)
    tombstone = ex.cancel_order("late1")
    assert tombstone.status == "cancelled"
    assert (tombstone.filled, tombstone.average, tombstone.fee_usd) == (D(0), None, D(0))
    row = row_of(engine, "late1")
    assert row is not None and row["quantity"] is None and row["symbol"] is None
    [late] = answered(ex.create_orders([buy("late1", "1")]))
    assert (late.status, late.error) == ("rejected", DUPLICATE)
    assert ex.fetch_orders(["late1"])["late1"] == tombstone
    assert ex.positions() == {}


def test_cancel_of_a_done_order_returns_it_as_is(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine)
    [filled] = answered(ex.create_orders([buy("c1", "1")]))
    before = row_of(engine, "c1")
    assert ex.cancel_order("c1") == filled
    assert row_of(engine, "c1") == before


@pytest.mark.parametrize(("filled", "status"), [("0", "cancelled"), ("0.4", "partially_filled")])
def test_cancel_of_an_open_order_ends_it(engine: Engine, filled: str, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO paper_orders (exchange, client_order_id, symbol, side, quantity, "
                "status, filled_quantity, avg_price) VALUES ('binance', 'o1', :s, 'buy', 1, "
                "'open', CAST(:f AS numeric), CASE WHEN :f = '0' THEN NULL ELSE 100 END)"
            ),
            {"s": BTC, "f": filled},
        )
    ex = venue(engine)
    assert ex.fetch_orders(["o1"])["o1"] is not None
    assert not ex.fetch_orders(["o1"])["o1"].done  # type: ignore[union-attr]
    state = ex.cancel_order("o1")
    assert (state.status, state.filled, state.done) == (status, D(filled), True)


# -- answers survive a restart ------------------------------------------------------


def test_fetch_orders_answers_from_the_table_after_a_restart(engine: Engine, db_url: URL) -> None:
    put_quote(engine)
    states = answered(venue(engine).create_orders([buy("r1", "1"), sell("r2", "0.5", ETH)]))
    other = engine_for(db_url)
    try:
        fetched = venue(other).fetch_orders(["r1", "r2", "never"])
    finally:
        other.dispose()
    assert fetched == {"r1": states[0], "r2": states[1], "never": None}
    assert states[0].status == "filled"
    assert states[1].status == "rejected"  # no ETH quote: the refusal is recorded too


# -- reduce-only ---------------------------------------------------------------------


def test_reduce_only_without_a_position_is_refused(engine: Engine) -> None:
    put_quote(engine)
    [state] = answered(venue(engine).create_orders([sell("ro1", "1", reduce_only=True)]))
    assert state.status == "rejected"
    assert state.error is not None and "no position" in state.error


def test_reduce_only_is_refused_when_it_would_increase_or_flip_and_fills_when_it_reduces(
    engine: Engine,
) -> None:
    put_quote(engine)
    ex = venue(engine)
    answered(ex.create_orders([buy("open1", "1")]))
    increase, flip, reduce = answered(
        ex.create_orders(
            [
                buy("ro1", "0.5", reduce_only=True),
                sell("ro2", "1.5", reduce_only=True),
                sell("ro3", "0.4", reduce_only=True),
            ]
        )
    )
    assert increase.status == "rejected" and "increase" in (increase.error or "")
    assert flip.status == "rejected" and "flip" in (flip.error or "")
    assert (reduce.status, reduce.filled) == ("filled", D("0.4"))
    assert ex.positions() == {BTC: D("0.6")}


def test_reduce_only_orders_in_one_batch_see_each_others_fills(engine: Engine) -> None:
    put_quote(engine)
    put_quote(engine, ETH, "10", "11")
    ex = venue(engine)
    answered(ex.create_orders([buy("open1", "0.6")]))
    first, second, opened, closed = answered(
        ex.create_orders(
            [
                sell("ro1", "0.4", reduce_only=True),
                sell("ro2", "0.4", reduce_only=True),  # only 0.2 left: would flip
                buy("e1", "3", ETH),
                sell("ro3", "3", ETH, reduce_only=True),  # closes what e1 just opened
            ]
        )
    )
    assert first.status == "filled"
    assert second.status == "rejected" and "flip" in (second.error or "")
    assert (opened.status, closed.status) == ("filled", "filled")
    assert ex.positions() == {BTC: D("0.2")}


def test_reduce_only_check_ignores_a_duplicate_that_will_not_fill(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine)
    answered(ex.create_orders([buy("x1", "1")]))
    dup, unwind = answered(ex.create_orders([buy("x1", "5"), sell("ro1", "3", reduce_only=True)]))
    assert dup.error == DUPLICATE
    assert unwind.status == "rejected" and "flip" in (unwind.error or "")
    assert ex.positions() == {BTC: D(1)}


def test_concurrent_reduce_only_orders_cannot_both_close_one_position(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_quote(engine)
    ex = venue(engine)
    answered(ex.create_orders([buy("open1", "1")]))
    real_precheck = paper_sql.paper_order_precheck

    def slow_precheck(*args: Any) -> tuple[dict[str, Decimal], set[str]]:
        found = real_precheck(*args)
        time.sleep(0.05)  # widen the window between the position read and the insert
        return found

    monkeypatch.setattr(paper_sql, "paper_order_precheck", slow_precheck)
    start = threading.Barrier(6)

    def unwind(n: int) -> OrderState | None:
        start.wait()
        return ex.create_orders([sell(f"ro{n}", "1", reduce_only=True)])[0]

    with ThreadPoolExecutor(6) as pool:
        states = [s for s in pool.map(unwind, range(6)) if s is not None]
    assert sorted(s.status for s in states) == ["filled"] + ["rejected"] * 5
    assert ex.positions() == {}


# -- market data --------------------------------------------------------------------


def test_missing_market_data_is_refused_and_recorded(engine: Engine) -> None:
    put_quote(engine, ETH, exchange="okx")  # another exchange's quote does not count
    ex = venue(engine)
    [state] = answered(ex.create_orders([buy("m1", "1", ETH)]))
    assert state.status == "rejected"
    assert state.error == f"no market data for {ETH} on binance"
    assert ex.fetch_orders(["m1"])["m1"] == state


def test_stale_market_data_is_refused(engine: Engine) -> None:
    put_quote(engine, observed_at=NOW - timedelta(seconds=61))
    put_quote(engine, ETH, "10", "11", observed_at=NOW - timedelta(seconds=59))
    stale, fresh = answered(
        venue(engine, max_snapshot_age_s=60).create_orders([buy("m1", "1"), buy("m2", "1", ETH)])
    )
    assert stale.status == "rejected" and "stale" in (stale.error or "")
    assert fresh.status == "filled"


# -- expiry (recvWindow / expTime) -----------------------------------------------------


def test_order_arriving_by_its_expiry_is_accepted(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine)
    just, early = answered(
        ex.create_orders(
            [
                OrderRequest("e1", BTC, "buy", D(1), expires_at=NOW),  # arrives at NOW exactly
                OrderRequest("e2", BTC, "sell", D(1), expires_at=NOW + timedelta(seconds=15)),
            ]
        )
    )
    assert (just.status, early.status) == ("filled", "filled")


def test_order_arriving_after_its_expiry_is_refused_unrecorded_and_the_error_names_it(
    engine: Engine,
) -> None:
    put_quote(engine)
    ex = venue(engine)
    expiry = NOW - timedelta(milliseconds=1500)
    late, on_time = answered(
        ex.create_orders(
            [
                OrderRequest("x1", BTC, "buy", D(1), expires_at=expiry),
                OrderRequest("x2", BTC, "buy", D(1), expires_at=NOW + timedelta(seconds=1)),
            ]
        )
    )
    assert late.status == "rejected" and late.done
    assert late.error is not None and late.error.startswith(EXPIRED)
    assert expiry.isoformat() in late.error and "1.500s" in late.error
    assert (late.filled, late.average, late.fee_usd) == (D(0), None, D(0))
    assert on_time.status == "filled"
    # A gateway refusal: no order exists and the id is not used up (as on binance and okx).
    assert ex.fetch_orders(["x1"]) == {"x1": None} and row_of(engine, "x1") is None
    assert ex.positions() == {BTC: D(1)}
    [fresh] = answered(ex.create_orders([buy("x1", "1")]))
    assert fresh.status == "filled"


def test_expiry_is_judged_when_the_order_arrives_after_the_latency_sleep(engine: Engine) -> None:
    put_quote(engine)
    config = PaperConfig(latency_ms=20.0)
    delay = latency_seconds(config, "binance", ["s1"])
    assert delay > 0
    slept = [0.0]
    ex = PaperExchange(
        "binance",
        engine,
        config,
        clock=lambda: NOW + timedelta(seconds=slept[0]),
        sleep=lambda s: slept.__setitem__(0, slept[0] + s),
    )
    # in time when it left (NOW), late once the latency is added
    expires_at = NOW + timedelta(seconds=delay / 2)
    [state] = answered(
        ex.create_orders([OrderRequest("s1", BTC, "buy", D(1), expires_at=expires_at)])
    )
    assert slept[0] == delay
    assert state.error is not None and state.error.startswith(EXPIRED)


def test_expired_order_is_refused_before_the_duplicate_check_and_in_reduce_only_batches(
    engine: Engine,
) -> None:
    put_quote(engine)
    ex = venue(engine)
    ex.cancel_order("t1")  # tombstoned
    answered(ex.create_orders([buy("open1", "1")]))
    gone = NOW - timedelta(seconds=1)
    late_copy, late_unwind, unwind = answered(
        ex.create_orders(
            [
                OrderRequest("t1", BTC, "buy", D(1), expires_at=gone),
                OrderRequest("ro1", BTC, "sell", D("0.5"), reduce_only=True, expires_at=gone),
                OrderRequest("ro2", BTC, "sell", D("0.5"), reduce_only=True, expires_at=NOW),
            ]
        )
    )
    assert late_copy.error is not None and late_copy.error.startswith(EXPIRED)
    assert late_unwind.error is not None and late_unwind.error.startswith(EXPIRED)
    assert unwind.status == "filled"
    assert ex.fetch_orders(["ro1"]) == {"ro1": None}
    assert ex.positions() == {BTC: D("0.5")}


def test_expired_order_whose_answer_times_out_still_leaves_nothing(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine, faults={"t1": "timeout_filled"})
    gone = NOW - timedelta(seconds=1)
    assert ex.create_orders([OrderRequest("t1", BTC, "buy", D(1), expires_at=gone)]) == [None]
    assert ex.fetch_orders(["t1"]) == {"t1": None}
    assert ex.positions() == {}


# -- faults ---------------------------------------------------------------------------


def test_fault_reject_refuses_only_that_order(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine, faults={"f1": "reject"})
    rejected, filled = answered(ex.create_orders([buy("f1", "1"), buy("f2", "1")]))
    assert (rejected.status, rejected.error) == ("rejected", SIMULATED_REJECTION)
    assert filled.status == "filled"
    assert ex.fetch_orders(["f1"])["f1"] == rejected


def test_fault_timeout_filled_gives_no_answer_but_the_order_filled(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine, faults={"t1": "timeout_filled"})
    assert ex.create_orders([buy("t1", "2")]) == [None]
    state = ex.fetch_orders(["t1"])["t1"]
    assert state is not None and (state.status, state.filled) == ("filled", D(2))
    assert ex.positions() == {BTC: D(2)}
    assert ex.cancel_order("t1") == state  # too late to cancel a fill


def test_fault_timeout_lost_gives_no_answer_and_records_nothing(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine, faults={"t1": "timeout_lost"})
    answers = ex.create_orders([buy("t1", "2"), buy("t2", "1")])
    assert answers[0] is None
    assert answers[1] is not None and answers[1].status == "filled"
    assert ex.fetch_orders(["t1"]) == {"t1": None}
    assert row_of(engine, "t1") is None
    assert ex.positions() == {BTC: D(1)}
    # Recovery: cancel tombstones the id, so the lost order can never fill later.
    assert ex.cancel_order("t1").status == "cancelled"
    [late] = answered(venue(engine).create_orders([buy("t1", "2")]))
    assert (late.status, late.error) == ("rejected", DUPLICATE)
    assert ex.positions() == {BTC: D(1)}


def test_fault_partial_fills_the_fraction_and_cancels_the_rest(engine: Engine) -> None:
    put_quote(engine, bid="100", ask="100")
    ex = venue(engine, faults={"p1": "partial:0.25"}, impact_bps_per_100k_usd=D(0))
    [state] = answered(ex.create_orders([sell("p1", "2")]))
    assert (state.status, state.filled, state.average) == ("partially_filled", D("0.5"), D(100))
    assert state.done
    assert state.fee_usd == D("0.025")  # on the filled half only
    assert ex.positions() == {BTC: D("-0.5")}


def test_fault_fill_overrides_random_rates(engine: Engine) -> None:
    put_quote(engine)
    ex = venue(engine, reject_rate=1.0, timeout_rate=1.0, faults={"ok": "fill"})
    forced, other = ex.create_orders([buy("ok", "1"), buy("other", "1")])
    assert forced is not None and forced.status == "filled"
    assert other is None  # timed out: placed or lost, never answered


def test_partial_fill_rate_fills_a_seeded_fraction_between_20_and_90_percent(
    engine: Engine,
) -> None:
    put_quote(engine)
    ex = venue(engine, partial_fill_rate=1.0)
    states = answered(ex.create_orders([buy(f"p{i}", "1") for i in range(20)]))
    assert {s.status for s in states} == {"partially_filled"}
    assert all(D("0.2") <= s.filled <= D("0.9") for s in states)
    assert len({s.filled for s in states}) > 10


def test_reject_rate_one_rejects_every_order(engine: Engine) -> None:
    put_quote(engine)
    states = answered(venue(engine, reject_rate=1.0).create_orders([buy("a", "1"), buy("b", "1")]))
    assert [s.error for s in states] == [SIMULATED_REJECTION, SIMULATED_REJECTION]


# -- reproducibility ---------------------------------------------------------------------

RATES: dict[str, Any] = {"reject_rate": 0.3, "timeout_rate": 0.3, "partial_fill_rate": 0.3}
IDS = [f"pb{n}L0A1" for n in range(60)]


def _outcomes(ex: PaperExchange, batches: list[list[str]]) -> dict[str, Any]:
    answers: dict[str, OrderState | None] = {}
    for batch in batches:
        answers.update(zip(batch, ex.create_orders([buy(c, "1") for c in batch]), strict=True))
    fetched = ex.fetch_orders(IDS)
    return {
        c: (
            None if answers[c] is None else answers[c].status,  # type: ignore[union-attr]
            None if fetched[c] is None else (fetched[c].status, fetched[c].filled),  # type: ignore[union-attr]
        )
        for c in IDS
    }


def _wipe(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM paper_orders"))


def test_same_seed_gives_same_outcomes_whatever_the_batching_and_order(engine: Engine) -> None:
    put_quote(engine)
    first = _outcomes(venue(engine, seed=7, **RATES), [IDS])
    _wipe(engine)
    backwards = list(reversed(IDS))
    second = _outcomes(
        venue(engine, seed=7, **RATES), [backwards[:7], backwards[7:30], backwards[30:]]
    )
    assert first == second
    answers = {answer for answer, _ in first.values()}
    assert {None, "rejected", "partially_filled", "filled"} <= answers
    # Timed-out orders split into placed (fetchable) and lost (never seen).
    timed_out = [fetched for answer, fetched in first.values() if answer is None]
    assert None in timed_out and any(f is not None for f in timed_out)
    _wipe(engine)
    assert _outcomes(venue(engine, seed=8, **RATES), [IDS]) != first


def test_draws_are_a_pinned_function_of_seed_exchange_and_id() -> None:
    # Not Python's salted hash() nor a shared RNG: the same in every process.
    d = draws_for(7, "binance", "pb1L0A1")
    assert (d.reject, d.fraction) == (0.06371120124001377, D("0.430156"))
    assert draws_for(7, "binance", "pb1L0A1") == d
    assert draws_for(8, "binance", "pb1L0A1") != d
    assert draws_for(7, "okx", "pb1L0A1") != d


# -- latency -------------------------------------------------------------------------------


def test_latency_sleeps_once_per_call_with_seeded_jitter(engine: Engine) -> None:
    put_quote(engine)
    slept: list[float] = []
    ex = PaperExchange(
        "binance", engine, PaperConfig(latency_ms=20.0), clock=lambda: NOW, sleep=slept.append
    )
    ex.create_orders([buy(f"l{i}", "1") for i in range(5)])
    ex.create_orders([buy(f"l{i}", "1") for i in range(5)])  # duplicates now, same jitter
    ex.create_orders([buy("m1", "1")])
    assert len(slept) == 3
    assert all(0.010 <= s < 0.030 for s in slept)
    assert slept[0] == slept[1] != slept[2]


def test_zero_latency_never_sleeps(engine: Engine) -> None:
    put_quote(engine)
    slept: list[float] = []
    ex = PaperExchange(
        "binance", engine, PaperConfig(latency_ms=0.0), clock=lambda: NOW, sleep=slept.append
    )
    ex.create_orders([buy("z1", "1")])
    ex.create_orders([])
    assert slept == []


# -- round trips and failures ---------------------------------------------------------------


def test_a_batch_is_one_quote_read_and_one_insert(engine: Engine, statements: list[str]) -> None:
    put_quote(engine)
    put_quote(engine, ETH, "10", "11")
    ex = venue(engine)
    statements.clear()
    orders = [buy(f"b{i}", "0.01", BTC if i % 2 else ETH) for i in range(200)]
    states = answered(ex.create_orders(orders))
    assert {s.status for s in states} == {"filled"}
    assert len(statements) == 2
    assert "market_snapshots" in statements[0]
    assert statements[1].lstrip().startswith("INSERT INTO paper_orders")
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT client_order_id FROM paper_orders ORDER BY id")).scalars()
        assert list(ids) == [o.client_order_id for o in orders]  # ids follow the batch


def test_a_reduce_only_batch_adds_a_lock_and_one_position_read(
    engine: Engine, statements: list[str]
) -> None:
    put_quote(engine)
    ex = venue(engine)
    answered(ex.create_orders([buy("o1", "1")]))
    statements.clear()
    answered(ex.create_orders([sell("ro1", "1", reduce_only=True), buy("o2", "1")]))
    assert len(statements) == 4
    assert "pg_advisory_xact_lock" in statements[0]
    assert statements[3].lstrip().startswith("INSERT INTO paper_orders")


def test_unreachable_database_raises_exchange_unavailable(db_url: URL) -> None:
    dead = engine_for(db_url.set(host="127.0.0.1", port=1))
    try:
        ex = venue(dead)
        with pytest.raises(ExchangeUnavailable):
            ex.create_orders([buy("u1", "1")])
        with pytest.raises(ExchangeUnavailable):
            ex.fetch_orders(["u1"])
        with pytest.raises(ExchangeUnavailable):
            ex.cancel_order("u1")
    finally:
        dead.dispose()


def test_failure_after_the_insert_was_sent_answers_none_not_an_error(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_quote(engine)
    real_insert = paper_sql.paper_order_insert_batch

    def insert_then_drop(*args: Any) -> dict[str, int]:
        real_insert(*args)
        raise OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(paper_sql, "paper_order_insert_batch", insert_then_drop)
    ex = venue(engine)
    assert ex.create_orders([buy("a1", "1"), buy("a2", "1")]) == [None, None]
    monkeypatch.undo()
    fetched = ex.fetch_orders(["a1", "a2"])
    assert all(s is not None and s.status == "filled" for s in fetched.values())


# -- the account -----------------------------------------------------------------------------


def test_positions_and_balance_follow_fills_with_average_cost(engine: Engine) -> None:
    put_quote(engine, bid="100", ask="101")
    ex = venue(engine, impact_bps_per_100k_usd=D(0), taker_fee_bps=D(5))
    assert ex.balance() == D("50000.00000000")  # binance's starting equity
    answered(ex.create_orders([buy("a1", "2")]))  # 2 @ 101, fee 0.101
    put_quote(engine, bid="110", ask="111", observed_at=NOW + timedelta(seconds=1))
    answered(ex.create_orders([sell("a2", "1")]))  # 1 @ 110: +9, fee 0.055
    assert ex.positions() == {BTC: D(1)}
    assert ex.balance() == D("50008.844")  # unrealized PnL of the open unit left out
    answered(ex.create_orders([sell("a3", "1", reduce_only=True)]))  # +9, fee 0.055
    assert ex.positions() == {}  # flat symbols are left out
    # Flat: the balance is the cash effect, sells - buys - fees.
    assert ex.balance() == D(50000) + D(220) - D(202) - D("0.211")


def test_balance_of_an_exchange_not_in_the_table_is_an_error(engine: Engine) -> None:
    with pytest.raises(ExchangeError, match="kraken"):
        venue(engine, "kraken").balance()


def test_realized_pnl_handles_a_flip_through_flat() -> None:
    fills = [
        Fill(BTC, "buy", D(1), D(100)),
        Fill(BTC, "sell", D(3), D(110)),  # closes 1 for +10, opens -2 at 110
        Fill(BTC, "buy", D(1), D(100)),  # closes 1 short for +10
        Fill(ETH, "buy", D(2), D(10)),
        Fill(ETH, "buy", D(2), D(20)),  # entry 15
        Fill(ETH, "sell", D(1), D(12)),  # -3
    ]
    assert realized_pnl(fills) == D(17)
