"""Capital orchestrator: three tiers per exchange, decided without a database.

Design note
-----------
Every exchange account holds three capital tiers (DESIGN.md, Capital): S1
volume, S2 arbitrage and S3 reserve, each a share of the account's equity.
One job may hold at most ``single_job_cap x equity`` on an exchange and all
active reservations together at most ``inflight_cap x equity``.

*Pure.*  The functions here take an :class:`ExchangeBook` (equity, shares,
caps, safe mode and the active reservations per tier, as the repository read
them inside the tick's transaction) and return a new book or a
:class:`~perpbot_db.domain.decisions.Decision`.  No database, no I/O, no clock, no
module-level mutable state; money is :class:`~decimal.Decimal`.  The tick
writes what they decide; hypothesis proves them in microseconds.  A book
works out what its equity, shares and caps allow (:class:`BookLimits`) once;
:func:`reserve` and :func:`release` hand that on to the book they return, so a
tick that books a thousand jobs on an exchange does not redo it per job.

*Fail closed.*  :func:`check_reservation` is an ordered list of small checks;
the first that fails answers with a stable code and ``key=value`` context
(exchange, tier, amount, limit, reserved, equity as strings of Decimals), so a
denial can be counted, grouped and understood.  A check never passes for lack
of data: a non-finite or non-Decimal amount, a book whose numbers are not
finite, equity at or below zero, an unknown exchange or a strategy without a
tier all deny; no check divides.

*All-or-nothing.*  A hedge job trades on several exchanges at once, so
:func:`plan_job_reservations` either reserves on every exchange the job
touches (visited in name order, for deterministic denials) or returns the
first denial and reserves nothing.

The invariant (DESIGN.md invariant 1, per exchange: active reservations at most
``inflight_cap x equity``, each tier at most its budget) is guaranteed at every
admission: a reservation is granted only if the book satisfies it afterwards
at that moment's equity.  Equity can then fall (a drawdown, or a settings
change that shrinks shares or caps) below what is already reserved; that is
not an admission error and nothing is taken back, but :func:`breaches` reports
it and nothing new is admitted on that exchange, in any tier, until releases
(or equity) bring the book back within its limits.  The per-job part of the
invariant (each reservation at most ``single_job_cap x equity``) is checked at
admission here; a book only knows totals, so auditing it is done over the
reservation rows.

Arithmetic is exact as long as amounts fit Decimal's default 28 significant
digits, which USD amounts with cents or satoshi-sized fractions do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cached_property
from types import MappingProxyType
from typing import Any

from perpbot_db.domain.decisions import Decision, DecisionCode, deny
from perpbot_db.domain.lifecycle import CapitalTier, Strategy

ZERO = Decimal(0)
_TIERS: frozenset[CapitalTier] = frozenset(CapitalTier)
_TIER_ORDER: tuple[CapitalTier, ...] = tuple(CapitalTier)
#: The order :func:`check_reservation` checks tier budgets in: the requested tier first.
_BUDGET_CHECK_ORDER: Mapping[CapitalTier, tuple[CapitalTier, ...]] = MappingProxyType(
    {tier: (tier, *(t for t in _TIER_ORDER if t is not tier)) for tier in _TIER_ORDER}
)

DEFAULT_TIER_FOR_STRATEGY: Mapping[Strategy, CapitalTier] = MappingProxyType(
    {
        Strategy.VOLUME: CapitalTier.VOLUME,
        Strategy.ARB: CapitalTier.ARBITRAGE,
        Strategy.FUNDING_ARB: CapitalTier.ARBITRAGE,
        Strategy.HEDGE_REBALANCE: CapitalTier.RESERVE,
    }
)

#: Strategies that reduce risk: the only ones an exchange in safe mode admits,
#: and (with emergency unwinds) the only ones that may use the reserve tier.
RISK_REDUCING: frozenset[Strategy] = frozenset({Strategy.HEDGE_REBALANCE})


def _is_finite(value: object) -> bool:
    return isinstance(value, Decimal) and value.is_finite()


def _times(ratio: Decimal, equity: Decimal) -> Decimal:
    """``ratio x equity`` floored at zero; zero when either is not a finite Decimal."""
    if not (_is_finite(ratio) and _is_finite(equity)):
        return ZERO
    return max(ZERO, ratio * equity)


@dataclass(frozen=True)
class ExchangeBook:
    """One exchange account's capital as admission sees it.

    ``reserved`` holds the active reservations per tier; a missing tier is zero.
    It is copied into a read-only mapping with every tier present, so a book
    never changes after it is made and equal books compare equal.
    """

    exchange: str
    equity_usd: Decimal
    volume_share: Decimal
    arbitrage_share: Decimal
    reserve_share: Decimal
    single_job_cap: Decimal
    inflight_cap: Decimal
    safe_mode: bool
    reserved: Mapping[CapitalTier, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _TIERS.issuperset(self.reserved):
            unknown = [key for key in self.reserved if key not in _TIERS]
            raise ValueError(f"{self.exchange}: unknown capital tier(s) {unknown!r} in reserved")
        full = {tier: self.reserved.get(tier, ZERO) for tier in _TIER_ORDER}
        object.__setattr__(self, "reserved", MappingProxyType(full))

    @cached_property
    def limits(self) -> BookLimits:
        """The limits of this book's equity, shares and caps, worked out once per book
        (a book never changes; :func:`reserve` hands them on to the book it returns)."""
        return BookLimits.of(self)

    def share(self, tier: CapitalTier) -> Decimal:
        if tier is CapitalTier.VOLUME:
            return self.volume_share
        if tier is CapitalTier.ARBITRAGE:
            return self.arbitrage_share
        return self.reserve_share

    def budget(self, tier: CapitalTier) -> Decimal:
        """``equity x share`` of the tier; zero when equity is not positive or not finite."""
        return _times(self.share(tier), self.equity_usd)

    @cached_property
    def reserved_total(self) -> Decimal:
        return sum(self.reserved.values(), ZERO)

    @property
    def single_job_limit_usd(self) -> Decimal:
        return _times(self.single_job_cap, self.equity_usd)

    @property
    def inflight_limit_usd(self) -> Decimal:
        return _times(self.inflight_cap, self.equity_usd)

    def available(self, tier: CapitalTier) -> Decimal:
        """The most one new job may reserve in ``tier`` now (ignoring safe mode and
        who may use the reserve tier): the least of the tier's room, the in-flight
        room and the single-job cap, floored at zero.  Zero when the book cannot
        admit at all (bad numbers, no equity, already over a limit)."""
        if _defect(self) or self.equity_usd <= 0 or breaches(self):
            return ZERO
        room = min(
            self.budget(tier) - self.reserved[tier],
            self.inflight_limit_usd - self.reserved_total,
            self.single_job_limit_usd,
        )
        return max(ZERO, room)


@dataclass(frozen=True, slots=True)
class BookLimits:
    """What a book's equity, shares and caps allow, independent of its reservations.

    ``defect`` is why those numbers cannot be trusted (None: they can); the
    amounts are those of :meth:`ExchangeBook.budget`,
    :attr:`~ExchangeBook.single_job_limit_usd` and
    :attr:`~ExchangeBook.inflight_limit_usd`.
    """

    defect: str | None
    budgets: Mapping[CapitalTier, Decimal]
    single_job_usd: Decimal
    inflight_usd: Decimal

    @classmethod
    def of(cls, book: ExchangeBook) -> BookLimits:
        return cls(
            defect=_terms_defect(book),
            budgets=MappingProxyType({tier: book.budget(tier) for tier in _TIER_ORDER}),
            single_job_usd=book.single_job_limit_usd,
            inflight_usd=book.inflight_limit_usd,
        )


def _defect(book: ExchangeBook) -> str | None:
    """Why the book's numbers cannot be trusted, or None."""
    return book.limits.defect or _reserved_defect(book)


def _terms_defect(book: ExchangeBook) -> str | None:
    """Why the book's equity, shares, caps or safe mode cannot be trusted, or None."""
    if not _is_finite(book.equity_usd):
        return f"equity_usd={book.equity_usd!r} is not a finite Decimal"
    for name in ("volume_share", "arbitrage_share", "reserve_share"):
        value = getattr(book, name)
        if not _is_finite(value) or not ZERO <= value <= 1:
            return f"{name}={value!r} is not a Decimal in [0, 1]"
    shares = book.volume_share + book.arbitrage_share + book.reserve_share
    if shares > 1:
        return f"tier shares add up to {shares}, more than 1"
    for name in ("single_job_cap", "inflight_cap"):
        value = getattr(book, name)
        if not _is_finite(value) or not ZERO < value <= 1:
            return f"{name}={value!r} is not a Decimal in (0, 1]"
    if not isinstance(book.safe_mode, bool):
        return f"safe_mode={book.safe_mode!r} is not a bool"
    return None


def _reserved_defect(book: ExchangeBook) -> str | None:
    """Why the book's reservations cannot be trusted, or None."""
    for tier, amount in book.reserved.items():
        if not _is_finite(amount) or amount < 0:
            return f"reserved[{tier.value}]={amount!r} is not a non-negative finite Decimal"
    return None


def breaches(book: ExchangeBook) -> list[str]:
    """Invariant 1 of DESIGN.md for this book, one line per breach (empty: it holds).

    Active reservations at most ``inflight_cap x equity``; each tier at most its
    budget.  Numbers that are not finite are a breach too: nothing can be proven.
    """
    defect = _defect(book)
    if defect is not None:
        return [f"{book.exchange}: {defect}"]
    found: list[str] = []
    total, limit = book.reserved_total, book.inflight_limit_usd
    if total > limit:
        found.append(
            f"{book.exchange}: active reservations {total} exceed the in-flight cap {limit} "
            f"({book.inflight_cap} x equity {book.equity_usd})"
        )
    for tier in CapitalTier:
        reserved, budget = book.reserved[tier], book.budget(tier)
        if reserved > budget:
            found.append(
                f"{book.exchange}: {tier.value} reservations {reserved} exceed the tier budget "
                f"{budget} ({book.share(tier)} x equity {book.equity_usd})"
            )
    return found


def _limit_context(
    book: ExchangeBook,
    tier: CapitalTier,
    amount_usd: Decimal,
    *,
    strategy: Strategy,
    limit: Decimal,
    reserved: Decimal,
    ratio_name: str,
    ratio: Decimal,
) -> dict[str, Any]:
    """Why a cap denied, in numbers: what was asked, the limit, what is held, what is left."""
    return {
        "exchange": book.exchange,
        "tier": tier.value,
        "strategy": str(strategy),
        "amount_usd": str(amount_usd),
        "limit_usd": str(limit),
        "reserved_usd": str(reserved),
        "available_usd": str(book.available(tier)),
        "equity_usd": str(book.equity_usd),
        ratio_name: str(ratio),
    }


def check_reservation(
    book: ExchangeBook,
    tier: CapitalTier,
    amount_usd: Decimal,
    *,
    strategy: Strategy,
    emergency: bool = False,
) -> Decision | None:
    """The first reason ``amount_usd`` may not be reserved in ``tier``, or None.

    Checks, in order: the amount is a positive finite Decimal; the book is
    usable (finite numbers, positive equity); safe mode admits only risk-reducing
    jobs and emergencies; the reserve tier is only for those too; the single-job
    cap; the in-flight cap; the tier's budget; no other tier over its budget
    (after a drawdown nothing is admitted until the book is back within limits).
    Every limit is inclusive: reaching it exactly is allowed.
    """
    amount = amount_usd
    if not _is_finite(amount) or amount <= 0:
        return deny(
            DecisionCode.CAPITAL_INVALID_AMOUNT,
            **_base_context(book, tier, strategy),
            amount_usd=str(amount),
        )
    if tier not in _TIERS:
        return deny(
            DecisionCode.CAPITAL_TIER_FORBIDDEN,
            **_base_context(book, tier, strategy),
            reason="unknown_tier",
        )

    limits = book.limits
    defect = limits.defect or _reserved_defect(book)
    if defect is not None:
        return deny(
            DecisionCode.EXCHANGE_DISABLED,
            **_base_context(book, tier, strategy),
            reason="invalid_book",
            detail=defect,
        )
    if book.equity_usd <= 0:
        return deny(
            DecisionCode.EXCHANGE_DISABLED,
            **_base_context(book, tier, strategy),
            reason="equity_not_positive",
            equity_usd=str(book.equity_usd),
        )

    reduces_risk = strategy in RISK_REDUCING or emergency
    if book.safe_mode and not reduces_risk:
        return deny(
            DecisionCode.EXCHANGE_SAFE_MODE,
            **_base_context(book, tier, strategy),
            emergency=emergency,
            amount_usd=str(amount),
        )
    if tier is CapitalTier.RESERVE and not reduces_risk:
        return deny(
            DecisionCode.CAPITAL_TIER_FORBIDDEN,
            **_base_context(book, tier, strategy),
            emergency=emergency,
            allowed="hedge_rebalance,emergency",
        )

    single = limits.single_job_usd
    if amount > single:
        context = _limit_context(
            book,
            tier,
            amount,
            strategy=strategy,
            limit=single,
            reserved=ZERO,
            ratio_name="single_job_cap",
            ratio=book.single_job_cap,
        )
        return deny(DecisionCode.CAPITAL_SINGLE_JOB_CAP, **context)

    inflight, total = limits.inflight_usd, book.reserved_total
    if total + amount > inflight:
        context = _limit_context(
            book,
            tier,
            amount,
            strategy=strategy,
            limit=inflight,
            reserved=total,
            ratio_name="inflight_cap",
            ratio=book.inflight_cap,
        )
        return deny(DecisionCode.CAPITAL_INFLIGHT_CAP, **context)

    for checked in _BUDGET_CHECK_ORDER[tier]:
        adding = amount if checked is tier else ZERO
        budget, reserved = limits.budgets[checked], book.reserved[checked]
        if reserved + adding > budget:
            context = _limit_context(
                book,
                checked,
                amount,
                strategy=strategy,
                limit=budget,
                reserved=reserved,
                ratio_name="share",
                ratio=book.share(checked),
            )
            context["requested_tier"] = tier.value
            return deny(DecisionCode.CAPITAL_TIER_BUDGET, **context)
    return None


def _base_context(book: ExchangeBook, tier: CapitalTier, strategy: Strategy) -> dict[str, Any]:
    return {"exchange": book.exchange, "tier": str(tier), "strategy": str(strategy)}


def reserve(
    book: ExchangeBook,
    tier: CapitalTier,
    amount_usd: Decimal,
    *,
    strategy: Strategy,
    emergency: bool = False,
) -> ExchangeBook | Decision:
    """The book with ``amount_usd`` reserved in ``tier``, or why not."""
    denial = check_reservation(book, tier, amount_usd, strategy=strategy, emergency=emergency)
    if denial is not None:
        return denial
    reserved = dict(book.reserved)
    reserved[tier] = reserved[tier] + amount_usd
    return _rebooked(book, reserved)


def release(book: ExchangeBook, tier: CapitalTier, amount_usd: Decimal) -> ExchangeBook:
    """The book with ``amount_usd`` released from ``tier``.

    Raises ValueError for an amount that is not a positive finite Decimal or
    that is more than the tier holds: releasing what was never reserved is a
    bug upstream, and hiding it would let capital leak.
    """
    if tier not in _TIERS:
        raise ValueError(f"{book.exchange}: unknown capital tier {tier!r}")
    if not _is_finite(amount_usd) or amount_usd <= 0:
        raise ValueError(f"{book.exchange}: release amount {amount_usd!r} is not positive")
    held = book.reserved[tier]
    if amount_usd > held:
        raise ValueError(
            f"{book.exchange}: releasing {amount_usd} from {tier.value} would leave "
            f"{held - amount_usd} (it holds {held})"
        )
    reserved = dict(book.reserved)
    reserved[tier] = held - amount_usd
    return _rebooked(book, reserved)


def _rebooked(book: ExchangeBook, reserved: Mapping[CapitalTier, Decimal]) -> ExchangeBook:
    """``book`` holding ``reserved`` instead; its limits carry over (reservations do not
    change them), so a tick that books many jobs works them out once per exchange."""
    new = ExchangeBook(
        exchange=book.exchange,
        equity_usd=book.equity_usd,
        volume_share=book.volume_share,
        arbitrage_share=book.arbitrage_share,
        reserve_share=book.reserve_share,
        single_job_cap=book.single_job_cap,
        inflight_cap=book.inflight_cap,
        safe_mode=book.safe_mode,
        reserved=reserved,
    )
    object.__setattr__(new, "limits", book.limits)  # fills the cached property
    return new


def with_equity(book: ExchangeBook, equity_usd: Decimal) -> ExchangeBook:
    """The book at a new equity; existing reservations stay (see :func:`breaches`)."""
    return replace(book, equity_usd=equity_usd)


def plan_job_reservations(
    books: Mapping[str, ExchangeBook],
    notional_by_exchange: Mapping[str, Decimal],
    *,
    strategy: Strategy,
    tier_for_strategy: Mapping[Strategy, CapitalTier] = DEFAULT_TIER_FOR_STRATEGY,
    emergency: bool = False,
) -> dict[str, ExchangeBook] | Decision:
    """Reserve a multi-exchange job's notional on every exchange it touches, or nothing.

    Returns the updated book of each exchange in ``notional_by_exchange`` (the
    others are untouched), or the first denial in exchange-name order; its
    context names the exchange.
    """
    if not notional_by_exchange:
        return deny(
            DecisionCode.CAPITAL_INVALID_AMOUNT,
            strategy=str(strategy),
            reason="job_touches_no_exchange",
        )
    tier = tier_for_strategy.get(strategy)
    if tier is None:
        return deny(
            DecisionCode.CAPITAL_TIER_FORBIDDEN,
            strategy=str(strategy),
            reason="no_tier_for_strategy",
        )
    planned: dict[str, ExchangeBook] = {}
    for name in sorted(notional_by_exchange):
        book = books.get(name)
        if book is None:
            return deny(
                DecisionCode.EXCHANGE_DISABLED,
                exchange=name,
                strategy=str(strategy),
                reason="unknown_exchange",
            )
        if book.exchange != name:
            return deny(
                DecisionCode.EXCHANGE_DISABLED,
                exchange=name,
                strategy=str(strategy),
                reason=f"book_is_for_{book.exchange}",
            )
        outcome = reserve(
            book, tier, notional_by_exchange[name], strategy=strategy, emergency=emergency
        )
        if isinstance(outcome, Decision):
            return outcome
        planned[name] = outcome
    return planned
