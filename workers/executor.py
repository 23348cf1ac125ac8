"""From claimed jobs to booked results, a batch at a time.

One batch goes: fence -> send every leg (grouped per exchange, exchanges in
parallel, one ``create_orders`` call each) -> resolve what got no answer (fetch
by client order id; an id the exchange never saw is cancelled, which tombstones
it, so a late copy is refused) -> unwind what filled unequally (reduce-only
orders, recorded as ``sent`` before they go out, behind the same fence) ->
settle (:mod:`perpbot_db.domain.execution`) -> finish every job in one transaction.  A
job with an order whose fate is still unknown is never guessed at: its lease is
handed back and recovery asks the exchange again later.

The fence (:func:`perpbot_db.store.attempts.fence`) is one statement right
before orders leave: only jobs this process still holds at this attempt, with
more than ``order_window_s`` of lease left, are sent (read, not written: the
lease they have outlasts their orders); a job recovered from under it is lost
(nothing is written), one it still owns
but stalled on is handed back.  Every order then carries an expiry, the
database clock at the fence + ``order_window_s``: a request delayed past it
(a paused process, a slow network) is refused by the venue, and it comes
before the lease the fence checked could have run out, so no order of a job
can be accepted once recovery may own it.

Recovery uses the same path with ``send=False``: it starts by asking; its
unwinds go through the same fence, and it ends attempts along the recovery edges
(``recover_complete``, ``recover_fail``: :data:`perpbot_db.domain.lifecycle.RECOVERY_PATHS`).

With a :class:`perpbot_db.store.reconnect.Reconnect`, handing back and the finish
survive a database outage: the batch's results are kept and the write is
retried with backoff until the database is back (the guarded finish writes
nothing if recovery took a job meanwhile).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from perpbot_db.domain import execution, protections
from perpbot_db.domain.execution import Fill, JobRun, LegRun, Settlement
from perpbot_db.domain.lifecycle import JobStatus, LegStatus, RiskMode
from perpbot_db.domain.protections import Readings, SystemReading
from perpbot_db.services import protect
from perpbot_db.settings import Settings
from perpbot_db.store import attempts, counters, exchanges, system, transitions
from perpbot_db.store.reconnect import Reconnect, is_conflict
from workers.venues.exchange import ExchangeAdapter, ExchangeUnavailable, OrderRequest, OrderState

log = logging.getLogger("perpbot.worker")

T = TypeVar("T")

_LEG_STATUS = {
    "filled": LegStatus.FILLED,
    "partially_filled": LegStatus.PARTIALLY_FILLED,
    "rejected": LegStatus.REJECTED,
    "cancelled": LegStatus.CANCELLED,
}


def fill_of(state: OrderState) -> Fill:
    """An exchange's final answer as a leg fill (a cancelled order with fills is partial)."""
    status = _LEG_STATUS[state.status]
    if status is LegStatus.CANCELLED and state.filled > 0:
        status = LegStatus.PARTIALLY_FILLED
    return Fill(
        status=status,
        filled=state.filled,
        avg_price=state.average if state.filled > 0 else None,
        fee_usd=state.fee_usd,
        exchange_order_id=state.exchange_order_id,
        error=state.error,
    )


#: binance refuses a ``recvWindow`` above 60 s; a longer window buys nothing anyway.
MAX_ORDER_WINDOW_S = 60.0


def order_window_s(lease_s: float) -> float:
    """How long an order may take to reach the venue: half the lease, at most 60 s.

    The fence requires this much lease left, so every order expires before the
    lease it was sent under could run out (the other half is the margin for the
    clocks of the database and the venue to disagree); 15 s with the default
    30 s lease, far above a venue round trip.
    """
    return min(lease_s / 2, MAX_ORDER_WINDOW_S)


@dataclass(frozen=True)
class ExecConfig:
    client_order_prefix: str = "pb"
    retry_backoff_s: float = 5.0
    finish_retries: int = 5  # attempts of a transaction that deadlocked (finish, fences)
    lease_s: float = 30.0  # the order window must fit in it
    order_window_s: float = order_window_s(30.0)  # lease a send needs left; orders' expiry
    protection: protect.ProtectConfig = field(default_factory=protect.ProtectConfig)

    def __post_init__(self) -> None:
        if self.finish_retries < 1:
            raise ValueError(f"finish_retries must be at least 1, not {self.finish_retries}")
        if not 0 < self.order_window_s <= self.lease_s:
            raise ValueError(
                f"order_window_s must be within (0, lease_s={self.lease_s}], "
                f"not {self.order_window_s}"
            )


@dataclass
class BatchReport:
    finished: dict[int, Settlement] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)  # recovered from under us: not ours to write
    handed_back: list[int] = field(default_factory=list)
    halted: str | None = None
    safe_mode: list[str] = field(default_factory=list)
    # The latest expiry of the orders this batch sent (database clock): until then an
    # order whose answer was lost may still reach the venue.
    sent_until: datetime | None = None

    def count(self, status: JobStatus) -> int:
        return sum(1 for end in self.finished.values() if end.to_status is status)


class Executor:
    def __init__(
        self,
        engine: Engine,
        adapters: Mapping[str, ExchangeAdapter],
        identity: str,
        config: ExecConfig,
        *,
        retry: Reconnect | None = None,
    ) -> None:
        self.engine = engine
        self.adapters = adapters
        self.identity = identity
        self.config = config
        self.retry = retry
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(adapters)), thread_name_prefix="ex")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # -- the batch ------------------------------------------------------------------

    def run(self, jobs: Sequence[JobRun], *, send: bool) -> BatchReport:
        report = BatchReport()
        if not jobs:
            return report
        if send:
            jobs, expires_at = self._fence(jobs, report)
            if not jobs:
                return report
            legs = [leg for job in jobs for leg in job.legs if leg.fill is None]
            fills = self._place(legs, expires_at, report)
        else:
            legs = [leg for job in jobs for leg in job.legs if leg.fill is None]
            fills = self._fetch(legs)
        fills.update(self._resolve([leg for leg in legs if fills.get(leg.id) is None]))
        current = [job.with_fills(fills) for job in jobs]
        current = self._unwind([job for job in current if job.known], report) + [
            job for job in current if not job.known
        ]
        done = [job for job in current if job.known]
        unknown = [job.id for job in current if not job.known]
        if unknown:  # recovery waits until their orders can no longer arrive

            def hand_back() -> None:
                with self.engine.begin() as conn:
                    attempts.hand_back(
                        conn, worker_id=self.identity, job_ids=unknown, not_before=report.sent_until
                    )

            self._db(hand_back)
            report.handed_back.extend(unknown)
            log.warning("handed back %d job(s) with unknown orders", len(unknown))
        if done:  # an attempt recovery settles ends along the recovery's edges
            self._finish(done, report, recovering=not send)
        return report

    # -- the fence ------------------------------------------------------------------

    def _fence(self, jobs: Sequence[JobRun], report: BatchReport) -> tuple[list[JobRun], datetime]:
        """The jobs whose orders may go out now, and those orders' expiry."""
        fence = self._transact(
            lambda conn: attempts.fence(
                conn,
                worker_id=self.identity,
                attempts={job.id: job.attempt for job in jobs},
                min_left_s=self.config.order_window_s,
            )
        )
        self._account(fence, [job.id for job in jobs], report)
        assert fence.db_now is not None  # the fence statement always reads the clock
        held = set(fence.held)
        return [job for job in jobs if job.id in held], self._expiry(fence.db_now)

    def _transact(self, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction, run again after a deadlock: the fences renew rows
        that this worker's heartbeat renews too, each in its own order."""
        for attempt in range(1, self.config.finish_retries + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if not _retryable(exc) or attempt >= self.config.finish_retries:
                    raise
                log.info("fence retried after %s", type(exc.orig).__name__)
        raise AssertionError("finish_retries must be at least 1")

    def _expiry(self, db_now: datetime) -> datetime:
        return db_now + timedelta(seconds=self.config.order_window_s)

    def _account(self, fence: attempts.LeaseFence, asked: list[int], report: BatchReport) -> None:
        """Jobs a fence did not hold: handed back (ours, stalled) or lost (not ours)."""
        lost = fence.lost(asked)
        report.lost.extend(lost)
        report.handed_back.extend(fence.handed_back)
        if lost:
            log.warning("fence: %d job(s) were recovered from under this worker", len(lost))
        if fence.handed_back:
            log.warning(
                "fence: handed back %d job(s) with less than %gs of lease left",
                len(fence.handed_back),
                self.config.order_window_s,
            )

    # -- exchanges ------------------------------------------------------------------

    def _per_exchange(
        self, legs: Sequence[LegRun], call: Callable[[ExchangeAdapter, list[LegRun]], T]
    ) -> list[tuple[list[LegRun], T | BaseException]]:
        groups: dict[str, list[LegRun]] = defaultdict(list)
        for leg in legs:
            groups[leg.exchange].append(leg)
        if len(groups) == 1:
            ((name, group),) = groups.items()
            return [(group, _attempt(lambda: call(self.adapters[name], group)))]
        futures = [
            (group, self.pool.submit(_attempt, lambda n=name, g=group: call(self.adapters[n], g)))
            for name, group in groups.items()
        ]
        return [(group, future.result()) for group, future in futures]

    def _place(
        self, legs: Sequence[LegRun], expires_at: datetime, report: BatchReport
    ) -> dict[int, Fill | None]:
        if legs:
            report.sent_until = max(report.sent_until or expires_at, expires_at)

        def call(adapter: ExchangeAdapter, group: list[LegRun]) -> list[OrderState | None]:
            return adapter.create_orders([order_request(leg, expires_at) for leg in group])

        out: dict[int, Fill | None] = {}
        for group, answer in self._per_exchange(legs, call):
            if isinstance(answer, ExchangeUnavailable):  # nothing was sent
                for leg in group:
                    out[leg.id] = Fill(LegStatus.CANCELLED, error=f"not sent: {answer}")
            elif isinstance(answer, BaseException):
                log.warning("create_orders failed; asking the exchange: %s", answer)
                out.update({leg.id: None for leg in group})
            else:
                for leg, state in zip(group, answer, strict=True):
                    out[leg.id] = None if state is None or not state.done else fill_of(state)
        return out

    def _fetch(self, legs: Sequence[LegRun]) -> dict[int, Fill | None]:
        """Ask the exchange; an id it never saw, or an open order, is cancelled."""

        def call(adapter: ExchangeAdapter, group: list[LegRun]) -> dict[int, Fill | None]:
            states = adapter.fetch_orders([leg.client_order_id for leg in group])
            found: dict[int, Fill | None] = {}
            for leg in group:
                state = states.get(leg.client_order_id)
                if state is None or not state.done:
                    state = adapter.cancel_order(leg.client_order_id)
                found[leg.id] = fill_of(state) if state.done else None
            return found

        out: dict[int, Fill | None] = {}
        for group, answer in self._per_exchange(legs, call):
            if isinstance(answer, BaseException):
                log.warning("could not ask the exchange: %s", answer)
                out.update({leg.id: None for leg in group})
            else:
                out.update(answer)
        return out

    def _resolve(self, legs: Sequence[LegRun]) -> dict[int, Fill | None]:
        return self._fetch(legs) if legs else {}

    # -- unwinds --------------------------------------------------------------------

    def _unwind(self, jobs: list[JobRun], report: BatchReport) -> list[JobRun]:
        prefix = self.config.client_order_prefix
        plans = {job.id: [u.order(prefix) for u in execution.unwind_plan(job)] for job in jobs}
        plans = {job_id: plan for job_id, plan in plans.items() if plan}
        if not plans:
            return jobs
        ids, fence = self._transact(
            lambda conn: attempts.insert_unwinds(
                conn,
                worker_id=self.identity,
                orders=[leg for plan in plans.values() for leg in plan],
                min_left_s=self.config.order_window_s,
            )
        )
        self._account(fence, list(plans), report)
        ours = set(fence.held)
        new_legs = {
            job_id: [replace(leg, id=ids[(job_id, leg.leg_index)]) for leg in plan]
            for job_id, plan in plans.items()
            if job_id in ours
        }
        flat = [leg for group in new_legs.values() for leg in group]
        fills: dict[int, Fill | None] = {}
        if flat:
            assert fence.db_now is not None  # read by the statement that wrote these legs
            fills = self._place(flat, self._expiry(fence.db_now), report)
        fills.update(self._resolve([leg for leg in flat if fills.get(leg.id) is None]))
        out = []
        for job in jobs:
            if job.id in plans and job.id not in ours:
                continue
            extra = tuple(replace(leg, fill=fills.get(leg.id)) for leg in new_legs.get(job.id, []))
            out.append(replace(job, legs=job.legs + extra))
        return out

    # -- finishing ------------------------------------------------------------------

    def _db(self, write: Callable[[], T]) -> T:
        """A write that outlives a database outage when this executor has a ``retry``."""
        return write() if self.retry is None else self.retry.call(write)

    def _finish(self, jobs: list[JobRun], report: BatchReport, *, recovering: bool) -> None:
        ends = {job.id: execution.settle(job) for job in jobs}

        def finish() -> list[int]:
            for attempt in range(self.config.finish_retries):
                try:
                    with self.engine.begin() as conn:
                        return self._finish_in(conn, jobs, ends, report, recovering)
                except DBAPIError as exc:  # a deadlock between finishing workers: redo it all
                    if not _retryable(exc) or attempt == self.config.finish_retries - 1:
                        raise
                    log.info("finish retried after %s", type(exc.orig).__name__)
            raise AssertionError("unreachable")

        moved = self._db(finish)
        report.finished.update({job_id: ends[job_id] for job_id in moved})
        report.lost.extend(job.id for job in jobs if job.id not in report.finished)
        if report.lost:
            log.warning("%d job(s) were recovered from under this worker", len(report.lost))

    def _finish_in(
        self,
        conn: Connection,
        jobs: list[JobRun],
        ends: dict[int, Settlement],
        report: BatchReport,
        recovering: bool,
    ) -> list[int]:
        pnl = {b.leg_id: b.realized_pnl_usd for job in jobs for b in execution.leg_pnl(job)}
        moved = transitions.finish(
            conn,
            worker_id=self.identity,
            ends=[self._attempt_end(job, ends[job.id], pnl) for job in jobs],
            legs=_booked_legs(jobs, pnl),
            next_legs=self._retry_legs(jobs, ends),
            recovering=recovering,
        )
        if not moved:
            return moved
        moved_set = set(moved)
        mine = [job for job in jobs if job.id in moved_set]
        booking = execution.book(((job, ends[job.id]) for job in mine), pnl)
        today = counters.add_finished(
            conn,
            worker_id=self.identity,
            finished=len(mine),
            deltas=list(booking.counters.values()),
        )
        streaks = execution.streaks(
            [ends[job.id] for job in mine],
            {job.id: [leg.exchange for leg in job.legs] for job in mine},
        )
        global_streak = streaks.pop(execution.GLOBAL)
        exchanges.record_failure_streaks(
            conn,
            [
                exchanges.StreakUpdate(name, streaks[name].reset, streaks[name].add)
                for name in sorted(streaks)
            ],
        )
        state = system.record_failure_streak(conn, reset=global_streak.reset, add=global_streak.add)
        self._protect(conn, today, state, mine, ends, report)
        system.notify(conn, system.CHANNEL_FINISHED, str(len(moved)))
        return moved

    def _protect(
        self,
        conn: Connection,
        today: counters.LossAfterFinish,
        streak: system.GlobalStreak | None,
        mine: list[JobRun],
        ends: dict[int, Settlement],
        report: BatchReport,
    ) -> None:
        """The protections a finish can trip (daily loss, the global failure streak,
        unhedged exposure), applied by :func:`perpbot_db.services.protect.run_once`.

        None of them reads the risk mode's limits (those judge market readings:
        latency, volatility, which only the tick has), so the worker needs no read of
        the limits in force: the daily loss limit comes with the counters the finish
        returned, the streak limit with the system row."""
        readings = Readings(
            system=SystemReading(
                loss_used_usd=today.loss_used_usd,
                loss_limit_usd=today.daily_loss_limit_usd,
                # an unchanged streak (None) cannot newly reach its limit
                failures=None if streak is None else streak.consecutive_failures,
                max_failures=0 if streak is None else streak.max_consecutive_failures,
            ),
            exposures=[e for job in mine for e in protections.exposures(job, ends[job.id])],
        )
        guard = protect.run_once(
            conn,
            self.config.protection,
            today.now,
            readings=readings,
            mode=RiskMode(today.risk_mode),
            status=today.status,
            actor=self.identity,
        )
        report.halted = guard.halted
        report.safe_mode.extend(guard.safe_mode_entered)

    def _attempt_end(
        self, job: JobRun, end: Settlement, pnl: dict[int, Decimal]
    ) -> transitions.AttemptEnd:
        context: dict[str, Any] = {"attempt": job.attempt, "net": _num(end.net)}
        if end.exposure_exchanges:
            context["exposure_exchanges"] = list(end.exposure_exchanges)
        return transitions.AttemptEnd(
            id=job.id,
            to_status=end.to_status.value,
            code=end.code.value,
            context=json.dumps(context),
            result=json.dumps(_result(job, end, pnl)),
            unhedged=end.unhedged,
            backoff_s=self.config.retry_backoff_s * 2 ** (job.attempt - 1),
        )

    def _retry_legs(self, jobs: list[JobRun], ends: dict[int, Settlement]) -> list[attempts.NewLeg]:
        """The next attempt's legs of every job that goes back to pending."""
        prefix = self.config.client_order_prefix
        return [
            attempts.NewLeg.of(leg)
            for job in jobs
            if ends[job.id].to_status is JobStatus.PENDING
            for leg in execution.retry_orders(job, prefix)
        ]


def _booked_legs(jobs: list[JobRun], pnl: dict[int, Decimal]) -> list[transitions.BookedLeg]:
    booked = []
    for job in jobs:
        for leg in job.legs:
            fill = leg.fill
            assert fill is not None  # only known jobs finish
            booked.append(
                transitions.BookedLeg(
                    id=leg.id,
                    status=fill.status.value,
                    filled=fill.filled,
                    avg_price=fill.avg_price,
                    fee=fill.fee_usd,
                    exchange_order_id=fill.exchange_order_id,
                    error=fill.error,
                    pnl=pnl[leg.id],
                )
            )
    return booked


def _num(value: Decimal) -> str:
    """A decimal as plain text without trailing zeros (``0.01``, ``0``)."""
    return format(value.normalize(), "f")


def _result(job: JobRun, end: Settlement, leg_pnl: dict[int, Decimal]) -> dict[str, Any]:
    pnl = sum((leg_pnl[leg.id] for leg in job.legs), Decimal(0))
    return {
        "attempt": job.attempt,
        "code": end.code.value,
        "net_quantity": _num(end.net),
        "filled": {str(leg.leg_index): _num(leg.filled) for leg in job.legs},
        "unwinds": sum(1 for leg in job.legs if leg.unwinds_leg_id is not None),
        "volume_usd": str(sum((execution.leg_volume(leg) for leg in job.legs), Decimal(0))),
        "fees_usd": str(sum((leg.fill.fee_usd for leg in job.legs if leg.fill), Decimal(0))),
        "realized_pnl_usd": str(pnl),
    }


def order_request(leg: LegRun, expires_at: datetime | None = None) -> OrderRequest:
    return OrderRequest(
        client_order_id=leg.client_order_id,
        symbol=leg.symbol,
        side=leg.side.value,
        quantity=leg.quantity,
        reduce_only=leg.reduce_only,
        expires_at=expires_at,
    )


def _attempt(call: Callable[[], T]) -> T | BaseException:
    try:
        return call()
    except Exception as exc:  # an exchange error is data here: the caller decides
        return exc


def _retryable(exc: DBAPIError) -> bool:
    return is_conflict(exc)


def new_identity(kind: str = "worker") -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def exec_config(settings: Settings) -> ExecConfig:
    return ExecConfig(
        client_order_prefix=settings.client_order_prefix,
        retry_backoff_s=settings.retry_backoff_s,
        lease_s=settings.lease_s,
        order_window_s=order_window_s(settings.lease_s),
        protection=protect.ProtectConfig.from_settings(settings),
    )
