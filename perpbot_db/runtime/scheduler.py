"""The scheduler process: APScheduler drives the admission tick and the leader's maintenance.

The tick itself is :func:`perpbot_db.services.tick.run_tick`; this module only
calls it on an interval, pulls the next run forward on a NOTIFY and backs off
while the database is away (:mod:`perpbot_db.store.reconnect`).  Every
scheduler ticks (the tick serialises itself); only the leader
(:mod:`perpbot_db.runtime.leader`) runs the maintenance (lease recovery,
protection expiry, the archive).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine

from perpbot_db.runtime.leader import Leader
from perpbot_db.services.tick import TickConfig, run_tick
from perpbot_db.settings import Settings
from perpbot_db.store import system
from perpbot_db.store.listen import Listener
from perpbot_db.store.reconnect import Guard, Outage

log = logging.getLogger("perpbot.scheduler")


class SchedulerService:
    """``perpbot scheduler``: a tick every ``tick_interval_s`` and at once on NOTIFY.

    APScheduler runs :meth:`tick` (one instance at a time, ``coalesce`` and
    ``misfire_grace_time=None`` so no tick is silently dropped).  A listener
    thread LISTENs for submissions and pulls the next run forward; a wake-up
    that arrives during a tick makes that tick run once more right after, so
    a submission never waits for the interval.

    A lost database connection is not an error here: the tick and the
    maintenance job each back off (their runs are skipped meanwhile) and the
    process logs one line per outage (:mod:`perpbot_db.store.reconnect`).
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        conninfo: str,
        *,
        maintenance: Callable[[], object] | None = None,
        outage: Outage | None = None,
        identity: str | None = None,
    ) -> None:
        import threading

        from apscheduler.schedulers.background import BackgroundScheduler

        self.outage = outage or Outage()
        self.tick_guard = Guard(self.outage, "tick", log=log)
        self.engine = engine
        self.settings = settings
        self.config = TickConfig.from_settings(settings)
        self.conninfo = conninfo
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.ticks = 0
        self.identity = identity or new_identity()
        self.leader = Leader(engine, self.identity)
        self.maintenance_rounds = 0  # every round, leader or not
        self.maintenance_runs = 0  # rounds this process led and ran the maintenance
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.job = self.scheduler.add_job(
            self.tick,
            "interval",
            seconds=settings.tick_interval_s,
            id="admission_tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        if maintenance is not None:  # the leader's: expired leases first, every few seconds
            self.scheduler.add_job(
                _logged(self._lead(maintenance), Guard(self.outage, "maintenance", log=log)),
                "interval",
                seconds=settings.recovery_interval_s,
                id="lease_recovery",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )
        self.listener = Listener(
            conninfo,
            (system.CHANNEL_SUBMITTED, system.CHANNEL_FINISHED),
            self._woken,
            outage=self.outage,
        )

    def tick(self) -> None:
        for _ in range(100):  # bounded: a storm of wake-ups cannot starve shutdown
            self.wake.clear()
            report = self.tick_guard.run(
                lambda: run_tick(self.engine, self.config, scheduler=self.identity)
            )
            if report is None:  # backing off, or failed (logged): the next interval retries
                return
            self.ticks += 1
            if report.admitted or report.rejected or report.expired or report.halted:
                log.info("tick %s", json.dumps(report.summary()))
            if not self.wake.is_set() or self.stopping.is_set():
                return

    def _lead(self, maintenance: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            self.maintenance_rounds += 1
            if self.stopping.is_set() or not self.leader.is_leader():
                return
            maintenance()
            self.maintenance_runs += 1

        return run

    def _woken(self, channel: str) -> None:
        self.wake.set()
        self.job.modify(next_run_time=datetime.now(UTC))

    def start(self) -> None:
        tune_collector()
        self.scheduler.start()
        self.listener.start()

    def stop(self) -> None:
        self.stopping.set()
        self.scheduler.shutdown(wait=True)
        self.listener.stop()
        self.leader.resign()


#: Allocations (net, of container objects) between two young collections in a process
#: that ticks; Python's default is 700.
GC_GEN0_THRESHOLD = 50_000


def tune_collector() -> tuple[int, int, int]:
    """Collect young objects less often in a process that ticks; returns the old thresholds.

    A tick holds tens of thousands of short-lived rows, views and verdicts at once:
    with the default threshold (700) about ninety young collections ran per tick at
    100,000 pending, each finding the tick's objects alive and promoting them, and
    the promotions set off full collections: 20-50 % more tick CPU than with the
    collector paused (``bench/gc_tick.py``).  The tick used to pause the collector
    (``gc.disable()``) for its span, which in a threaded service also stopped
    collection for every other thread (the listener, the maintenance, APScheduler)
    and raced with them over who turns it back on.  A higher threshold is set
    once, never toggled: the collector always runs, in every thread, a young
    collection after at most this many net allocations (a few MB of garbage
    cycles at worst), and the tick's CPU comes back to within noise of a tick with
    the collector paused.  A threshold already higher is left alone.
    """
    previous = gc.get_threshold()
    if previous[0] < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, previous[1], previous[2])
    return previous


def new_identity(kind: str = "scheduler") -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _logged(call: Callable[[], object], guard: Guard) -> Callable[[], None]:
    """The maintenance job: a lost connection backs off quietly (one line per outage);
    any other failure is logged with its traceback; the next interval retries."""

    def run() -> None:
        guard.run(call)

    return run
