"""Crash recovery: take over running jobs whose lease expired and reconcile them.

Runs on the leader scheduler (an APScheduler job next to the tick; see
:mod:`perpbot_db.runtime.leader`) and in ``perpbot worker --once``-style
drains.  One statement takes the jobs, re-checking status and lease expiry as
it writes the new owner, so a worker that renewed in time keeps its job and
two recoverers never take the same one.  Then every order of the current
attempt is asked for by client order id (an id the exchange never saw is
cancelled, which tombstones it), what filled unequally is unwound, and the job
is finished through the same guarded statement a worker uses: the worker that
lost its lease finds the job no longer its own and writes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from perpbot_db.settings import Settings
from perpbot_db.store import attempts, control_events
from perpbot_db.store.reconnect import Outage, Reconnect
from workers.executor import BatchReport, Executor, exec_config, new_identity
from workers.venues.exchange import ExchangeAdapter

log = logging.getLogger("perpbot.recovery")


@dataclass
class RecoveryReport:
    recovered: list[int]
    batch: BatchReport


class Recovery:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        adapters: Mapping[str, ExchangeAdapter],
        *,
        batch: int = 200,
        outage: Outage | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.identity = new_identity("recovery")
        # A batch in hand is finished once the database is back (or given up on stop:
        # its lease runs out and the next recovery takes it again).
        retry = None if outage is None else Reconnect(outage, stop=stop)
        self.executor = Executor(
            engine, adapters, self.identity, exec_config(settings), retry=retry
        )
        self.batch = batch

    def run_once(self, ready: Callable[[], None] | None = None) -> RecoveryReport:
        """One batch of expired leases recovered; ``ready()`` runs first if there is one
        (the simulation writes the quotes its unwinds would trade at)."""
        with self.engine.begin() as conn:
            recovered = attempts.recover_expired(
                conn, worker_id=self.identity, limit=self.batch, lease_s=self.settings.lease_s
            )
            lost = recovered.lost_workers
            if lost:
                control_events.insert(
                    conn,
                    actor=self.identity,
                    action="lease_recovered",
                    reason=f"{len(lost)} running job(s) whose lease expired",
                    details=json.dumps({"jobs": {str(k): v for k, v in sorted(lost.items())}}),
                )
        jobs = recovered.jobs
        if jobs and ready is not None:
            ready()
        if jobs:
            log.warning("recovering %d job(s) whose lease expired", len(jobs))
        return RecoveryReport(sorted(lost), self.executor.run(jobs, send=False))

    def drain(self, ready: Callable[[], None] | None = None) -> list[RecoveryReport]:
        """Recover until no expired lease is left (bounded); see :meth:`run_once`."""
        reports = []
        for _ in range(1000):
            report = self.run_once(ready)
            if not report.recovered:
                break
            reports.append(report)
        return reports

    def close(self) -> None:
        self.executor.close()
