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
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine

from perpbot_db import queries
from perpbot_db.lifecycle import JobStatus
from perpbot_db.listen import Listener
from perpbot_db.settings import Settings
from workers.exchange import ExchangeAdapter
from workers.executor import BatchReport, ExecConfig, Executor, jobs_from_rows, order_window_s

log = logging.getLogger("perpbot.worker")


def new_identity(kind: str = "worker") -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def exec_config(settings: Settings) -> ExecConfig:
    return ExecConfig(
        client_order_prefix=settings.client_order_prefix,
        retry_backoff_s=settings.retry_backoff_s,
        lease_s=settings.lease_s,
        order_window_s=order_window_s(settings.lease_s),
    )


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
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.concurrency = concurrency or settings.worker_concurrency
        self.identity = identity or new_identity()
        self.executor = Executor(engine, adapters, self.identity, exec_config(settings))
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.tally = WorkerTally()
        self.listener = (
            Listener(conninfo, (queries.CHANNEL_ADMITTED,), lambda _: self.wake.set())
            if conninfo
            else None
        )
        self.heart = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)

    def claim(self) -> BatchReport | None:
        """Claim and run one batch; None when there was nothing to claim."""
        with self.engine.begin() as conn:
            rows = queries.job_claim_batch(
                conn,
                worker_id=self.identity,
                limit=self.concurrency,
                lease_s=self.settings.lease_s,
            )
        if not rows:
            return None
        jobs = jobs_from_rows(rows)
        self.tally.claimed += len(jobs)
        report = self.executor.run(jobs, send=True)
        self.tally.add(report)
        return report

    def run(self, *, once: bool = False) -> WorkerTally:
        """Work until stopped (``once``: until nothing is claimable)."""
        with self.engine.begin() as conn:
            queries.worker_register(
                conn,
                worker_id=self.identity,
                host=socket.gethostname(),
                pid=os.getpid(),
                concurrency=self.concurrency,
            )
        self.heart.start()
        if self.listener is not None:
            self.listener.start()
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                if self.claim() is not None:
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
            with self.engine.begin() as conn:
                queries.worker_stop(conn, worker_id=self.identity)
        return self.tally

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _heartbeat(self) -> None:
        every = self.settings.lease_s / 3
        while not self.stopping.wait(every):
            try:
                with self.engine.begin() as conn:
                    queries.worker_heartbeat(
                        conn, worker_id=self.identity, lease_s=self.settings.lease_s
                    )
            except Exception:  # the lease then runs out and recovery takes over: safe
                log.warning("heartbeat failed", exc_info=True)
