"""Pure decisions of execution: how to hedge what filled, how a job ends, what it books.

A worker (or the recovery of an expired lease) knows, for each leg of a job's
current attempt, what the exchange answered.  From that alone, with no I/O:

* :func:`unwind_plan` — the reduce-only orders that bring the job back to flat
  when its legs filled unequally (one leg failed after its twin filled, or a
  partial fill): the excess side is reduced to the quantity the other side got;
* :func:`settle` — how the attempt ends: ``completed`` (every leg kept a fill
  and the job is flat), ``failed`` (flat but a leg got nothing), ``failed``
  and *unhedged* (not flat: the unwind failed too), or back to ``pending`` for
  another attempt when nothing at all was filled (a retry is then not blind:
  every order is known not to have filled).  A ``hedge_rebalance`` job
  (``JobRun.reduces_exposure``) offsets exposure other jobs left, so its legs
  need not net to zero: it is never unwound and completes on any fill;
* :func:`book` — the realized PnL of each leg and the daily-counter deltas.

PnL of an attempt: every filled order (legs and unwinds) is valued against
the attempt's reference price, the volume-weighted average of all its fills:
``(avg_price - ref) * filled`` for a sell, ``(ref - avg_price) * filled`` for a
buy, minus its fee.  For a flat attempt the legs' PnL sums to the exact cash
result (sells - buys - fees); an unhedged remainder is valued at the reference.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from perpbot_db.domain.lifecycle import JobStatus, LegStatus, Side

CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9-]{1,32}$")


def client_order_id(prefix: str, job_id: int, leg_index: int, attempt: int) -> str:
    """Deterministic order id: ``pb1234L0A1`` = prefix, job, leg index, attempt.

    Letters and digits only (OKX refuses hyphens), at most 32 characters (every
    major venue's limit), unique per job, leg and attempt: a submission names its
    first attempt's orders with it, a worker its unwinds and a retry's orders.
    """
    coid = f"{prefix}{job_id}L{leg_index}A{attempt}"
    if not CLIENT_ORDER_ID.match(coid):
        raise ValueError(f"client order id {coid!r} is not 1-32 letters, digits or -")
    return coid


CENT_8 = Decimal("0.00000001")
ZERO = Decimal(0)


def money(value: Decimal) -> Decimal:
    """Quantize to the ``numeric(24, 8)`` of the tables, rounding half away from zero (as SQL)."""
    return value.quantize(CENT_8, rounding=ROUND_HALF_UP)


class EndCode(StrEnum):
    FILLED = "filled"
    PARTIAL_FILL_HEDGED = "partial_fill_hedged"
    LEG_FAILED_UNWOUND = "leg_failed_unwound"
    NOTHING_FILLED = "nothing_filled"
    UNHEDGED = "unhedged"


@dataclass(frozen=True)
class Fill:
    """What the exchange says of one order (``None`` on a leg: not known yet)."""

    status: LegStatus
    filled: Decimal = ZERO
    avg_price: Decimal | None = None
    fee_usd: Decimal = ZERO
    exchange_order_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class LegRun:
    id: int
    job_id: int
    leg_index: int
    attempt: int
    exchange: str
    symbol: str
    side: Side
    quantity: Decimal
    client_order_id: str
    reduce_only: bool = False
    unwinds_leg_id: int | None = None
    fill: Fill | None = None

    @property
    def sign(self) -> int:
        """+1 long exposure (buy), -1 short (sell)."""
        return 1 if self.side is Side.BUY else -1

    @property
    def filled(self) -> Decimal:
        return ZERO if self.fill is None else self.fill.filled


@dataclass(frozen=True)
class JobRun:
    id: int
    attempt: int
    max_attempts: int
    symbol: str
    legs: tuple[LegRun, ...]
    #: A ``hedge_rebalance`` job: its legs exist to offset exposure left elsewhere, so
    #: they are not meant to net to zero; whatever fills is kept (never unwound) and
    #: what stays open is the next rebalance's (see :func:`settle`).
    reduces_exposure: bool = False

    @property
    def known(self) -> bool:
        return all(leg.fill is not None for leg in self.legs)

    @property
    def originals(self) -> tuple[LegRun, ...]:
        return tuple(leg for leg in self.legs if leg.unwinds_leg_id is None)

    def net(self) -> Decimal:
        """Signed filled quantity over every order of the attempt (0 = flat)."""
        return sum((leg.sign * leg.filled for leg in self.legs), ZERO)

    def with_fills(self, fills: Mapping[int, Fill | None]) -> JobRun:
        legs = tuple(replace(leg, fill=fills.get(leg.id, leg.fill)) for leg in self.legs)
        return replace(self, legs=legs)


@dataclass(frozen=True)
class Unwind:
    """A reduce-only order closing ``quantity`` of what leg ``unwinds`` filled."""

    unwinds: LegRun
    quantity: Decimal
    round: int = 0  # earlier unwinds of the same leg (after a recovery re-plans)

    @property
    def side(self) -> Side:
        return Side.SELL if self.unwinds.side is Side.BUY else Side.BUY

    @property
    def leg_index(self) -> int:
        return UNWIND_INDEX_BASE * (self.round + 1) + self.unwinds.leg_index

    def order(self, prefix: str) -> LegRun:
        """This unwind as a reduce-only order of the attempt, named like every order
        (:func:`client_order_id`); its ``id`` is 0 until the order is recorded."""
        leg = self.unwinds
        return replace(
            leg,
            id=0,
            leg_index=self.leg_index,
            side=self.side,
            quantity=self.quantity,
            client_order_id=client_order_id(prefix, leg.job_id, self.leg_index, leg.attempt),
            reduce_only=True,
            unwinds_leg_id=leg.id,
            fill=None,
        )


#: Unwind orders are legs numbered 100 + the leg they close, 200 + it for a second unwind
#: of the same leg, and so on (legs are at most 16): client order ids never repeat.
UNWIND_INDEX_BASE = 100


def unwind_plan(job: JobRun) -> list[Unwind]:
    """Reduce-only orders that make the job flat, largest fills first; [] when flat.

    Only legs that filled on the excess side are reduced, each by at most what
    it holds after earlier unwinds, so an unwind never opens a new position.
    """
    net = job.net()
    if net == 0 or job.reduces_exposure:
        return []
    excess = Side.BUY if net > 0 else Side.SELL
    held: dict[int, Decimal] = {}
    rounds: dict[int, int] = defaultdict(int)
    for leg in job.originals:
        if leg.side is excess and leg.filled > 0:
            held[leg.id] = leg.filled
    for leg in job.legs:  # earlier unwinds already reduced their leg
        if leg.unwinds_leg_id is not None:
            rounds[leg.unwinds_leg_id] += 1
            if leg.unwinds_leg_id in held:
                held[leg.unwinds_leg_id] -= leg.filled
    by_id = {leg.id: leg for leg in job.originals}
    remaining = abs(net)
    plan = []
    for leg_id, qty in sorted(held.items(), key=lambda kv: (-kv[1], kv[0])):
        if remaining <= 0:
            break
        take = min(qty, remaining)
        if take > 0:
            plan.append(Unwind(by_id[leg_id], take, rounds[leg_id]))
            remaining -= take
    return plan


@dataclass(frozen=True)
class Settlement:
    """How an attempt ends (``to_status`` is ``pending`` for a retry)."""

    job_id: int
    to_status: JobStatus
    code: EndCode
    unhedged: bool
    net: Decimal
    exposure_exchanges: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.to_status is JobStatus.COMPLETED


def retry_orders(job: JobRun, prefix: str) -> list[LegRun]:
    """The orders of a retry's next attempt: the job's own legs again, unfilled, named for
    that attempt (``id`` 0 until they are recorded)."""
    nxt = job.attempt + 1
    return [
        replace(
            leg,
            id=0,
            attempt=nxt,
            client_order_id=client_order_id(prefix, job.id, leg.leg_index, nxt),
            fill=None,
        )
        for leg in job.originals
    ]


def settle(job: JobRun) -> Settlement:
    """The end of an attempt whose every order is known (after unwinds, if any)."""
    if not job.known:
        raise ValueError(f"job {job.id}: settle() needs every leg's fill")
    net = job.net()
    if job.reduces_exposure:
        return _settle_rebalance(job, net)
    if net != 0:
        per_exchange: dict[str, Decimal] = defaultdict(Decimal)
        for leg in job.legs:
            per_exchange[leg.exchange] += leg.sign * leg.filled
        exposed = tuple(sorted(ex for ex, q in per_exchange.items() if q != 0))
        return Settlement(job.id, JobStatus.FAILED, EndCode.UNHEDGED, True, net, exposed)
    if not any(leg.filled > 0 for leg in job.legs):
        retry = job.attempt < job.max_attempts
        status = JobStatus.PENDING if retry else JobStatus.FAILED
        return Settlement(job.id, status, EndCode.NOTHING_FILLED, False, net)
    kept = {leg.id: leg.filled for leg in job.originals}
    for leg in job.legs:
        if leg.unwinds_leg_id is not None:
            kept[leg.unwinds_leg_id] -= leg.filled
    if all(q > 0 for q in kept.values()):
        full = all(leg.filled == leg.quantity for leg in job.originals)
        code = EndCode.FILLED if full else EndCode.PARTIAL_FILL_HEDGED
        return Settlement(job.id, JobStatus.COMPLETED, code, False, net)
    return Settlement(job.id, JobStatus.FAILED, EndCode.LEG_FAILED_UNWOUND, False, net)


def _settle_rebalance(job: JobRun, net: Decimal) -> Settlement:
    """A rebalance keeps what it filled: completed when anything filled (its legs offset
    exposure left by other jobs, so they are not expected to net to zero), else as any job
    that filled nothing.  What it did not fill stays residual exposure for the next one."""
    if not any(leg.filled > 0 for leg in job.legs):
        retry = job.attempt < job.max_attempts
        status = JobStatus.PENDING if retry else JobStatus.FAILED
        return Settlement(job.id, status, EndCode.NOTHING_FILLED, False, net)
    full = all(leg.filled == leg.quantity for leg in job.originals)
    code = EndCode.FILLED if full else EndCode.PARTIAL_FILL_HEDGED
    return Settlement(job.id, JobStatus.COMPLETED, code, False, net)


# -- booking -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LegBooking:
    leg_id: int
    realized_pnl_usd: Decimal


@dataclass
class CounterDelta:
    """What one finish adds to ``daily_counters`` for one scope."""

    scope: str
    volume_usd: Decimal = ZERO
    fees_usd: Decimal = ZERO
    realized_pnl_usd: Decimal = ZERO
    loss_used_usd: Decimal = ZERO
    jobs_completed: int = 0
    jobs_failed: int = 0


def leg_pnl(job: JobRun) -> list[LegBooking]:
    """Realized PnL of every order of the attempt against its VWAP reference price."""
    qty = sum((leg.filled for leg in job.legs if leg.filled > 0), ZERO)
    if qty == 0:
        return [LegBooking(leg.id, -money(_fee(leg))) for leg in job.legs]
    cash = sum((leg.filled * _price(leg) for leg in job.legs if leg.filled > 0), ZERO)
    ref = cash / qty
    out = []
    for leg in job.legs:
        gross = ZERO if leg.filled == 0 else -leg.sign * (_price(leg) - ref) * leg.filled
        out.append(LegBooking(leg.id, money(gross - _fee(leg))))
    return out


def _price(leg: LegRun) -> Decimal:
    assert leg.fill is not None and leg.fill.avg_price is not None
    return leg.fill.avg_price


def _fee(leg: LegRun) -> Decimal:
    return ZERO if leg.fill is None else leg.fill.fee_usd


def leg_volume(leg: LegRun) -> Decimal:
    return ZERO if leg.filled == 0 else money(leg.filled * _price(leg))


@dataclass
class Booking:
    legs: list[LegBooking] = field(default_factory=list)
    counters: dict[str, CounterDelta] = field(default_factory=dict)

    def delta(self, scope: str) -> CounterDelta:
        return self.counters.setdefault(scope, CounterDelta(scope))


GLOBAL = "global"


def book(
    finished: Iterable[tuple[JobRun, Settlement]], leg_pnls: Mapping[int, Decimal] | None = None
) -> Booking:
    """Leg PnL and counter deltas for attempts that ended (global and per exchange).

    ``jobs_failed`` counts failed attempts, a retried one included; an exchange
    counts a job when one of its orders went there.  ``loss_used_usd`` adds
    each attempt's loss (and, per exchange, the loss of its orders there).
    ``leg_pnls``: :func:`leg_pnl` results already computed, by leg id.
    """
    out = Booking()
    for job, end in finished:
        if leg_pnls is None:
            pnl = {b.leg_id: b.realized_pnl_usd for b in leg_pnl(job)}
        else:
            pnl = {leg.id: leg_pnls[leg.id] for leg in job.legs}
        out.legs.extend(LegBooking(leg_id, value) for leg_id, value in pnl.items())
        by_exchange: dict[str, Decimal] = defaultdict(Decimal)
        for leg in job.legs:
            for scope in (GLOBAL, leg.exchange):
                d = out.delta(scope)
                d.volume_usd += leg_volume(leg)
                d.fees_usd += money(_fee(leg))
                d.realized_pnl_usd += pnl[leg.id]
            by_exchange[leg.exchange] += pnl[leg.id]
        total = sum(by_exchange.values(), ZERO)
        scopes = [(GLOBAL, total), *sorted(by_exchange.items())]
        for scope, value in scopes:
            d = out.delta(scope)
            d.loss_used_usd += max(ZERO, -value)
            if end.succeeded:
                d.jobs_completed += 1
            else:
                d.jobs_failed += 1
    return out


@dataclass(frozen=True)
class Streak:
    """Consecutive failures after a batch: reset to 0 first (a success was seen), then add."""

    reset: bool
    add: int


def streaks(
    ends: Sequence[Settlement], exchanges_of: dict[int, Sequence[str]]
) -> dict[str, Streak]:
    """Global and per-exchange failure streak updates for settlements in finishing order."""
    out: dict[str, Streak] = {}
    for end in ends:
        for scope in (GLOBAL, *sorted(set(exchanges_of[end.job_id]))):
            s = out.get(scope, Streak(False, 0))
            out[scope] = Streak(True, 0) if end.succeeded else Streak(s.reset, s.add + 1)
    return out
