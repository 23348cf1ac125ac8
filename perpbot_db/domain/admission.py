"""Admission as a pure function: which candidates trade now, greedily, best score first.

Design note.  The tick (:mod:`perpbot_db.services.tick`) reads everything a
decision needs into an :class:`AdmissionContext` of plain values, inside its
serialised transaction, then calls :func:`admit_greedily`, which runs the
ordered checks of STYLE.md for each candidate — exchange enabled, blacklists
and safe mode, risk (hard limits hold, the score threshold holds back; only a
job too large for the account is rejected), global and per-exchange
concurrency, the loss budget, per-exchange in-flight notional, then capital
(tiers, caps) on every exchange at once — and returns one :class:`Verdict` per
candidate.  Each admission updates the context before the next candidate is
judged, so one tick can never overshoot a limit that it checked.

A held job must never block one that could run: :func:`candidate_window` tells
the tick's candidate query which markets are open, so jobs that could only be
held stay out of the window.  Nothing here touches the database or the clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum

from perpbot_db.domain import capital, risk
from perpbot_db.domain.decisions import HELD_UNTIL_RESCORED, Decision, DecisionCode, deny
from perpbot_db.domain.lifecycle import CapitalTier, RiskMode, Strategy

#: Leg notionals (and so reservations) are booked to this grid.
NOTIONAL_QUANTUM = Decimal("0.00000001")


class Outcome(StrEnum):
    ADMIT = "admit"
    REJECT = "reject"  # the job can never pass (decisions.REJECTING): it ends rejected
    STAY = "stay"  # stays pending with its latest decision and score


@dataclass(frozen=True)
class Reservation:
    exchange: str
    tier: CapitalTier
    amount_usd: Decimal


@dataclass(frozen=True)
class Verdict:
    job_id: int
    outcome: Outcome
    decision: Decision
    score: Decimal | None = None
    reservations: tuple[Reservation, ...] = ()
    # An admission's exchange books with its reservations held: the context after it.
    booked: Mapping[str, capital.ExchangeBook] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(frozen=True)
class Candidate:
    job: risk.JobView
    forced_by: str | None = None  # an operator's force-admit (soft limits only)


@dataclass
class AdmissionContext:
    """Everything the checks read; :func:`admit_greedily` updates a copy as it admits."""

    mode: RiskMode
    now: datetime
    books: dict[str, capital.ExchangeBook]
    enabled: frozenset[str]
    max_jobs: Mapping[str, int]  # per exchange
    inflight_jobs: dict[str, int]  # admitted + running, per exchange
    inflight_total: int
    max_total: int
    max_inflight_notional: Mapping[str, Decimal | None]
    markets: Mapping[tuple[str, str], risk.MarketView]
    blacklisted_symbols: frozenset[str] = frozenset()
    blacklisted_exchanges: frozenset[str] = frozenset()
    tier_for_strategy: Mapping[Strategy, CapitalTier] = field(
        default_factory=lambda: dict(capital.DEFAULT_TIER_FOR_STRATEGY)
    )
    limits: Mapping[RiskMode, risk.ModeLimits] = field(default_factory=lambda: risk.LIMITS)
    # What is left of today's loss limit once every in-flight job's worst case is
    # counted (None: no budget); a job is admitted only if its own worst case fits.
    loss_budget_usd: Decimal | None = None
    worst_loss_rate: Decimal = Decimal("0.005")  # a job's worst-case loss / its notional
    # Assessments already made against this context (the tick's re-score), by job id:
    # risk reads markets, equity, mode and clock, none of which admission changes.
    assessed: dict[int, risk.Assessment] = field(default_factory=dict)

    @property
    def equity(self) -> dict[str, Decimal]:
        return {name: book.equity_usd for name, book in self.books.items()}


def notional_by_exchange(job: risk.JobView, ctx: AdmissionContext) -> dict[str, Decimal]:
    """USD notional of the job's legs per exchange, at the last price (quantity x last)."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    for leg in job.legs:
        view = ctx.markets.get((leg.exchange, job.symbol))
        price = view.last if view is not None else job.notional_usd / leg.quantity
        out[leg.exchange] += (leg.quantity * price).quantize(NOTIONAL_QUANTUM)
    return dict(out)


def worst_case_loss(notional_usd: Decimal, rate: Decimal) -> Decimal:
    """A job's worst-case loss (fees on every leg, an unwind, slippage), rounded up."""
    return (notional_usd * rate).quantize(NOTIONAL_QUANTUM, rounding=ROUND_CEILING)


def loss_budget(
    *, limit_usd: Decimal, loss_used_usd: Decimal, inflight_notional_usd: Decimal, rate: Decimal
) -> Decimal:
    """What is left of the daily loss limit once today's losses and the worst case of
    every in-flight job are counted (never below zero).  Admitting only jobs whose
    worst case fits keeps the day's loss within the limit as long as no job loses
    more than its worst case (DESIGN.md invariant 7)."""
    left = limit_usd - loss_used_usd - worst_case_loss(inflight_notional_usd, rate)
    return max(Decimal(0), left)


def assess(candidate: Candidate, ctx: AdmissionContext) -> risk.Assessment:
    """The job's risk assessment in this context, computed once per context."""
    done = ctx.assessed.get(candidate.job.id)
    if done is None:
        done = risk.assess(
            candidate.job, ctx.markets, ctx.equity, ctx.mode, ctx.now, limits=ctx.limits
        )
        ctx.assessed[candidate.job.id] = done
    return done


def gate(candidate: Candidate, ctx: AdmissionContext) -> Verdict | None:
    """Exchange enabled, then the protections' locks (blacklists, safe mode): hold, never
    reject.  An exchange in safe mode still takes risk-reducing jobs."""
    job = candidate.job
    exchanges = job.exchanges
    for name in exchanges:
        if name not in ctx.enabled or name not in ctx.books:
            return Verdict(
                job.id, Outcome.STAY, deny(DecisionCode.EXCHANGE_DISABLED, exchange=name)
            )
    if job.symbol in ctx.blacklisted_symbols:
        return Verdict(
            job.id, Outcome.STAY, deny(DecisionCode.SYMBOL_BLACKLISTED, symbol=job.symbol)
        )
    for name in exchanges:
        if name in ctx.blacklisted_exchanges:
            return Verdict(
                job.id, Outcome.STAY, deny(DecisionCode.EXCHANGE_BLACKLISTED, exchange=name)
            )
    if job.strategy not in capital.RISK_REDUCING:
        for name in exchanges:
            if ctx.books[name].safe_mode:
                return Verdict(
                    job.id,
                    Outcome.STAY,
                    deny(DecisionCode.EXCHANGE_SAFE_MODE, exchange=name, strategy=job.strategy),
                )
    return None


def throttle(job: risk.JobView, ctx: AdmissionContext) -> Decision | None:
    """Global and per-exchange concurrency: full holds the job, never rejects it."""
    if ctx.inflight_total >= ctx.max_total:
        return deny(
            DecisionCode.GLOBAL_CONCURRENCY, running=ctx.inflight_total, limit=ctx.max_total
        )
    for name in job.exchanges:
        if ctx.inflight_jobs.get(name, 0) >= ctx.max_jobs.get(name, 0):
            return deny(
                DecisionCode.EXCHANGE_CONCURRENCY,
                exchange=name,
                running=ctx.inflight_jobs.get(name, 0),
                limit=ctx.max_jobs.get(name, 0),
            )
    return None


def market_key(exchange: str, symbol: str) -> str:
    """How the candidate query names a market: ``"<exchange> <symbol>"``."""
    return f"{exchange} {symbol}"


@dataclass(frozen=True)
class Window:
    """Which pending jobs the tick's candidate query may return: those whose every leg is
    on an open market.  A job with a leg anywhere else would only be held by
    :func:`judge` (a disabled, locked, full or safe-mode exchange, a blacklisted symbol,
    a market the risk gate refuses), so it stays out of the window and never takes the
    place of a job that could run; the rolling re-score keeps its decision code current.
    """

    markets: tuple[str, ...]  # open to every job
    reducing_markets: tuple[str, ...]  # on an exchange in safe mode: risk-reducing jobs only
    reducing_strategies: tuple[str, ...]
    held_codes: tuple[str, ...]  # stored holds only a re-score lifts (job-level)


def candidate_window(ctx: AdmissionContext) -> Window:
    """The open markets of this context (pure; recomputed as admissions fill exchanges)."""
    limits = ctx.limits[ctx.mode]
    everyone: set[str] = set()
    reducing_only: set[str] = set()
    for name, book in ctx.books.items():
        if name not in ctx.enabled or name in ctx.blacklisted_exchanges:
            continue
        if ctx.inflight_jobs.get(name, 0) >= ctx.max_jobs.get(name, 0):
            continue
        (reducing_only if book.safe_mode else everyone).add(name)
    markets: list[str] = []
    reducing: list[str] = []
    for (exchange, symbol), view in ctx.markets.items():
        if symbol in ctx.blacklisted_symbols or not risk.market_open(view, limits, ctx.now):
            continue
        if exchange in everyone:
            markets.append(market_key(exchange, symbol))
        elif exchange in reducing_only:
            reducing.append(market_key(exchange, symbol))
    return Window(
        markets=tuple(sorted(markets)),
        reducing_markets=tuple(sorted(reducing)),
        reducing_strategies=tuple(sorted(s.value for s in capital.RISK_REDUCING)),
        held_codes=tuple(sorted(c.value for c in HELD_UNTIL_RESCORED)),
    )


def judge(candidate: Candidate, ctx: AdmissionContext) -> Verdict:
    """The ordered checks for one candidate against the current context."""
    held = gate(candidate, ctx)
    if held is not None:
        return held
    job = candidate.job
    exchanges = job.exchanges
    assessment = assess(candidate, ctx)
    score = assessment.final_score
    decision = assessment.decision
    if decision.rejects:
        return Verdict(job.id, Outcome.REJECT, decision, score)
    forced = candidate.forced_by is not None and decision.code is DecisionCode.SCORE_BELOW_THRESHOLD
    if not decision.admitted and not forced:
        return Verdict(job.id, Outcome.STAY, decision, score)
    throttled = throttle(job, ctx)
    if throttled is not None:
        return Verdict(job.id, Outcome.STAY, throttled, score)
    if ctx.loss_budget_usd is not None:
        worst = worst_case_loss(job.notional_usd, ctx.worst_loss_rate)
        if worst > ctx.loss_budget_usd:
            return Verdict(
                job.id,
                Outcome.STAY,
                deny(
                    DecisionCode.LOSS_BUDGET,
                    worst_case_usd=str(worst),
                    budget_usd=str(ctx.loss_budget_usd),
                ),
                score,
            )
    notional = notional_by_exchange(job, ctx)
    for name in exchanges:
        cap = ctx.max_inflight_notional.get(name)
        in_flight = ctx.books[name].reserved_total
        if cap is not None and in_flight + notional[name] > cap:
            return Verdict(
                job.id,
                Outcome.STAY,
                deny(
                    DecisionCode.INFLIGHT_NOTIONAL,
                    exchange=name,
                    inflight_usd=str(in_flight),
                    amount_usd=str(notional[name]),
                    limit_usd=str(cap),
                ),
                score,
            )
    plan = capital.plan_job_reservations(
        ctx.books, notional, strategy=job.strategy, tier_for_strategy=ctx.tier_for_strategy
    )
    if isinstance(plan, Decision):
        outcome = Outcome.REJECT if plan.rejects else Outcome.STAY
        return Verdict(job.id, outcome, plan, score)
    tier = ctx.tier_for_strategy[job.strategy]
    context: dict[str, object] = {"score": str(score), "mode": ctx.mode.value}
    if forced:
        context.update(forced_by=candidate.forced_by, overridden=decision.code.value)
    return Verdict(
        job.id,
        Outcome.ADMIT,
        Decision(DecisionCode.ADMITTED, context),
        score,
        tuple(Reservation(name, tier, notional[name]) for name in exchanges),
        booked=plan,
    )


def admit_greedily(
    candidates: Iterable[Candidate], ctx: AdmissionContext
) -> tuple[list[Verdict], AdmissionContext]:
    """Judge candidates in order; each admission is charged to the context at once.

    Returns the verdicts and the context after the last admission.  Stops
    judging once the global concurrency limit is reached (the rest keep their
    previous decision, and an iterator of candidates is not read further).
    """
    ctx = replace(ctx, books=dict(ctx.books), inflight_jobs=dict(ctx.inflight_jobs))
    verdicts: list[Verdict] = []
    for candidate in candidates:
        if ctx.inflight_total >= ctx.max_total:
            break
        verdict = judge(candidate, ctx)
        verdicts.append(verdict)
        if verdict.outcome is not Outcome.ADMIT:
            continue
        ctx.books.update(verdict.booked)  # checked and planned by judge(): they fit
        for reservation in verdict.reservations:
            ctx.inflight_jobs[reservation.exchange] = (
                ctx.inflight_jobs.get(reservation.exchange, 0) + 1
            )
        ctx.inflight_total += 1
        if ctx.loss_budget_usd is not None:
            ctx.loss_budget_usd -= worst_case_loss(candidate.job.notional_usd, ctx.worst_loss_rate)
    return verdicts, ctx
