"""The scheduler process: APScheduler drives the admission tick and the leader's maintenance.

The tick itself is :func:`perpbot_db.services.tick.run_tick`; this module only
calls it on an interval, pulls the next run forward on a NOTIFY and backs off
while the database is away (:mod:`perpbot_db.store.reconnect`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine

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
        if maintenance is not None:  # crash recovery: expired leases, every few seconds
            self.scheduler.add_job(
                _logged(maintenance, Guard(self.outage, "maintenance", log=log)),
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
            report = self.tick_guard.run(lambda: run_tick(self.engine, self.config))
            if report is None:  # backing off, or failed (logged): the next interval retries
                return
            self.ticks += 1
            if report.admitted or report.rejected or report.expired or report.halted:
                log.info("tick %s", json.dumps(report.summary()))
            if not self.wake.is_set() or self.stopping.is_set():
                return

    def _woken(self, channel: str) -> None:
        self.wake.set()
        self.job.modify(next_run_time=datetime.now(UTC))

    def start(self) -> None:
        self.scheduler.start()
        self.listener.start()

    def stop(self) -> None:
        self.stopping.set()
        self.scheduler.shutdown(wait=True)
        self.listener.stop()


def _logged(call: Callable[[], object], guard: Guard) -> Callable[[], None]:
    """The maintenance job: a lost connection backs off quietly (one line per outage);
    any other failure is logged with its traceback; the next interval retries."""

    def run() -> None:
        guard.run(call)

    return run
