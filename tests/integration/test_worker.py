"""Workers against PostgreSQL and the paper exchange: every leg-failure shape, leases,
recovery, protections.  Faults are forced per client order id (``pb<job>L<leg>A<n>``)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from perpbot_db.services import audit, control, tick
from perpbot_db.settings import Settings
from perpbot_db.store import attempts, system
from perpbot_db.store import workers as worker_store
from tests.builders import (
    HANG_S,
    active_reserved,
    admitted,
    claim,
    config,
    expire_leases,
    job,
    statuses,
    submit,
    work,
)
from workers.executor import ExecConfig, Executor, order_request
from workers.recovery import Recovery
from workers.venues.adapters import build_adapters, paper_config
from workers.venues.exchange import ExchangeAdapter, ExchangeUnavailable, OrderRequest, OrderState
from workers.venues.paper import PaperExchange
from workers.worker import Worker


def legs(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT leg_index, attempt, exchange, side, quantity, status, filled_quantity, "
                "reduce_only, unwinds_leg_id, client_order_id, realized_pnl_usd, booked_at "
                "FROM legs WHERE job_id = :j ORDER BY attempt, leg_index"
            ),
            {"j": job_id},
        ).mappings()
        return [dict(r) for r in rows]


def job_row(engine: Engine, job_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT status, decision_code, unhedged, attempts, result, worker_id, "
                "run_after > now() AS backing_off, finished_at FROM hedge_jobs WHERE id = :j"
            ),
            {"j": job_id},
        ).mappings()
        return dict(row.one())


def events(engine: Engine, job_id: int) -> list[tuple[str | None, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT from_status, to_status FROM job_events WHERE job_id = :j ORDER BY id"),
            {"j": job_id},
        ).all()
    return [(a, b) for a, b in rows]


def paper(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT client_order_id, exchange, side, status, filled_quantity FROM paper_orders"
            )
        ).mappings()
        return {r["client_order_id"]: dict(r) for r in rows}


def counters(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM daily_counters")).mappings()
        return {r["scope"]: dict(r) for r in rows}


def net(rows: list[dict[str, Any]]) -> Decimal:
    return sum((r["filled_quantity"] * (1 if r["side"] == "buy" else -1) for r in rows), Decimal(0))


def coid(job_id: int, leg: int, attempt: int = 1) -> str:
    return f"pb{job_id}L{leg}A{attempt}"


# -- the happy path ---------------------------------------------------------------------


def test_both_legs_fill_job_completes_capital_released_counters_booked(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    worker = work(engine, fast)
    assert worker.tally.completed == 1 and worker.tally.claimed == 1
    row = job_row(engine, j)
    assert row["status"] == "completed" and row["decision_code"] == "filled"
    assert row["worker_id"] == worker.identity and not row["unhedged"]
    assert events(engine, j) == [
        (None, "pending"),
        ("pending", "admitted"),
        ("admitted", "running"),
        ("running", "completed"),
    ]
    rows = legs(engine, j)
    assert [r["status"] for r in rows] == ["filled", "filled"]
    assert all(r["booked_at"] is not None for r in rows) and net(rows) == 0
    assert active_reserved(engine) == {}
    c = counters(engine)
    assert c["global"]["jobs_completed"] == 1 and c["global"]["jobs_failed"] == 0
    assert c["binance"]["jobs_completed"] == 1 and c["okx"]["jobs_completed"] == 1
    pnl = sum((r["realized_pnl_usd"] for r in rows), Decimal(0))
    assert c["global"]["realized_pnl_usd"] == pnl < 0  # a flat hedge at one price: fees only
    assert c["global"]["fees_usd"] > 0
    assert c["global"]["volume_usd"] == c["binance"]["volume_usd"] + c["okx"]["volume_usd"]
    assert set(paper(engine)) == {coid(j, 0), coid(j, 1)}


# -- leg-failure shapes -------------------------------------------------------------


@pytest.mark.parametrize("failing, surviving", [(0, 1), (1, 0)])
def test_one_leg_rejected_after_twin_filled_twin_is_unwound_reduce_only(
    engine: Engine, fast: Settings, failing: int, surviving: int
) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {coid(j, failing): "reject"})
    row = job_row(engine, j)
    assert row["status"] == "failed" and row["decision_code"] == "leg_failed_unwound"
    assert not row["unhedged"]
    rows = legs(engine, j)
    unwind = [r for r in rows if r["reduce_only"]]
    assert len(unwind) == 1
    [u] = unwind
    twin = next(r for r in rows if r["leg_index"] == surviving)
    assert u["exchange"] == twin["exchange"] and u["side"] != twin["side"]
    assert u["quantity"] == twin["filled_quantity"] == Decimal("0.01")
    assert u["client_order_id"] == coid(j, 100 + surviving) and u["status"] == "filled"
    assert net(rows) == 0
    assert paper(engine)[coid(j, failing)]["status"] == "rejected"
    assert active_reserved(engine) == {}
    assert counters(engine)["global"]["jobs_failed"] == 1


def test_both_legs_rejected_goes_back_to_pending_with_backoff_and_new_client_ids(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {coid(j, 0): "reject", coid(j, 1): "reject"})
    row = job_row(engine, j)
    assert row["status"] == "pending" and row["decision_code"] == "nothing_filled"
    assert row["backing_off"] and row["finished_at"] is None and row["attempts"] == 1
    assert events(engine, j)[-2:] == [("running", "failed"), ("failed", "pending")]
    rows = legs(engine, j)
    assert [(r["attempt"], r["status"]) for r in rows] == [
        (1, "rejected"),
        (1, "rejected"),
        (2, "pending"),
        (2, "pending"),
    ]
    assert {r["client_order_id"] for r in rows if r["attempt"] == 2} == {
        coid(j, 0, 2),
        coid(j, 1, 2),
    }
    assert active_reserved(engine) == {}
    assert counters(engine)["global"]["jobs_failed"] == 1

    # after the backoff the retry is admitted again and sent with the attempt-2 ids
    with engine.begin() as conn:
        conn.execute(text("UPDATE hedge_jobs SET run_after = now() WHERE id = :j"), {"j": j})
    assert tick.run_tick(engine, config()).admitted == [j]
    work(engine, fast)
    row = job_row(engine, j)
    assert row["status"] == "completed" and row["attempts"] == 2
    assert {coid(j, 0, 2), coid(j, 1, 2)} <= set(paper(engine))


def test_last_attempt_with_nothing_filled_fails_for_good(engine: Engine, fast: Settings) -> None:
    [j] = admitted(engine, fast)
    with engine.begin() as conn:
        conn.execute(text("UPDATE hedge_jobs SET max_attempts = 1 WHERE id = :j"), {"j": j})
    work(engine, fast, {coid(j, 0): "reject", coid(j, 1): "reject"})
    row = job_row(engine, j)
    assert row["status"] == "failed" and row["decision_code"] == "nothing_filled"
    assert [r["attempt"] for r in legs(engine, j)] == [1, 1]


def test_partial_fill_is_hedged_down_to_the_filled_quantity(engine: Engine, fast: Settings) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {coid(j, 1): "partial:0.4"})
    row = job_row(engine, j)
    assert row["status"] == "completed" and row["decision_code"] == "partial_fill_hedged"
    rows = legs(engine, j)
    [u] = [r for r in rows if r["reduce_only"]]
    assert u["exchange"] == "binance" and u["side"] == "sell"
    assert u["quantity"] == Decimal("0.006") and u["filled_quantity"] == Decimal("0.006")
    assert net(rows) == 0


def test_timeout_with_the_order_actually_filled_is_found_by_client_id_and_kept(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {coid(j, 0): "timeout_filled"})
    row = job_row(engine, j)
    assert row["status"] == "completed" and row["decision_code"] == "filled"
    rows = legs(engine, j)
    assert not any(r["reduce_only"] for r in rows)  # no blind resend, no needless unwind
    assert [r["status"] for r in rows] == ["filled", "filled"]
    assert len(paper(engine)) == 2


def test_timeout_lost_order_is_tombstoned_and_the_twin_unwound(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {coid(j, 0): "timeout_lost"})
    row = job_row(engine, j)
    assert row["status"] == "failed" and row["decision_code"] == "leg_failed_unwound"
    book = paper(engine)
    assert book[coid(j, 0)]["status"] == "cancelled"  # tombstone: a late copy is refused
    assert book[coid(j, 101)]["status"] == "filled"
    assert net(legs(engine, j)) == 0


def test_failed_unwind_leaves_job_failed_unhedged_and_exchange_in_safe_mode(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    work(engine, fast, {coid(j, 0): "reject", coid(j, 101): "reject"})
    row = job_row(engine, j)
    assert row["status"] == "failed" and row["unhedged"] and row["decision_code"] == "unhedged"
    assert net(legs(engine, j)) == Decimal("-0.01")  # short on okx, visible
    assert active_reserved(engine) == {}
    with engine.connect() as conn:
        safe = dict(conn.execute(text("SELECT name, safe_mode FROM exchanges")).all())
        actions = list(conn.execute(text("SELECT action FROM control_events")).scalars())
    assert safe["okx"] and not safe["binance"]
    assert "safe_mode_entered" in actions


# -- leases and recovery ----------------------------------------------------------------


def test_worker_that_died_after_sending_is_reconciled_by_client_order_id(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    [claimed] = claim(engine, "worker:dead")
    adapters = build_adapters(engine, fast)
    adapters["binance"].create_orders([order_request(claimed.legs[0])])  # one leg got out
    expire_leases(engine)
    recovery = Recovery(engine, fast, adapters)
    report = recovery.run_once()
    recovery.close()
    assert report.recovered == [j]
    row = job_row(engine, j)
    # binance filled (found by id), okx never arrived (tombstoned), binance unwound
    assert row["status"] == "failed" and row["decision_code"] == "leg_failed_unwound"
    assert row["worker_id"].startswith("recovery:")
    book = paper(engine)
    assert book[coid(j, 1)]["status"] == "cancelled" and book[coid(j, 100)]["status"] == "filled"
    assert net(legs(engine, j)) == 0 and active_reserved(engine) == {}
    with engine.connect() as conn:
        actions = list(conn.execute(text("SELECT action FROM control_events")).scalars())
    assert "lease_recovered" in actions


def test_worker_that_lost_its_lease_writes_nothing_over_the_recovered_result(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    jobs = claim(engine, "worker:slow")
    expire_leases(engine)
    adapters = build_adapters(engine, fast)
    recovery = Recovery(engine, fast, adapters)
    recovery.run_once()  # nothing was sent: both ids tombstoned, the job goes back to pending
    recovery.close()
    after_recovery = job_row(engine, j)
    assert after_recovery["status"] == "pending"
    counted = counters(engine)

    slow = Executor(engine, adapters, "worker:slow", ExecConfig())
    report = slow.run(jobs, send=True)  # wakes up: its fence finds the job gone, sends nothing
    slow.close()
    assert report.lost == [j] and not report.finished
    assert job_row(engine, j) == after_recovery
    assert counters(engine) == counted
    assert all(o["filled_quantity"] == 0 for o in paper(engine).values())


def test_heartbeat_renews_only_this_workers_leases(engine: Engine, fast: Settings) -> None:
    admitted(engine, fast, 2)
    claim(engine, "worker:a", limit=1)
    claim(engine, "worker:b", limit=1)
    expire_leases(engine)
    with engine.begin() as conn:
        renewed = worker_store.heartbeat(conn, worker_id="worker:a", lease_s=30)
        expired = conn.execute(
            text("SELECT worker_id FROM hedge_jobs WHERE lease_expires_at < now()")
        ).scalars()
        assert renewed == 1 and list(expired) == ["worker:b"]


def test_handed_back_jobs_are_not_renewed_by_the_heartbeat_and_go_to_recovery(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    claim(engine, "worker:a")
    with engine.begin() as conn:
        assert attempts.hand_back(conn, worker_id="worker:a", job_ids=[j]) == 1
        assert worker_store.heartbeat(conn, worker_id="worker:a", lease_s=30) == 0
        owner, expired = conn.execute(
            text("SELECT worker_id, lease_expires_at < now() FROM hedge_jobs WHERE id = :j"),
            {"j": j},
        ).one()
    assert owner == "worker:a:handed-back" and expired
    recovery = Recovery(engine, fast, build_adapters(engine, fast))
    assert recovery.run_once().recovered == [j]
    recovery.close()
    assert job_row(engine, j)["status"] == "pending"  # nothing was sent: retried


# -- protections --------------------------------------------------------------------


def test_daily_loss_limit_reached_by_a_worker_halts_and_stops_claims(
    engine: Engine, fast: Settings
) -> None:
    ids = admitted(engine, fast, 3)
    with engine.begin() as conn:  # lowered after admission (its loss budget would hold them)
        conn.execute(text("UPDATE system_state SET daily_loss_limit_usd = 0.5"))
    worker = work(engine, fast, concurrency=1)
    assert worker.tally.claimed == 1  # a job loses ~1 USD in fees: halted after the first
    assert worker.tally.halted and "daily loss limit" in worker.tally.halted[0]
    state = control_state(engine)
    assert state.status == "halted" and "daily loss limit" in (state.halt_reason or "")
    assert sorted(statuses(engine).values()) == ["admitted", "admitted", "completed"]
    assert len(ids) == 3


def control_state(engine: Engine) -> system.SystemState:
    with engine.connect() as conn:
        return system.get(conn)


def test_consecutive_failures_halt_the_system(engine: Engine, fast: Settings) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE system_state SET max_consecutive_failures = 2"))
    ids = admitted(engine, fast, 2)
    faults = {coid(j, leg): "reject" for j in ids for leg in (0, 1)}
    work(engine, fast, faults, concurrency=2)
    state = control_state(engine)
    assert state.status == "halted" and state.consecutive_failures == 2
    assert "consecutive failures" in (state.halt_reason or "")


def test_a_success_resets_the_failure_streaks(engine: Engine, fast: Settings) -> None:
    [a] = admitted(engine, fast)
    work(engine, fast, {coid(a, 0): "reject", coid(a, 1): "reject"})
    with engine.connect() as conn:
        assert system.get(conn).consecutive_failures == 1
    submit(engine, fast, [job(99)])
    tick.run_tick(engine, config())
    work(engine, fast)
    with engine.connect() as conn:
        assert system.get(conn).consecutive_failures == 0
        streaks = dict(conn.execute(text("SELECT name, consecutive_failures FROM exchanges")).all())
    assert streaks["binance"] == 0 and streaks["okx"] == 0


def test_paused_system_claims_nothing(engine: Engine, fast: Settings) -> None:
    [j] = admitted(engine, fast)
    control.pause(engine, actor="ops", reason="maintenance")
    assert work(engine, fast).tally.claimed == 0
    assert statuses(engine) == {j: "admitted"}
    control.resume(engine, actor="ops", reason="done")
    assert work(engine, fast).tally.completed == 1


def test_stop_mid_batch_finishes_the_batch_in_hand_and_claims_no_more(
    engine: Engine, settings: Settings
) -> None:
    first, second = admitted(engine, settings, n=2)
    at_venue, release = threading.Event(), threading.Event()

    def held_at_the_venue(_: float) -> None:  # the paper venue's latency, held by the test
        at_venue.set()
        assert release.wait(HANG_S)

    adapters = {
        name: PaperExchange(name, engine, paper_config(settings), sleep=held_at_the_venue)
        for name in settings.exchanges
    }
    worker = Worker(engine, settings, adapters, concurrency=1)
    runner = threading.Thread(target=worker.run)
    runner.start()
    assert at_venue.wait(HANG_S)  # one job claimed, its orders on their way
    worker.stop()  # what SIGTERM does
    release.set()
    runner.join(HANG_S)
    assert not runner.is_alive()
    assert worker.tally.claimed == 1 and worker.tally.completed == 1
    assert sorted(statuses(engine).values()) == ["admitted", "completed"]
    assert {first, second} == set(statuses(engine))


# -- the send fence: a worker that lost its lease sends nothing ------------------------

#: What a test records of the requests that reached ``create_orders``: (who, request).
Sent = list[tuple[str, OrderRequest]]


class Spy:
    """An adapter that records every request handed to the venue, and its answer, then
    runs ``after`` (a pause, a recovery) once the venue has answered."""

    def __init__(
        self,
        inner: ExchangeAdapter,
        sent: Sent,
        who: str,
        after: Callable[[Sequence[OrderRequest]], None] | None = None,
    ) -> None:
        self.name = inner.name
        self.inner = inner
        self.sent = sent
        self.who = who
        self.after = after
        self.answers: dict[str, OrderState | None] = {}

    def create_orders(self, orders: Sequence[OrderRequest]) -> list[OrderState | None]:
        self.sent.extend((self.who, order) for order in orders)
        answers = self.inner.create_orders(orders)
        self.answers.update(zip((o.client_order_id for o in orders), answers, strict=True))
        if self.after is not None:
            self.after(orders)
        return answers

    def fetch_orders(self, client_order_ids: Sequence[str]) -> dict[str, OrderState | None]:
        return self.inner.fetch_orders(client_order_ids)

    def cancel_order(self, client_order_id: str) -> OrderState:
        return self.inner.cancel_order(client_order_id)

    def positions(self) -> dict[str, Decimal]:
        return self.inner.positions()

    def balance(self) -> Decimal:
        return self.inner.balance()


def spied(
    adapters: Mapping[str, ExchangeAdapter],
    sent: Sent,
    who: str,
    after: Callable[[Sequence[OrderRequest]], None] | None = None,
) -> dict[str, Spy]:
    return {name: Spy(adapter, sent, who, after) for name, adapter in adapters.items()}


def recover(engine: Engine, settings: Settings, adapters: Mapping[str, ExchangeAdapter]) -> Any:
    recovery = Recovery(engine, settings, adapters)
    try:
        return recovery.run_once()
    finally:
        recovery.close()


def breaches(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return audit.run_audit(conn, max_concurrent_jobs=1000)


def db_clock(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return system.db_now(conn)


def test_worker_paused_between_claim_and_send_sends_nothing_once_recovery_took_its_jobs(
    engine: Engine, fast: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = admitted(engine, fast, 2)  # two failed attempts: below the safe-mode streak
    sent: Sent = []
    zombie = Worker(
        engine, fast, spied(build_adapters(engine, fast), sent, "zombie"), identity="worker:z"
    )
    recovery_adapters = spied(build_adapters(engine, fast), sent, "recovery")
    real_run = zombie.executor.run
    seen: dict[str, Any] = {}

    def stopped_past_its_lease(jobs: Sequence[Any], *, send: bool) -> Any:
        # SIGSTOP after the claim, before the send, longer than the lease: recovery runs.
        expire_leases(engine)
        seen["recovered"] = recover(engine, fast, recovery_adapters).recovered
        seen["jobs"] = {j: job_row(engine, j) for j in ids}
        seen["counters"] = counters(engine)
        seen["book"] = paper(engine)
        seen["sent"] = list(sent)
        return real_run(jobs, send=send)  # SIGCONT

    monkeypatch.setattr(zombie.executor, "run", stopped_past_its_lease)
    report = zombie.claim()  # the worker's own claim statement, then the (paused) run
    zombie.executor.close()

    assert report is not None and seen["recovered"] == sorted(ids)
    assert sorted(report.lost) == sorted(ids)
    assert not report.finished and not report.handed_back
    # recovery asked and tombstoned (it sends no order of its own here); the zombie sent none
    assert sent == seen["sent"] == []
    assert paper(engine) == seen["book"]
    assert {o["status"] for o in seen["book"].values()} == {"cancelled"}
    assert {coid(j, leg) for j in ids for leg in (0, 1)} == set(seen["book"])
    # the jobs stay as recovery decided: nothing filled, retried later; nothing counted twice
    assert {j: job_row(engine, j) for j in ids} == seen["jobs"]
    assert {row["status"] for row in seen["jobs"].values()} == {"pending"}
    assert counters(engine) == seen["counters"]
    assert counters(engine)["global"]["jobs_failed"] == 2
    assert breaches(engine) == []

    # the retries go through a healthy worker with new client order ids
    with engine.begin() as conn:
        conn.execute(text("UPDATE hedge_jobs SET run_after = now()"))
    assert sorted(tick.run_tick(engine, config()).admitted) == sorted(ids)
    assert work(engine, fast).tally.completed == 2
    assert all(net(legs(engine, j)) == 0 for j in ids) and active_reserved(engine) == {}
    assert breaches(engine) == []


def paused_venues(
    engine: Engine, settings: Settings, pause: Callable[[], None]
) -> dict[str, ExchangeAdapter]:
    """Paper venues whose clock ``pause`` may move on, called from their latency sleep:
    the request left the worker and is on its way when the pause happens."""
    skew = [0.0]
    lock = threading.Lock()

    def clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=skew[0])

    def sleep(_: float) -> None:
        with lock:
            if not skew[0]:
                pause()
                skew[0] = settings.lease_s  # past any order's expiry (half the lease)

    venue_config = dataclasses.replace(paper_config(settings), latency_ms=1.0)
    return {
        name: PaperExchange(name, engine, venue_config, clock=clock, sleep=sleep)
        for name in sorted(settings.exchanges)
    }


def test_order_delayed_past_its_expiry_after_the_fence_is_refused_and_the_job_retried(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    sent: Sent = []
    adapters = spied(paused_venues(engine, fast, lambda: None), sent, "worker")
    worker = Worker(engine, fast, adapters)
    worker.run(once=True)
    answers = {c: a for spy in adapters.values() for c, a in spy.answers.items()}
    assert set(answers) == {coid(j, 0), coid(j, 1)}
    for answer in answers.values():
        assert answer is not None and answer.status == "rejected"
        assert answer.error is not None and answer.error.startswith("expired:")
    assert paper(engine) == {}  # refused at the gateway: no order, no position
    row = job_row(engine, j)
    assert row["status"] == "pending" and row["decision_code"] == "nothing_filled"
    assert [r["status"] for r in legs(engine, j) if r["attempt"] == 1] == ["rejected"] * 2
    assert worker.tally.retried == 1 and active_reserved(engine) == {}
    assert breaches(engine) == []


def test_order_delayed_until_recovery_took_the_job_is_refused_as_expired_not_as_a_duplicate(
    engine: Engine, fast: Settings
) -> None:
    """On a venue that forgets ids (binance) the tombstone would not stop the late order:
    its expiry does, and the paper venue checks it first, as a gateway does."""
    [j] = admitted(engine, fast)
    seen: dict[str, Any] = {}

    def stalled_in_flight() -> None:
        expire_leases(engine)
        seen["recovered"] = recover(engine, fast, build_adapters(engine, fast)).recovered
        seen["job"] = job_row(engine, j)
        seen["counters"] = counters(engine)
        seen["book"] = paper(engine)

    sent: Sent = []
    adapters = spied(paused_venues(engine, fast, stalled_in_flight), sent, "zombie")
    worker = Worker(engine, fast, adapters)
    worker.run(once=True)
    assert seen["recovered"] == [j]
    answers = {c: a for spy in adapters.values() for c, a in spy.answers.items()}
    assert all(
        a is not None and a.error is not None and a.error.startswith("expired:")
        for a in answers.values()
    ), answers
    assert worker.tally.lost == 1 and worker.tally.completed == worker.tally.retried == 0
    assert paper(engine) == seen["book"]  # recovery's tombstones, nothing else
    assert {o["status"] for o in seen["book"].values()} == {"cancelled"}
    assert job_row(engine, j) == seen["job"] and seen["job"]["status"] == "pending"
    assert counters(engine) == seen["counters"]
    assert breaches(engine) == []


def test_worker_whose_lease_ran_out_before_its_unwind_hands_the_job_back_and_recovery_unwinds(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    faults = {coid(j, 0): "reject"}  # binance refuses, okx fills: the okx leg must be unwound
    sent: Sent = []

    def stalled_after_the_answers(orders: Sequence[OrderRequest]) -> None:
        if not any(o.reduce_only for o in orders):
            expire_leases(engine)  # not recovered yet: the job is still the worker's

    adapters = build_adapters(engine, fast, faults=faults)
    worker = Worker(engine, fast, spied(adapters, sent, "worker", stalled_after_the_answers))
    worker.run(once=True)
    assert worker.tally.handed_back == 1 and worker.tally.lost == 0
    assert not [o for _, o in sent if o.reduce_only]  # the stalled worker sent no unwind
    assert job_row(engine, j)["worker_id"] == f"{worker.identity}:handed-back"
    assert [r["reduce_only"] for r in legs(engine, j)] == [False, False]

    report = recover(engine, fast, spied(adapters, sent, "recovery"))
    assert report.recovered == [j]
    unwinds = [(who, o) for who, o in sent if o.reduce_only]
    assert [(who, o.client_order_id) for who, o in unwinds] == [("recovery", coid(j, 101))]
    assert unwinds[0][1].expires_at is not None
    row = job_row(engine, j)
    assert row["status"] == "failed" and row["decision_code"] == "leg_failed_unwound"
    assert row["worker_id"].startswith("recovery:") and not row["unhedged"]
    assert net(legs(engine, j)) == 0 and active_reserved(engine) == {}
    assert breaches(engine) == []


def test_every_order_and_unwind_expires_one_window_after_its_fence(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)
    sent: Sent = []
    adapters = spied(build_adapters(engine, fast, faults={coid(j, 1): "reject"}), sent, "w")
    before = db_clock(engine)
    worker = Worker(engine, fast, adapters)
    worker.run(once=True)
    after = db_clock(engine)
    window = timedelta(seconds=min(fast.lease_s / 2, 60))
    expiry = {o.client_order_id: o.expires_at for _, o in sent}
    assert len(sent) == len(expiry) == 3
    legs_at, twin_at, unwind_at = (expiry[coid(j, n)] for n in (0, 1, 100))
    for at in (legs_at, twin_at, unwind_at):
        assert at is not None and before + window <= at <= after + window
    assert legs_at == twin_at  # one fence for the batch
    assert legs_at is not None and unwind_at is not None and unwind_at >= legs_at  # its own
    assert job_row(engine, j)["decision_code"] == "leg_failed_unwound"


def lease_of(engine: Engine, job_id: int) -> tuple[str, float]:
    with engine.connect() as conn:
        owner, left = conn.execute(
            text(
                "SELECT worker_id, extract(epoch FROM lease_expires_at - now())::float8 "
                "FROM hedge_jobs WHERE id = :j"
            ),
            {"j": job_id},
        ).one()
    return owner, left


def test_lease_fence_holds_hands_back_or_loses_by_owner_attempt_and_lease_left(
    engine: Engine, fast: Settings
) -> None:
    pair = [
        {"exchange": "binance", "side": "buy", "quantity": "0.01"},
        {"exchange": "bybit", "side": "sell", "quantity": "0.01"},
    ]
    held, short, gone, stale_attempt, expired = admitted(engine, fast, 5, legs=pair)
    claim(engine, "worker:a")
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET lease_expires_at = now() + CASE id "
                "WHEN :short THEN interval '5 s' WHEN :expired THEN interval '-1 s' "
                "ELSE interval '20 s' END, "
                "worker_id = CASE id WHEN :gone THEN 'recovery:x' ELSE worker_id END"
            ),
            {"short": short, "expired": expired, "gone": gone},
        )
        fence = attempts.fence(
            conn,
            worker_id="worker:a",
            attempts={held: 1, short: 1, gone: 1, stale_attempt: 2, expired: 1},
            min_left_s=15,
        )
        clock = conn.execute(text("SELECT now()")).scalar_one()
    assert fence.held == [held]
    assert fence.handed_back == sorted([short, expired])
    assert fence.lost([held, short, gone, stale_attempt, expired]) == [gone, stale_attempt]
    assert fence.db_now == clock  # the now() its lease arithmetic used
    owner, left = lease_of(engine, held)
    assert owner == "worker:a" and 15 < left <= 20  # only read: its lease outlasts its orders
    for job_id in (short, expired):
        owner, left = lease_of(engine, job_id)
        assert owner == "worker:a:handed-back" and left < 0
    assert lease_of(engine, gone)[0] == "recovery:x"
    owner, left = lease_of(engine, stale_attempt)
    assert owner == "worker:a" and 15 < left <= 20  # another attempt's fence touches nothing
    assert sorted(recover(engine, fast, build_adapters(engine, fast)).recovered) == sorted(
        [short, expired]
    )
    assert breaches(engine) == []


@pytest.mark.parametrize("statement", ["fence", "insert_unwinds"])
def test_a_fence_that_deadlocks_with_the_heartbeat_is_run_again(
    engine: Engine, fast: Settings, monkeypatch: pytest.MonkeyPatch, statement: str
) -> None:
    [j] = admitted(engine, fast)
    real = getattr(attempts, statement)
    calls: list[int] = []

    def deadlocked_once(conn: Any, **kw: Any) -> Any:
        calls.append(1)
        found = real(conn, **kw)  # written, then rolled back with the transaction
        if len(calls) == 1:
            raise OperationalError(statement, {}, psycopg.errors.DeadlockDetected("deadlock"))
        return found

    monkeypatch.setattr(attempts, statement, deadlocked_once)
    worker = work(engine, fast, {coid(j, 0): "reject"})  # an unwind follows
    assert len(calls) == 2
    assert worker.tally.failed == 1 and worker.tally.lost == worker.tally.handed_back == 0
    assert job_row(engine, j)["decision_code"] == "leg_failed_unwound"
    assert [r["client_order_id"] for r in legs(engine, j) if r["reduce_only"]] == [coid(j, 101)]
    assert breaches(engine) == []


class Unaskable(Spy):
    """A venue that takes orders but cannot be asked about them afterwards."""

    def fetch_orders(self, client_order_ids: Sequence[str]) -> dict[str, OrderState | None]:
        raise ExchangeUnavailable(f"{self.name}: down for maintenance")

    def cancel_order(self, client_order_id: str) -> OrderState:
        raise ExchangeUnavailable(f"{self.name}: down for maintenance")


def test_job_with_an_unknown_order_is_handed_back_until_that_order_expired(
    engine: Engine, settings: Settings
) -> None:
    [j] = admitted(engine, settings)
    sent: Sent = []
    venue = build_adapters(engine, settings, faults={coid(j, 0): "timeout_filled"})
    adapters = {name: Unaskable(a, sent, "worker") for name, a in venue.items()}
    worker = Worker(engine, settings, adapters)
    before = db_clock(engine)
    report = worker.claim()
    worker.executor.close()
    assert report is not None and report.handed_back == [j]
    expiry = max(order.expires_at for _, order in sent if order.expires_at is not None)
    assert report.sent_until == expiry
    with engine.connect() as conn:
        lease = conn.execute(
            text("SELECT lease_expires_at FROM hedge_jobs WHERE id = :j"), {"j": j}
        ).scalar_one()
    assert lease == expiry > before  # the lost order may still arrive until then
    assert recover(engine, settings, venue).recovered == []  # so recovery keeps off it
    with engine.begin() as conn:  # ... until its expiry has passed
        conn.execute(
            text("UPDATE hedge_jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :j"),
            {"j": j},
        )
    assert recover(engine, settings, venue).recovered == [j]
    assert job_row(engine, j)["status"] == "completed"  # the lost order had filled: found
    assert breaches(engine) == []
