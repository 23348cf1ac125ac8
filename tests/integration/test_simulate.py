"""The simulation: the engine sees the virtual clock, and a seed gives one ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import URL, text

from perpbot_db.cli.simulate import run_simulation
from perpbot_db.runtime import simclock
from perpbot_db.services import simulate, tick
from perpbot_db.services.submit import submit_lines
from perpbot_db.settings import Settings, StrategiesSettings
from tests.builders import job, put_market

START = datetime.fromisoformat("2026-03-02T09:00:00+00:00")  # months from the wall clock


@pytest.fixture
def sim(admin_url: URL, settings: Settings) -> Iterator[simclock.SimDatabase]:
    with simclock.scratch_database(admin_url, settings, START) as db:
        yield db


def submit_at(db: simclock.SimDatabase, settings: Settings, at: datetime, line: str) -> int:
    result = submit_lines(db.engine, [line], settings, at)
    assert result.written, result.problems
    (job_id,) = result.job_ids
    return job_id


def clocks(db: simclock.SimDatabase) -> set[datetime]:
    with db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT now(), statement_timestamp(), clock_timestamp(), transaction_timestamp()")
        ).one()
    return set(row)


def test_scratch_database_when_the_clock_advances_then_every_clock_function_reads_it(
    sim: simclock.SimDatabase,
) -> None:
    assert clocks(sim) == {START}
    later = START + timedelta(hours=5, seconds=3)
    sim.advance(later)
    assert clocks(sim) == {later}
    with pytest.raises(simclock.ClockError):
        sim.advance(START)
    assert sim.read() == later


def test_scratch_database_when_dropped_then_gone(admin_url: URL, settings: Settings) -> None:
    with simclock.scratch_database(admin_url, settings, START) as db:
        name = db.url.database
    with (
        simclock.scratch_database(admin_url, settings, START) as other,
        other.engine.connect() as conn,
    ):
        names = conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
    assert name not in names


def test_engine_on_the_virtual_clock_when_a_deadline_passes_virtually_then_the_job_expires(
    sim: simclock.SimDatabase, settings: Settings
) -> None:
    """The wall clock is months past the deadline all along: only the virtual one counts."""
    deadline = START + timedelta(seconds=30)
    job_id = submit_at(sim, settings, START, job(1, deadline=deadline.isoformat()))
    # no market data at all: the job is held (stale market), not admitted
    sim.advance(START + timedelta(seconds=10))
    first = tick.run_tick(sim.engine, tick.TickConfig())
    assert first.now == START + timedelta(seconds=10)
    assert first.expired == [] and first.admitted == []
    sim.advance(deadline + timedelta(seconds=1))
    second = tick.run_tick(sim.engine, tick.TickConfig())
    assert second.expired == [job_id]
    with sim.engine.connect() as conn:
        created = conn.execute(
            text("SELECT created_at FROM hedge_jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
        events = conn.execute(
            text("SELECT to_status, at FROM job_events WHERE job_id = :id ORDER BY id"),
            {"id": job_id},
        ).all()
    assert created == START  # a column default bound to sim.now()
    assert [tuple(e) for e in events] == [
        ("pending", START),
        ("expired", deadline + timedelta(seconds=1)),
    ]


def test_engine_on_the_virtual_clock_when_a_job_runs_then_its_times_are_virtual(
    sim: simclock.SimDatabase, settings: Settings
) -> None:
    at = START + timedelta(minutes=1)
    sim.advance(at)
    put_market(sim.engine, at=at)
    submit_at(sim, settings, at, job(2))
    assert tick.run_tick(sim.engine, tick.TickConfig()).admitted
    with sim.engine.connect() as conn:
        times = conn.execute(
            text("SELECT DISTINCT at FROM job_events UNION SELECT created_at FROM legs")
        ).scalars()
        assert set(times) == {at}


def short(mode: str = "volume_focused", seed: int = 3) -> simulate.SimOptions:
    return simulate.SimOptions(hours=0.03, mode=mode, seed=seed, step_s=1.0, symbols=2)


def test_simulate_when_run_twice_with_one_seed_then_the_same_ledger_and_report(
    admin_url: URL, settings: Settings
) -> None:
    first = run_simulation(settings, admin_url, short())
    second = run_simulation(settings, admin_url, short())
    assert first.ledger_rows > 0
    # Completed jobs also prove the paper exchanges read the virtual clock: on the wall
    # clock (months later) every order would arrive past its expiry and be refused.
    assert first.by_status.get("completed", 0) > 0
    assert first.volume_usd > 0 and first.fees_usd > 0
    assert first.digest == second.digest
    assert first.summary() == second.summary()
    assert first.end - first.start == timedelta(seconds=first.steps - 1)


def test_simulate_when_the_seed_changes_then_the_ledger_changes(
    admin_url: URL, settings: Settings
) -> None:
    one = run_simulation(settings, admin_url, short(seed=3))
    other = run_simulation(settings, admin_url, short(seed=4))
    assert one.digest != other.digest


def test_simulate_when_modes_differ_then_same_market_each_mode_reported(
    admin_url: URL, settings: Settings
) -> None:
    """One seed, two modes: the hedged-volume jobs pay two taker fees, which balanced
    mode holds (their net cost) until they expire and volume_focused admits."""
    careful = run_simulation(settings, admin_url, short("balanced"))
    bold = run_simulation(settings, admin_url, short("volume_focused"))
    assert careful.mode == "balanced" and bold.mode == "volume_focused"
    assert careful.start == bold.start and careful.end == bold.end
    assert careful.by_status.get("completed", 0) == 0 < bold.by_status.get("completed", 0)
    assert careful.volume_usd == 0 < bold.volume_usd
    assert sum(careful.holds.values()) > 0 and careful.denials.get("expired:deadline_passed")
    for report in (careful, bold):
        assert sum(report.by_status.values()) == report.submitted > 0
        assert {p.exchange for p in report.peak_capital} == set(settings.exchanges)
        assert all(Decimal(0) <= p.peak_reserved_usd <= p.equity_usd for p in report.peak_capital)
    assert all(p.peak_reserved_usd == 0 for p in careful.peak_capital)
    assert any(p.peak_reserved_usd > 0 for p in bold.peak_capital)


@pytest.mark.parametrize("mode", ["balanced", "volume_focused"])
def test_simulate_when_the_market_is_held_in_memory_then_the_plain_loops_ledger(
    admin_url: URL, settings: Settings, mode: str
) -> None:
    """The fast loop (clock moved in the tick's transaction, quotes handed to the tick
    and the producers, written only before the workers read them, the producers' state
    kept while no job changed, quiet ticks left out) decides as the plain one does:
    balanced mode holds the jobs, volume_focused runs them."""
    options = simulate.SimOptions(hours=0.05, mode=mode, seed=5, symbols=3)
    fast = run_simulation(settings, admin_url, options)
    plain = run_simulation(settings, admin_url, replace(options, reference=True))
    assert fast.submitted > 0
    if mode == "balanced":
        assert sum(fast.holds.values()) > 0
        assert fast.ticks_skipped > fast.steps // 2  # held jobs: the ticks only hold
    else:
        assert fast.by_status.get("completed", 0) > 0
    assert fast.digest == plain.digest
    assert fast.decisions_digest == plain.decisions_digest
    assert fast.summary() == plain.summary()
    assert fast.protection_locks == plain.protection_locks


def test_simulate_when_no_job_comes_then_quiet_ticks_are_left_out_and_nothing_changes(
    admin_url: URL, settings: Settings
) -> None:
    """Without jobs a tick only protects: the fast loop leaves out the ticks that would
    write nothing, and the locks it writes (fast markets blacklisting their symbol,
    often here) are the plain loop's, at the same times."""
    feed = settings.feed.model_copy(update={"fast_per_hour": 40.0, "fast_mean_s": 30.0})
    stormy = settings.model_copy(update={"feed": feed})
    options = simulate.SimOptions(hours=0.1, seed=2, symbols=3)
    off = {"enabled": False}
    none = StrategiesSettings(funding_arb=off, arb=off, volume=off, hedge_rebalance=off)  # type: ignore[arg-type]
    stormy = stormy.model_copy(update={"strategies": none})
    fast = run_simulation(stormy, admin_url, options)
    plain = run_simulation(stormy, admin_url, replace(options, reference=True))
    assert fast.submitted == 0
    assert plain.ticks_skipped == 0
    assert fast.steps // 2 < fast.ticks_skipped < fast.steps
    assert len(fast.protection_locks) > 1
    assert fast.protection_locks == plain.protection_locks


def test_simulate_when_jobs_wait_in_a_stormy_market_then_the_left_out_ticks_decide_as_the_plain(
    admin_url: URL, settings: Settings
) -> None:
    """Jobs held while fast markets come and go (symbols blacklisted, then let out as
    their entries run out): the ticks the fast loop leaves out would only have held,
    and the decisions it held back and wrote later are the ones the plain loop's ticks
    stored, job by job (decision, context, score, when scored)."""
    feed = settings.feed.model_copy(update={"fast_per_hour": 40.0, "fast_mean_s": 30.0})
    stormy = settings.model_copy(update={"feed": feed})
    options = simulate.SimOptions(hours=0.1, seed=3, symbols=3)
    fast = run_simulation(stormy, admin_url, options)
    plain = run_simulation(stormy, admin_url, replace(options, reference=True))
    assert fast.submitted > 0 and sum(fast.holds.values()) > 0
    assert len(fast.protection_locks) > 1
    assert fast.ticks_skipped > 0
    assert fast.decisions_digest == plain.decisions_digest
    assert fast.digest == plain.digest
    assert fast.summary() == plain.summary()
    assert fast.protection_locks == plain.protection_locks
