"""``perpbot worker``: claim admitted jobs in batches, run them, finish them, repeat.

The loop: claim up to ``concurrency`` jobs in one statement (``FOR UPDATE SKIP
LOCKED``; their legs marked ``sent`` in the same statement), run the batch
(:class:`workers.executor.Executor`), finish it in one transaction, and claim
again at once while there is work.  With nothing to claim it sleeps until a
``perpbot_admitted`` NOTIFY or the poll interval, whichever comes first.

A heartbeat thread renews the lease of every job this worker holds every
third of the lease.  SIGTERM/SIGINT: stop claiming, finish the batch in hand,
mark the worker stopped, exit 0.  A worker killed outright leaves its jobs
``running`` with a lease that expires; recovery takes them over from there.

The database may go away at any point (:mod:`perpbot_db.store.reconnect`): the
start waits for it, the claim loop and the heartbeat back off and retry, the
batch in hand keeps its results and its finish is retried until the database
is back, and the process logs one line per outage.  A batch that could not be
carried through (a connection lost mid-way) is handed to recovery with the
next claim: every job still running under this worker's id is released, so a
claim whose answer was lost with its connection strands nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

from perpbot_db.domain.lifecycle import JobStatus
from perpbot_db.settings import Settings
from perpbot_db.store import attempts, system, transitions
from perpbot_db.store import workers as worker_store
from perpbot_db.store.listen import Listener
from perpbot_db.store.reconnect import Backoff, Outage, Reconnect, Stopped, is_connection_loss
from workers.executor import BatchReport, Executor, exec_config, new_identity
from workers.venues.exchange import ExchangeAdapter

log = logging.getLogger("perpbot.worker")


@dataclass
class WorkerTally:
    batches: int = 0
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    handed_back: int = 0
    halted: list[str] = field(default_factory=list)

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.completed += report.count(JobStatus.COMPLETED)
        self.failed += report.count(JobStatus.FAILED)
        self.retried += report.count(JobStatus.PENDING)
        self.lost += len(report.lost)
        self.handed_back += len(report.handed_back)
        if report.halted:
            self.halted.append(report.halted)


class Worker:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        adapters: Mapping[str, ExchangeAdapter],
        *,
        conninfo: str | None = None,
        concurrency: int | None = None,
        identity: str | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.concurrency = concurrency or settings.worker_concurrency
        self.identity = identity or new_identity()
        self.outage = outage or Outage()
        self.stopping = threading.Event()
        # The batch in hand is finished once the database is back; after a stop request
        # for at most half a lease (the daemon's SIGKILL comes after a whole one), then
        # its leases run out and recovery settles it.
        self.executor = Executor(
            engine,
            adapters,
            self.identity,
            exec_config(settings),
            retry=Reconnect(self.outage, stop=self.stopping, grace_s=settings.lease_s / 2),
        )
        self.wake = threading.Event()
        self.tally = WorkerTally()
        self.strays = False  # jobs may run under our id that we do not hold
        self.listener = (
            Listener(
                conninfo, (system.CHANNEL_ADMITTED,), lambda _: self.wake.set(), outage=self.outage
            )
            if conninfo
            else None
        )
        self.heart = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)

    def claim(self) -> BatchReport | None:
        """Claim and run one batch; None when there was nothing to claim."""
        with self.engine.begin() as conn:
            if self.strays:
                released = attempts.hand_back_all(conn, worker_id=self.identity)
                if released:
                    log.warning("handed %d job(s) of an unfinished batch to recovery", released)
            jobs = transitions.claim(
                conn,
                worker_id=self.identity,
                limit=self.concurrency,
                lease_s=self.settings.lease_s,
            )
        self.strays = False
        if not jobs:
            return None
        self.tally.claimed += len(jobs)
        self.strays = True  # until the batch is through
        report = self.executor.run(jobs, send=True)
        self.strays = False
        self.tally.add(report)
        return report

    def drain(self) -> WorkerTally:
        """Claim and run batches in this thread until nothing is claimable now.

        No registry row, heartbeat or listener: for a caller that owns the clock (the
        simulation), where time stands still until the call returns, so no lease
        can run out under it."""
        while self.claim() is not None:
            pass
        return self.tally

    def run(self, *, once: bool = False) -> WorkerTally:
        """Work until stopped (``once``: until nothing is claimable)."""
        try:
            Reconnect(self.outage, stop=self.stopping).call(self._register)
        except Stopped:
            self.executor.close()
            return self.tally
        self.heart.start()
        if self.listener is not None:
            self.listener.start()
        backoff = Backoff()
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                started = self.outage.clock()
                try:
                    claimed = self.claim()
                except Stopped:
                    log.warning("stopping with a batch unfinished: recovery settles it")
                    break
                except Exception as exc:
                    if not is_connection_loss(exc):
                        raise
                    self.outage.lost(exc, since=started)
                    self.strays = True
                    self.stopping.wait(backoff.next())
                    continue
                backoff.reset()
                self.outage.reachable()
                if claimed is not None:
                    continue
                if once:
                    break
                self.wake.wait(self.settings.poll_interval_s)
        finally:
            self.stopping.set()
            if self.listener is not None:
                self.listener.stop()
            self.heart.join(timeout=5)
            self.executor.close()
            self._unregister()
        return self.tally

    def _register(self) -> None:
        with self.engine.begin() as conn:
            worker_store.register(
                conn,
                worker_id=self.identity,
                host=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.concurrency,
            )

    def _unregister(self) -> None:
        try:
            with self.engine.begin() as conn:
                worker_store.stop(conn, worker_id=self.identity)
        except Exception as exc:  # the row stays open; its heartbeat tells it is gone
            if not is_connection_loss(exc):
                raise
            self.outage.lost(exc)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _heartbeat(self) -> None:
        """Renew the leases every third of a lease; during an outage retry sooner (backoff),
        so leases are renewed as soon as the database is back.  A lease that ran out
        meanwhile is recovery's: safe either way."""
        every = self.settings.lease_s / 3
        backoff = Backoff(initial_s=min(0.5, every), cap_s=min(5.0, every))
        delay = every
        while not self.stopping.wait(delay):
            started = self.outage.clock()
            delay = every
            try:
                with self.engine.begin() as conn:
                    worker_store.heartbeat(
                        conn, worker_id=self.identity, lease_s=self.settings.lease_s
                    )
            except Exception as exc:
                if is_connection_loss(exc):
                    self.outage.lost(exc, since=started)
                    delay = backoff.next()
                else:
                    log.warning("heartbeat failed", exc_info=True)
                continue
            backoff.reset()
            self.outage.reachable()
