"""The producer service on a real PostgreSQL: snapshots in, pending jobs out, once.

Each test writes its market, runs :meth:`ProducerService.run_once` with an explicit
``now`` (a :class:`~perpbot_db.domain.clock.VirtualClock` where the loop runs) and
checks the jobs table, then lets the real tick and worker take the jobs further.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from perpbot_db.domain.clock import VirtualClock
from perpbot_db.domain.lifecycle import RiskMode, Strategy
from perpbot_db.domain.strategies.base import key_time, window_start
from perpbot_db.runtime import assembly
from perpbot_db.runtime.leader import Leader
from perpbot_db.services import control, market, tick
from perpbot_db.services.producers import ProducerService
from perpbot_db.settings import Settings
from perpbot_db.store import locks
from perpbot_db.store.reconnect import Outage
from tests.builders import admitted, config, put_market, wait_for, work

BTC = "BTC/USDT:USDT"


def put(engine: Engine, now: datetime, **by_exchange: dict[str, Any]) -> None:
    """BTC snapshots observed at ``now``: calm, 1 bps of funding per 8 h, a 1 USD spread,
    changed per exchange by ``by_exchange``."""
    snaps = []
    for exchange in ("binance", "okx", "bybit"):
        fields: dict[str, Any] = {
            "exchange": exchange,
            "symbol": BTC,
            "bid": Decimal(97000),
            "ask": Decimal(97001),
            "last": Decimal(97000),
            "funding_rate": Decimal("0.0001"),
            "volatility": Decimal("0.005"),
            "latency_ms": Decimal(40),
            "observed_at": now,
        }
        fields.update(by_exchange.get(exchange, {}))
        snaps.append(market.SnapshotIn(**fields))
    with engine.begin() as conn:
        market.upsert_snapshots(conn, snaps, now)


def jobs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, strategy, status, idempotency_key, decision_code, unhedged "
                "FROM hedge_jobs ORDER BY id"
            )
        ).mappings()
        return [dict(r) for r in rows]


def legs(engine: Engine, job_id: int) -> dict[str, tuple[str, Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT exchange, side, quantity FROM legs WHERE job_id = :j AND attempt = 1"),
            {"j": job_id},
        ).all()
    return {str(r[0]): (str(r[1]), Decimal(r[2])) for r in rows}


def sides(engine: Engine, job_id: int) -> dict[str, str]:
    return {exchange: side for exchange, (side, _) in legs(engine, job_id).items()}


# okx pays 9 bps per 8 h (funding arbitrage: long binance, short okx) and bybit bids
# 20 bps above the others' asks (price arbitrage: buy binance, sell bybit)
OPPORTUNITIES: dict[str, dict[str, Any]] = {
    "okx": {"funding_rate": Decimal("0.0009")},
    "bybit": {"bid": Decimal(97200), "ask": Decimal(97201), "last": Decimal(97200)},
}


def window_now() -> datetime:
    """Now, at the start of its 5 s window (the arbitrage and volume keys' window): runs
    within the next seconds stay in the same window whenever the test runs."""
    return window_start(datetime.now(UTC), 5)


def test_run_once_submits_pending_jobs_once_and_the_tick_admits_them(
    engine: Engine, settings: Settings
) -> None:
    now = window_now()
    put(engine, now, **OPPORTUNITIES)
    service = ProducerService(engine, settings, VirtualClock(now))

    report = service.run_once(now)

    made = jobs(engine)
    assert sorted(j["strategy"] for j in made) == ["arb", "funding_arb", "volume"]
    assert {j["status"] for j in made} == {"pending"}
    assert report.submitted == 3 and report.problems == []
    by = {j["strategy"]: j for j in made}
    assert sides(engine, by["funding_arb"]["id"]) == {"binance": "buy", "okx": "sell"}
    assert sides(engine, by["arb"]["id"]) == {"binance": "buy", "bybit": "sell"}

    # the same window again: nothing new (the volume opening's key is taken; the
    # arbitrages see their jobs on their way)
    again = service.run_once(now + timedelta(seconds=1))
    assert jobs(engine) == made
    assert again.submitted == 0
    assert again.strategies[Strategy.VOLUME].existing == 1

    # sized within every single-job cap (bybit: 10 % of 30,000), all three pass the tick
    report_tick = tick.run_tick(engine, config())
    assert sorted(report_tick.admitted) == [j["id"] for j in made], report_tick.summary()

    # the next arbitrage window, the same market: the funding position is held (whatever
    # the window), the arb job on its way
    later = now + timedelta(seconds=6)
    put(engine, datetime.now(UTC), **OPPORTUNITIES)
    report = service.run_once(later)
    skips = {s: dict(r.skips) for s, r in report.strategies.items()}
    assert (
        skips[Strategy.FUNDING_ARB][BTC] == "a funding position is open or opening (one per symbol)"
    )
    assert skips[Strategy.ARB][BTC] == "an arb job for it is on its way"


def test_a_calm_market_gives_volume_only_which_balanced_mode_holds_for_its_cost(
    engine: Engine, settings: Settings
) -> None:
    now = window_now()
    put(engine, now)
    report = ProducerService(engine, settings, VirtualClock(now)).run_once(now)
    assert [j["strategy"] for j in jobs(engine)] == ["volume"], report.summary()
    # the pair pays two taker fees (10 bps of its notional): beyond balanced mode's
    # hard limit on a volume job's net cost (10 bps), within volume_focused's (20 bps)
    tick.run_tick(engine, config())
    ((status, code),) = [(j["status"], j["decision_code"]) for j in jobs(engine)]
    assert (status, code) == ("pending", "spread_hard_limit")
    control.set_risk_mode(engine, RiskMode.VOLUME_FOCUSED, actor="test", reason="volume day")
    put(engine, datetime.now(UTC))
    tick.run_tick(engine, config(rescore_after=timedelta(0)))  # re-scored at once in the new mode
    assert [j["status"] for j in jobs(engine)] == ["admitted"]


def test_nothing_is_submitted_when_no_edge_pays_the_fees(
    engine: Engine, settings: Settings
) -> None:
    now = datetime.now(UTC)
    put(engine, now, bybit={"bid": Decimal(97090), "ask": Decimal(97091), "last": Decimal(97090)})
    quiet = settings.model_copy(
        update={
            "strategies": settings.strategies.model_copy(
                update={"volume": settings.strategies.volume.model_copy(update={"enabled": False})}
            )
        }
    )
    report = ProducerService(engine, quiet, VirtualClock(now)).run_once(now)
    assert jobs(engine) == []
    assert report.submitted == 0
    (arb_skip,) = report.summary()["strategies"]["arb"]["skips"]
    assert "does not pay costs" in arb_skip["reason"]
    (funding_skip,) = report.summary()["strategies"]["funding_arb"]["skips"]
    assert funding_skip["reason"] == "funding is equal on every venue"


def test_the_rebalancer_closes_what_an_unhedged_job_left_open(
    engine: Engine, fast: Settings
) -> None:
    [j] = admitted(engine, fast)  # arb: buy binance, sell okx 0.01 BTC
    work(engine, fast, {f"pb{j}L0A1": "reject", f"pb{j}L101A1": "reject"})  # unwind fails too
    assert [(x["status"], x["unhedged"]) for x in jobs(engine)] == [("failed", True)]
    only_rebalance = fast.model_copy(
        update={
            "strategies": fast.strategies.model_copy(
                update={
                    name: getattr(fast.strategies, name).model_copy(update={"enabled": False})
                    for name in ("arb", "funding_arb", "volume")
                }
            )
        }
    )
    now = datetime.now(UTC)
    put_market(engine, at=now)
    service = ProducerService(engine, only_rebalance, VirtualClock(now))

    report = service.run_once(now)

    (rebalance,) = [x for x in jobs(engine) if x["strategy"] == "hedge_rebalance"]
    assert rebalance["idempotency_key"] == "rebal:BTC-USDT:0", report.summary()
    placed = legs(engine, rebalance["id"])
    assert {side for side, _ in placed.values()} == {"buy"}  # okx was left short 0.01
    assert sum(q for _, q in placed.values()) == Decimal("0.01")
    assert "okx" in placed and len(placed) == 2
    assert service.run_once(now).submitted == 0  # on its way: nothing more

    # okx is in safe mode; a rebalance reduces risk, from the reserve tier, and is admitted
    assert rebalance["id"] in tick.run_tick(engine, config()).admitted
    with engine.connect() as conn:
        tiers = set(
            conn.execute(
                text("SELECT tier FROM capital_reservations WHERE job_id = :j"),
                {"j": rebalance["id"]},
            ).scalars()
        )
    assert tiers == {"reserve"}
    work(engine, fast)
    assert {x["id"]: x["status"] for x in jobs(engine)}[rebalance["id"]] == "completed"
    # flat again: the next pass finds nothing to rebalance
    after = service.run_once(datetime.now(UTC))
    assert after.submitted == 0
    assert after.summary()["strategies"]["hedge_rebalance"]["skips"] == []


def test_the_loop_runs_on_its_clock_and_stops(engine: Engine, settings: Settings) -> None:
    now = window_now()
    put(engine, now, **OPPORTUNITIES)
    fast_loop = settings.model_copy(
        update={"strategies": settings.strategies.model_copy(update={"interval_s": 0.05})}
    )
    clock = VirtualClock(now)
    service = ProducerService(engine, fast_loop, clock)
    service.start()
    try:
        assert wait_for(lambda: service.passes >= 3)
    finally:
        service.stop()
    assert service.last is not None and service.last.at == now  # only the clock's time
    assert len(jobs(engine)) == 3  # every pass in the same window: submitted once
    assert not any(t.name == "producers" for t in threading.enumerate())


def backend_pid(leader: Leader) -> int:
    assert leader._conn is not None
    return int(leader._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_only_the_leaders_producers_submit_and_a_standby_takes_over_when_it_dies(
    engine: Engine, settings: Settings
) -> None:
    """Two daemons' producers on one database, each gated by its own scheduler's leader
    check: the standby's loop reads and submits nothing while the other leads, and takes
    over at its next pass once the leader's session is gone."""
    now = window_now()
    put(engine, now, **OPPORTUNITIES)
    fast_loop = settings.model_copy(
        update={"strategies": settings.strategies.model_copy(update={"interval_s": 0.05})}
    )
    a_leader, b_leader = Leader(engine, "run:a"), Leader(engine, "run:b")
    a = ProducerService(engine, fast_loop, VirtualClock(now), leads=a_leader.is_leader)
    b_clock = VirtualClock(now)
    b = ProducerService(engine, fast_loop, b_clock, leads=b_leader.is_leader)
    try:
        assert a_leader.is_leader()  # a's scheduler took the lock first
        b.start()
        try:
            # b's loop passes as a standby: no read, no decision, no job
            assert wait_for(lambda: b.standby_passes >= 5)
            assert b.passes == 0 and b.last is None and jobs(engine) == []
            # the leader's pass submits
            report = a.lead_once(now)
            assert report is not None and report.submitted == 3, report
            made = jobs(engine)
            standby = b.standby_passes
            assert wait_for(lambda: b.standby_passes >= standby + 5)
            assert b.passes == 0 and jobs(engine) == made
            # the next volume window opens: whoever leads has a job to submit; a's
            # session dies first, so b takes over at a pass of its loop and submits it
            b_clock.advance(5)
            later = b_clock.now()
            put(engine, datetime.now(UTC), **OPPORTUNITIES)
            with engine.begin() as conn:
                conn.execute(text(f"SELECT pg_terminate_backend({backend_pid(a_leader)})"))
            assert wait_for(lambda: b.passes >= 1)
            assert wait_for(lambda: len(jobs(engine)) == len(made) + 1)
            assert b.last is not None and b.last.at == later
            new = [j for j in jobs(engine) if j not in made]
            assert [(j["strategy"], j["status"]) for j in new] == [("volume", "pending")]
            assert new[0]["idempotency_key"] == f"vol:open:{key_time(later)}"
        finally:
            b.stop()
        # a finds its session gone and steps down; b's lock holds: a's passes do nothing
        assert a.lead_once(later + timedelta(seconds=5)) is None
        assert a.lead_once(later + timedelta(seconds=5)) is None
        assert a.passes == 1 and a.standby_passes == 2
        assert len(jobs(engine)) == len(made) + 1
    finally:
        a_leader.resign()
        b_leader.resign()


def test_one_process_of_the_cluster_produces_whether_run_or_produce_runs_it(
    engine: Engine, settings: Settings
) -> None:
    """``perpbot run``'s producers and a standalone ``perpbot produce`` loop compete for
    one lock of their own (not the scheduler's): the holder submits, the other passes as
    a standby, and a stopped producer gives the lock up so the standby takes over."""
    now = window_now()
    put(engine, now, **OPPORTUNITIES)
    scheduler = Leader(engine, "run:a")  # the maintenance leader: another election
    run_b = assembly.producer_service(engine, settings, Outage(), "run:b")
    produce_c = assembly.producer_service(engine, settings, Outage(), "produce:c")
    assert run_b is not None and produce_c is not None
    try:
        assert scheduler.is_leader()
        report = run_b.lead_once(now)  # the scheduler's lock does not stop it
        assert report is not None and report.submitted == 3, report
        made = jobs(engine)
        with engine.connect() as conn:
            assert locks.leader_current(conn, locks.PRODUCERS_LOCK) == "run:b:producers"
            assert locks.leader_current(conn) == "run:a"
        assert produce_c.lead_once(now) is None  # a standby reads and submits nothing
        assert produce_c.passes == 0 and produce_c.standby_passes == 1
        run_b.stop()  # never started: only gives the lock up
        later = now + timedelta(seconds=5)  # the next volume window: a new key
        put(engine, datetime.now(UTC), **OPPORTUNITIES)
        report = produce_c.lead_once(later)
        assert report is not None and report.submitted == 1, report
        assert run_b.lead_once(later) is None  # b competes again: c holds the lock now
        new = [j for j in jobs(engine) if j not in made]
        assert [j["idempotency_key"] for j in new] == [f"vol:open:{key_time(later)}"]
    finally:
        for service in (run_b, produce_c):
            service.stop()
        scheduler.resign()


def test_the_jobs_part_read_again_equals_a_full_read_after_submissions_and_expiries(
    engine: Engine, settings: Settings
) -> None:
    """``refresh_jobs``: after jobs were only submitted or expired, the state with its
    jobs' part read again is what a full read gives (the simulation relies on it)."""
    now = window_now()
    put(engine, now, **OPPORTUNITIES)
    service = ProducerService(engine, settings, VirtualClock(now))
    before = service.read_state(now)
    assert service.run_once(now).submitted == 3
    after_submit = service.refresh_jobs(before)
    assert after_submit == service.read_state(now)
    assert after_submit != before  # three jobs on their way: the in-flight counts moved
    later = now + timedelta(hours=1)  # past every deadline
    expired = tick.run_tick(engine, config(), now=later).expired
    assert len(expired) == 3
    after_expiry = service.refresh_jobs(after_submit)
    assert after_expiry == replace(service.read_state(later), day=after_submit.day)
    assert after_expiry != after_submit


def only(settings: Settings, *names: str) -> Settings:
    """``settings`` with every strategy but ``names`` disabled."""
    strategies = settings.strategies
    update = {
        name: getattr(strategies, name).model_copy(update={"enabled": name in names})
        for name in ("arb", "funding_arb", "volume", "hedge_rebalance")
    }
    return settings.model_copy(update={"strategies": strategies.model_copy(update=update)})


def positions(engine: Engine) -> dict[str, Decimal]:
    """Net filled quantity per exchange over every leg ever traded (archive included)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT exchange, sum(CASE side WHEN 'buy' THEN filled_quantity "
                "ELSE -filled_quantity END) FROM legs_all GROUP BY exchange"
            )
        ).all()
    return {str(r[0]): Decimal(r[1]) for r in rows}


def test_a_funding_position_is_closed_when_its_spread_flips_and_nets_to_zero(
    engine: Engine, fast: Settings
) -> None:
    # one attempt per job: a rejected close fails at once
    funding = only(fast, "funding_arb").model_copy(update={"max_attempts": 1})
    now = datetime.now(UTC)
    # binance charges the least funding, okx the most: long binance, short okx
    earning = {
        "okx": {"funding_rate": Decimal("0.0009")},
        "bybit": {"funding_rate": Decimal("0.0005")},
    }
    put(engine, now, **earning)
    service = ProducerService(engine, funding, VirtualClock(now))
    assert service.run_once(now).submitted == 1
    tick.run_tick(engine, config())
    work(engine, funding)
    ((opening_id, status, key),) = [
        (j["id"], j["status"], j["idempotency_key"]) for j in jobs(engine)
    ]
    assert status == "completed"
    held = positions(engine)
    assert held.get("binance", 0) > 0, held
    assert held["okx"] == -held["binance"]
    assert held["binance"] > 0 and held["okx"] == -held["binance"]

    # still earning: held, no close, no second opening
    put(engine, datetime.now(UTC), **earning)
    assert service.run_once(datetime.now(UTC)).submitted == 0

    # the spread flips (binance, the long, now pays 9 bps per 8 h, okx 1): one close
    flipped = {"binance": {"funding_rate": Decimal("0.0009")}, "bybit": earning["bybit"]}
    put(engine, datetime.now(UTC), **flipped)
    report = service.run_once(datetime.now(UTC))
    assert report.strategies[Strategy.FUNDING_ARB].keys == [f"{key}:close"], report.summary()
    assert report.submitted == 1
    assert service.run_once(datetime.now(UTC)).submitted == 0  # the same close, once
    (close,) = [j for j in jobs(engine) if j["id"] != opening_id]
    assert sides(engine, close["id"]) == {"binance": "sell", "okx": "buy"}

    # the first close is lost (both legs rejected): the next pass sends another
    assert close["id"] in tick.run_tick(engine, config()).admitted
    work(engine, funding, {f"pb{close['id']}L0A1": "reject", f"pb{close['id']}L1A1": "reject"})
    assert {j["id"]: j["status"] for j in jobs(engine)}[close["id"]] == "failed"
    put(engine, datetime.now(UTC), **flipped)
    report = service.run_once(datetime.now(UTC))
    assert report.strategies[Strategy.FUNDING_ARB].keys == [f"{key}:close:1"], report.summary()
    assert report.submitted == 1
    assert service.run_once(datetime.now(UTC)).submitted == 0

    # the retry fills: the venues are flat and nothing more is closed
    tick.run_tick(engine, config())
    work(engine, funding)
    assert {j["status"] for j in jobs(engine) if j["id"] != close["id"]} == {"completed"}
    assert set(positions(engine).values()) == {Decimal(0)}
    put(engine, datetime.now(UTC))  # funding equal everywhere: no new opening either
    after = service.run_once(datetime.now(UTC))
    assert after.strategies[Strategy.FUNDING_ARB].keys == [], after.summary()


def test_an_arb_pair_is_closed_once_the_prices_converge_and_nets_to_zero(
    engine: Engine, fast: Settings
) -> None:
    price_arb = only(fast, "arb")
    now = datetime.now(UTC)
    put(engine, now, bybit=OPPORTUNITIES["bybit"])  # buy binance, sell bybit
    service = ProducerService(engine, price_arb, VirtualClock(now))
    assert service.run_once(now).submitted == 1
    tick.run_tick(engine, config())
    work(engine, price_arb)
    ((opening_id, status, key),) = [
        (j["id"], j["status"], j["idempotency_key"]) for j in jobs(engine)
    ]
    assert status == "completed"

    put(engine, datetime.now(UTC))  # converged: every venue at 97000/97001
    report = service.run_once(datetime.now(UTC))
    assert report.strategies[Strategy.ARB].keys == [f"{key}:close"], report.summary()
    assert service.run_once(datetime.now(UTC)).submitted == 0  # one close, whatever the passes
    (close,) = [j for j in jobs(engine) if j["id"] != opening_id]
    assert sides(engine, close["id"]) == {"binance": "sell", "bybit": "buy"}
    assert close["id"] in tick.run_tick(engine, config()).admitted
    work(engine, price_arb)
    assert {j["status"] for j in jobs(engine)} == {"completed"}
    assert set(positions(engine).values()) == {Decimal(0)}
    assert service.run_once(datetime.now(UTC)).strategies[Strategy.ARB].keys == []


def test_a_funding_position_in_profit_is_closed_at_its_take_profit(
    engine: Engine, fast: Settings
) -> None:
    funding = only(fast, "funding_arb")
    strategies = funding.strategies
    with_tp = funding.model_copy(
        update={
            "strategies": strategies.model_copy(
                update={
                    "funding_arb": strategies.funding_arb.model_copy(
                        update={"take_profit_bps": Decimal(50)}
                    )
                }
            )
        }
    )
    now = datetime.now(UTC)
    # binance charges the least funding, okx the most: long binance, short okx
    earning = {
        "okx": {"funding_rate": Decimal("0.0009")},
        "bybit": {"funding_rate": Decimal("0.0005")},
    }
    put(engine, now, **earning)
    service = ProducerService(engine, with_tp, VirtualClock(now))
    assert service.run_once(now).submitted == 1
    tick.run_tick(engine, config())
    work(engine, with_tp)
    ((opening_id, status, key),) = [
        (j["id"], j["status"], j["idempotency_key"]) for j in jobs(engine)
    ]
    assert status == "completed"
    # the legs' fills and fees are read back with the opening
    (pair,) = service.read_state(datetime.now(UTC)).openings[:1]
    assert pair.buy_price is not None and pair.fee_usd > 0 and pair.opened_at is not None

    # just opened, prices unchanged: the round trip's fees, below the take-profit: held
    put(engine, datetime.now(UTC), **earning)
    report = service.run_once(datetime.now(UTC))
    assert report.strategies[Strategy.FUNDING_ARB].keys == [], report.summary()

    # binance (the long) rose 1,000 USD (about 100 bps) while okx did not move: closed
    rose = {"binance": {"bid": Decimal(98000), "ask": Decimal(98001), "last": Decimal(98000)}}
    put(engine, datetime.now(UTC), **earning, **rose)
    report = service.run_once(datetime.now(UTC))
    assert report.strategies[Strategy.FUNDING_ARB].keys == [f"{key}:close"], report.summary()
    (close,) = [j for j in jobs(engine) if j["id"] != opening_id]
    with engine.connect() as conn:
        metadata = conn.execute(
            text("SELECT metadata FROM hedge_jobs WHERE id = :j"), {"j": close["id"]}
        ).scalar_one()
    assert metadata["why"] == "take_profit" and Decimal(metadata["pnl_bps"]) > 50, metadata
    assert sides(engine, close["id"]) == {"binance": "sell", "okx": "buy"}
    assert close["id"] in tick.run_tick(engine, config()).admitted
    work(engine, with_tp)
    assert set(positions(engine).values()) == {Decimal(0)}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM open_pairs")).scalar_one() == 0
