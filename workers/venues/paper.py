"""The paper exchange: a simulated venue whose book of record is the ``paper_orders`` table.

Design note.  Each paper account (one row of ``exchanges``) fills market
orders against the latest ``market_snapshots`` quote of its own exchange and
records every order it sees in ``paper_orders``, so its answers survive a
restart of the process that asked: a fresh ``PaperExchange`` answers
``fetch_orders`` from the table.

* **Fill model.**  Market orders are taker orders and fill at once: buys at
  the ask, sells at the bid, moved against the taker by a size impact of
  ``impact_bps_per_100k_usd`` bps per 100 000 USD of filled notional (the
  notional is taken at the touch).  The price is rounded against the taker to
  12 dp.  ``fee_usd = filled * price * taker_fee_bps / 10^4`` rounded half-up
  to 8 dp.  ``maker_fee_bps`` is there for the config's shape only: the paper
  venue takes no resting orders (other order types are refused), so no fill
  is ever a maker fill.
* **Faults.**  Every random outcome of an order (rejection, timeout, whether a
  timed-out order was placed, partial fill and its fraction) is drawn from a
  hash of ``(seed, exchange, client_order_id)``: reproducible whatever the
  call order, batching, process or concurrency.  A resend with the same id
  draws the same fate, so retries must use a new id (a new attempt), as they
  must on a real venue anyway.  ``faults`` forces an outcome per id for tests.
* **Refusals** are answers (status ``rejected`` with the reason) and are
  recorded, so the id is used up: an unsupported order type, a quantity off
  the 1e-12 step, missing or stale market data, an order deeper than the
  simulated book (over 10 % price impact or 1e12 USD), a reduce-only order
  that would increase or flip the position, a simulated rejection.  A duplicate client order id
  (tombstones included) is refused and the existing row is left untouched.
* **Expiry.**  An order that arrives (after the batch's latency sleep, on
  the injected ``clock``) later than its ``expires_at`` is refused before
  any other check, with an error starting ``expired:`` that names its expiry
  and how late it came.  Unlike the other refusals it is *not* recorded and
  does not use the id up: binance (``recvWindow``), bybit and okx
  (``expTime``) drop such a request at the gateway before an order exists,
  so ``fetch_orders`` answers ``None`` for it there too, and a paper venue
  that remembered it would protect a late sender in a way no real venue
  does.  What keeps a late copy from filling is the expiry itself (every
  copy of a request carries the same one) and, before it, the worker's
  lease fence.
* **Round trips.**  ``create_orders`` reads the batch's quotes in one query
  and writes the batch in one ``INSERT ... SELECT FROM unnest(...) ON
  CONFLICT DO NOTHING`` in autocommit.  A batch with reduce-only orders runs
  in one transaction instead: a per-account advisory lock (reduce-only checks
  are serialised, so two unwinds cannot both pass against the same position),
  the quotes, one query for positions and already-known ids, the insert.
* **Balance** is the wallet balance a futures venue reports: starting equity
  (``exchanges.starting_equity_usd``) + realized PnL - fees.  PnL is realized
  when a fill reduces a position, against its average entry price (average
  cost, as the large perp venues compute it); unrealized PnL of open
  positions is left out.  Once every symbol is flat this equals the cash
  effect of the fills: sells' notional - buys' notional - fees.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from decimal import localcontext as decimal_context
from types import MappingProxyType

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from workers.venues import paper_sql
from workers.venues.exchange import (
    EXPIRED,
    ExchangeError,
    ExchangeUnavailable,
    OrderRequest,
    OrderState,
    OrderStatus,
)

PRICE_STEP = Decimal("1e-12")  # paper_orders.avg_price is numeric(28, 12)
QUANTITY_STEP = Decimal("1e-12")  # paper_orders.quantity is numeric(28, 12)
USD_STEP = Decimal("1e-8")  # money is numeric(24, 8)
BPS = Decimal(10_000)
IMPACT_NOTIONAL = Decimal(100_000)
PARTIAL_MIN = Decimal("0.2")
PARTIAL_MAX = Decimal("0.9")
MAX_QUANTITY = Decimal("1e15")  # numeric(28, 12) holds < 1e16
MAX_NOTIONAL_USD = Decimal("1e12")  # per order; fees must fit numeric(24, 8)
MAX_IMPACT = Decimal("0.1")  # a deeper sweep is refused: the simulated book is not that deep

#: Connection failures: before the insert nothing was sent, after it the outcome is unknown.
_UNREACHABLE = (OperationalError, InterfaceError, PoolTimeout)
_WIDE = Context(prec=60)

DUPLICATE = "duplicate client order id"
SIMULATED_REJECTION = "rejected by the venue (simulated)"
TOMBSTONE = "tombstone: cancelled before any order with this id arrived"

FAULT_KINDS = ("fill", "reject", "timeout_filled", "timeout_lost", "partial")


@dataclass(frozen=True)
class Fault:
    """A forced outcome: ``fill`` (no randomness), ``reject``, ``timeout_filled``
    (placed and filled in full, answer lost), ``timeout_lost`` (never arrived),
    ``partial`` (``fraction`` filled, the rest cancelled)."""

    kind: str
    fraction: Decimal | None = None


def parse_fault(spec: str) -> Fault:
    """``"reject"``, ``"timeout_filled"``, ``"timeout_lost"``, ``"fill"``, ``"partial:0.25"``."""
    kind, _, arg = spec.partition(":")
    if kind == "partial":
        try:
            fraction = Decimal(arg)
        except ArithmeticError:
            fraction = Decimal("NaN")
        if not fraction.is_finite() or not 0 < fraction < 1:
            raise ValueError(f"fault {spec!r}: partial needs a fraction strictly between 0 and 1")
        return Fault("partial", fraction)
    if kind not in FAULT_KINDS or arg:
        raise ValueError(f"fault {spec!r} is not one of {', '.join(FAULT_KINDS)}[:<fraction>]")
    return Fault(kind)


def _no_faults() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class PaperConfig:
    """The simulated venue's behaviour; rates are probabilities per order."""

    seed: int = 7
    latency_ms: float = 20.0  # mean per create_orders call, jitter +-50 % (seeded); 0: no sleep
    taker_fee_bps: Decimal = Decimal(5)
    maker_fee_bps: Decimal = Decimal(2)  # unused: market orders are always taker
    impact_bps_per_100k_usd: Decimal = Decimal("1.0")
    reject_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_fills: float = 0.5  # share of timed-out orders that were placed (and filled)
    partial_fill_rate: float = 0.0
    max_snapshot_age_s: float = 60.0
    # False: random rejections, timeouts and partial fills spare reduce-only orders (a venue
    # that always accepts closing orders); forced faults still apply.
    fail_reduce_only: bool = True
    faults: Mapping[str, str] = field(default_factory=_no_faults)  # client order id -> fault

    def __post_init__(self) -> None:
        for name in ("taker_fee_bps", "maker_fee_bps", "impact_bps_per_100k_usd"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, Decimal(value))
            elif not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise ValueError(f"{name} must be a non-negative Decimal, not {value!r}")
        for name in ("reject_rate", "timeout_rate", "timeout_fills", "partial_fill_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {getattr(self, name)!r}")
        if not self.latency_ms >= 0:
            raise ValueError(f"latency_ms must be >= 0, not {self.latency_ms!r}")
        if not self.max_snapshot_age_s > 0:
            raise ValueError(f"max_snapshot_age_s must be > 0, not {self.max_snapshot_age_s!r}")
        for spec in self.faults.values():
            parse_fault(spec)


# -- the seeded draws -------------------------------------------------------------


@dataclass(frozen=True)
class Draws:
    """One order's random numbers: uniforms in [0, 1) and a partial fraction in [0.2, 0.9]."""

    reject: float
    timeout: float
    timeout_fills: float
    partial: float
    fraction: Decimal


def draws_for(seed: int, exchange: str, client_order_id: str) -> Draws:
    """A keyed hash, not ``random`` nor ``hash()``: the same on every process and run."""
    digest = hashlib.blake2b(
        f"{seed}\x1f{exchange}\x1f{client_order_id}".encode(), digest_size=40
    ).digest()
    words = [int.from_bytes(digest[i : i + 8], "big") for i in range(0, 40, 8)]
    steps = (PARTIAL_MAX - PARTIAL_MIN) * 1_000_000  # fraction in steps of 1e-6, both ends in
    fraction = PARTIAL_MIN + Decimal(words[4] % (int(steps) + 1)).scaleb(-6)
    reject, timeout, timeout_fills, partial = (w / 2**64 for w in words[:4])
    return Draws(reject, timeout, timeout_fills, partial, fraction)


@dataclass(frozen=True)
class Plan:
    """What the venue will do with one order, before its own checks.

    ``arrives``: the order reaches the venue (else nothing is recorded);
    ``answered``: the caller gets the answer (else ``None``);
    ``reject``: a simulated rejection; ``fraction``: a partial fill.
    """

    arrives: bool = True
    answered: bool = True
    reject: bool = False
    fraction: Decimal | None = None


def plan_for(config: PaperConfig, exchange: str, client_order_id: str) -> Plan:
    spec = config.faults.get(client_order_id) if config.faults else None
    if spec is not None:
        fault = parse_fault(spec)
        if fault.kind == "timeout_lost":
            return Plan(arrives=False, answered=False)
        if fault.kind == "timeout_filled":
            return Plan(answered=False)
        if fault.kind == "reject":
            return Plan(reject=True)
        if fault.kind == "partial":
            return Plan(fraction=fault.fraction)
        return Plan()
    if not (config.reject_rate or config.timeout_rate or config.partial_fill_rate):
        return Plan()
    d = draws_for(config.seed, exchange, client_order_id)
    if d.timeout < config.timeout_rate and d.timeout_fills >= config.timeout_fills:
        return Plan(arrives=False, answered=False)
    return Plan(
        answered=not d.timeout < config.timeout_rate,
        reject=d.reject < config.reject_rate,
        fraction=d.fraction if d.partial < config.partial_fill_rate else None,
    )


def latency_seconds(config: PaperConfig, exchange: str, client_order_ids: Sequence[str]) -> float:
    """The batch's one round trip: the mean latency with a seeded +-50 % jitter."""
    if config.latency_ms <= 0:
        return 0.0
    key = "\x1e".join(client_order_ids)
    digest = hashlib.blake2b(
        f"{config.seed}\x1f{exchange}\x1flatency\x1f{key}".encode(), digest_size=8
    ).digest()
    jitter = int.from_bytes(digest, "big") / 2**64  # [0, 1)
    return config.latency_ms * (0.5 + jitter) / 1000.0


# -- prices, fees, PnL ------------------------------------------------------------


def fill_price(side: str, quote: paper_sql.Quote, filled: Decimal, impact_bps: Decimal) -> Decimal:
    """Buys at the ask, sells at the bid, moved against the taker by the size impact."""
    touch = quote.ask if side == "buy" else quote.bid
    impact = impact_bps * (filled * touch) / IMPACT_NOTIONAL / BPS
    if side == "buy":
        return (touch * (1 + impact)).quantize(PRICE_STEP, ROUND_CEILING)
    return (touch * (1 - impact)).quantize(PRICE_STEP, ROUND_FLOOR)


def taker_fee(filled: Decimal, price: Decimal, fee_bps: Decimal) -> Decimal:
    return (filled * price * fee_bps / BPS).quantize(USD_STEP, ROUND_HALF_UP)


@dataclass(frozen=True)
class Fill:
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal


def realized_pnl(fills: Iterable[Fill]) -> Decimal:
    """Realized PnL of a fill sequence, average-cost method, before fees.

    A fill in the position's direction (or from flat) moves the average entry;
    a fill against it realizes ``closed * (price - entry)`` (sign of the
    position); the part of a flip beyond flat opens at the fill price.
    """
    book: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (signed quantity, entry)
    pnl = Decimal(0)
    with decimal_context(_WIDE):
        for f in fills:
            delta = f.quantity if f.side == "buy" else -f.quantity
            position, entry = book.get(f.symbol, (Decimal(0), Decimal(0)))
            new = position + delta
            if position == 0 or (position > 0) == (delta > 0):
                entry = (abs(position) * entry + abs(delta) * f.price) / abs(new)
            else:
                closed = min(abs(delta), abs(position))
                pnl += closed * (f.price - entry) * (1 if position > 0 else -1)
                if new == 0:
                    entry = Decimal(0)
                elif (new > 0) != (position > 0):
                    entry = f.price
            book[f.symbol] = (new, entry)
    return pnl


# -- the venue --------------------------------------------------------------------


def _state_from_row(row: paper_sql.PaperOrderState) -> OrderState:
    return OrderState(
        client_order_id=row.client_order_id,
        status=row.status,
        filled=row.filled_quantity,
        average=row.avg_price,
        fee_usd=row.fee_usd,
        exchange_order_id=f"paper-{row.id}",
        error=row.error,
    )


def _order_row(order: OrderRequest, state: OrderState) -> paper_sql.PaperOrderRow:
    """The ``paper_orders`` row recording ``order`` and the venue's answer to it."""
    return paper_sql.PaperOrderRow(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity if _storable(order.quantity) else None,
        reduce_only=order.reduce_only,
        status=str(state.status),
        filled_quantity=state.filled,
        avg_price=state.average,
        fee_usd=state.fee_usd,
        error=state.error,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PaperExchange:
    """One paper account; stateless apart from its configuration, safe to share across threads."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        config: PaperConfig | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.config = config or PaperConfig()
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"PaperExchange({self.name!r}, seed={self.config.seed})"

    # -- orders --

    def create_orders(self, orders: Sequence[OrderRequest]) -> list[OrderState | None]:
        if not orders:
            return []
        delay = latency_seconds(self.config, self.name, [o.client_order_id for o in orders])
        if delay > 0:
            self._sleep(delay)
        plans = [
            plan_for(self.config, self.name, o.client_order_id)
            if self.config.fail_reduce_only
            or not o.reduce_only
            or o.client_order_id in self.config.faults
            else Plan()
            for o in orders
        ]
        arriving = [i for i, plan in enumerate(plans) if plan.arrives]
        answers: list[OrderState | None] = [None] * len(orders)
        now = self._clock()  # the batch reaches the venue
        late = {i: why for i in arriving if (why := _expired(orders[i], now)) is not None}
        for i, why in late.items():  # refused at the gateway: no order, nothing recorded
            if plans[i].answered:
                answers[i] = _refused(orders[i].client_order_id, why)
        arriving = [i for i in arriving if i not in late]
        if not arriving:
            return answers
        with_reduce_only = any(orders[i].reduce_only for i in arriving)
        sent = False
        try:
            with self._engine.begin() if with_reduce_only else self._autocommit.connect() as conn:
                states = self._evaluate(conn, orders, plans, arriving, with_reduce_only, now)
                rows = [
                    _order_row(orders[i], state)
                    for i, state in states.items()
                    if state.error != DUPLICATE
                ]
                sent = True
                order_ids = paper_sql.paper_order_insert_batch(conn, self.name, rows)
        except _UNREACHABLE as exc:
            if not sent:
                raise ExchangeUnavailable(f"{self.name}: {exc}") from exc
            return answers  # the insert may or may not have committed: no answer
        for i, state in states.items():
            if not plans[i].answered:
                continue
            if state.error == DUPLICATE:
                answers[i] = state
            elif state.client_order_id in order_ids:
                answers[i] = OrderState(
                    client_order_id=state.client_order_id,
                    status=state.status,
                    filled=state.filled,
                    average=state.average,
                    fee_usd=state.fee_usd,
                    exchange_order_id=f"paper-{order_ids[state.client_order_id]}",
                    error=state.error,
                )
            else:  # inserted concurrently by someone else since the precheck
                answers[i] = _refused(state.client_order_id, DUPLICATE)
        return answers

    def _evaluate(
        self,
        conn: Connection,
        orders: Sequence[OrderRequest],
        plans: Sequence[Plan],
        arriving: Sequence[int],
        with_reduce_only: bool,
        now: datetime,
    ) -> dict[int, OrderState]:
        """Each arriving order's outcome, in request order (fills move later reduce-only checks)."""
        if with_reduce_only:
            paper_sql.paper_exchange_lock(conn, self.name)
        quotes = paper_sql.market_quote_fetch(
            conn, self.name, sorted({orders[i].symbol for i in arriving})
        )
        positions: dict[str, Decimal] = {}
        seen: set[str] = set()
        tracked = {orders[i].symbol for i in arriving if orders[i].reduce_only}
        if tracked:
            positions, seen = paper_sql.paper_order_precheck(
                conn, self.name, sorted(tracked), [orders[i].client_order_id for i in arriving]
            )
        config = self.config
        states: dict[int, OrderState] = {}
        with decimal_context(_WIDE):
            for i in arriving:
                order, plan = orders[i], plans[i]
                coid = order.client_order_id
                if coid in seen:
                    states[i] = _refused(coid, DUPLICATE)
                    continue
                seen.add(coid)
                reason = self._refusal(order, quotes.get(order.symbol), now, positions)
                if reason is None and plan.reject:
                    reason = SIMULATED_REJECTION
                if reason is not None:
                    states[i] = _refused(coid, reason)
                    continue
                filled = order.quantity
                if plan.fraction is not None:
                    filled = (order.quantity * plan.fraction).quantize(QUANTITY_STEP, ROUND_DOWN)
                if filled == 0:
                    states[i] = OrderState(coid, OrderStatus.CANCELLED, filled, None, Decimal(0))
                    continue
                price = fill_price(
                    order.side, quotes[order.symbol], filled, config.impact_bps_per_100k_usd
                )
                whole = filled == order.quantity
                states[i] = OrderState(
                    coid,
                    OrderStatus.FILLED if whole else OrderStatus.PARTIALLY_FILLED,
                    filled,
                    price,
                    taker_fee(filled, price, config.taker_fee_bps),
                )
                if order.symbol in tracked:  # later reduce-only orders see this fill
                    signed = filled if order.side == "buy" else -filled
                    positions[order.symbol] = positions.get(order.symbol, Decimal(0)) + signed
        return states

    def _refusal(
        self,
        order: OrderRequest,
        quote: paper_sql.Quote | None,
        now: datetime,
        positions: Mapping[str, Decimal],
    ) -> str | None:
        """The venue's own checks, in the order a venue runs them; ``None``: accepted."""
        if order.type != "market":
            return f"unsupported order type {order.type!r}: the paper venue fills market orders"
        if not _storable(order.quantity):
            return (
                f"quantity {order.quantity} is not a multiple of the venue's step "
                f"{QUANTITY_STEP} below {MAX_QUANTITY}"
            )
        if quote is None:
            return f"no market data for {order.symbol} on {self.name}"
        age = (now - quote.observed_at).total_seconds()
        if age > self.config.max_snapshot_age_s:
            return (
                f"stale market data for {order.symbol} on {self.name}: "
                f"{age:.1f}s old, limit {self.config.max_snapshot_age_s:g}s"
            )
        notional = order.quantity * (quote.ask if order.side == "buy" else quote.bid)
        impact = self.config.impact_bps_per_100k_usd * notional / IMPACT_NOTIONAL / BPS
        if notional > MAX_NOTIONAL_USD or impact > MAX_IMPACT:
            return (
                f"not enough liquidity for {notional:.2f} USD of {order.symbol} "
                f"on {self.name} (price impact {impact * BPS:.0f} bps)"
            )
        if order.reduce_only:
            position = positions.get(order.symbol, Decimal(0))
            delta = order.signed_quantity
            if position == 0:
                return f"reduce-only order but no position in {order.symbol}"
            if (position > 0) == (delta > 0):
                return f"reduce-only order would increase the position {position} in {order.symbol}"
            if abs(delta) > abs(position):
                return f"reduce-only order would flip the position {position} in {order.symbol}"
        return None

    def fetch_orders(self, client_order_ids: Sequence[str]) -> dict[str, OrderState | None]:
        found: dict[str, OrderState | None] = dict.fromkeys(client_order_ids)
        if not client_order_ids:
            return found
        try:
            with self._autocommit.connect() as conn:
                rows = paper_sql.paper_order_fetch(conn, self.name, client_order_ids)
        except _UNREACHABLE as exc:
            raise ExchangeUnavailable(f"{self.name}: {exc}") from exc
        for row in rows:
            found[row.client_order_id] = _state_from_row(row)
        return found

    def cancel_order(self, client_order_id: str) -> OrderState:
        if not client_order_id:
            raise ValueError("client_order_id must not be empty")
        try:
            with self._autocommit.connect() as conn:
                for _ in range(3):
                    row = paper_sql.paper_order_cancel(
                        conn, self.name, client_order_id, tombstone_error=TOMBSTONE
                    )
                    if row is not None:
                        return _state_from_row(row)
        except _UNREACHABLE as exc:
            raise ExchangeUnavailable(f"{self.name}: {exc}") from exc
        raise ExchangeError(f"{self.name}: cancel of {client_order_id!r} kept racing an insert")

    # -- account --

    def positions(self) -> dict[str, Decimal]:
        try:
            with self._autocommit.connect() as conn:
                return paper_sql.paper_position_by_symbol(conn, self.name)
        except _UNREACHABLE as exc:
            raise ExchangeUnavailable(f"{self.name}: {exc}") from exc

    def balance(self) -> Decimal:
        """Starting equity + realized PnL (average cost) - fees, in USD to 8 dp."""
        try:
            with self._autocommit.connect() as conn:
                start = paper_sql.paper_starting_equity(conn, self.name)
                fills = paper_sql.paper_fill_list(conn, self.name)
        except _UNREACHABLE as exc:
            raise ExchangeUnavailable(f"{self.name}: {exc}") from exc
        if start is None:
            raise ExchangeError(f"{self.name} is not in the exchanges table")
        fees = sum((f.fee_usd for f in fills), Decimal(0))
        replayed = (Fill(f.symbol, f.side, f.filled_quantity, f.avg_price) for f in fills)
        with decimal_context(_WIDE):
            return (start + realized_pnl(replayed) - fees).quantize(USD_STEP, ROUND_HALF_UP)


def _storable(quantity: Decimal) -> bool:
    """Fits ``paper_orders.quantity`` exactly (else a refusal records it as NULL)."""
    return quantity < MAX_QUANTITY and quantity == quantity.quantize(QUANTITY_STEP, ROUND_DOWN)


def _expired(order: OrderRequest, now: datetime) -> str | None:
    """Why the order is refused for arriving past its expiry (``None``: in time)."""
    if order.expires_at is None or now <= order.expires_at:
        return None
    late = (now - order.expires_at).total_seconds()
    return (
        f"{EXPIRED} the request arrived {late:.3f}s after its expiry "
        f"{order.expires_at.isoformat()} (recvWindow/expTime): no order was placed"
    )


def _refused(client_order_id: str, reason: str) -> OrderState:
    return OrderState(
        client_order_id, OrderStatus.REJECTED, Decimal(0), None, Decimal(0), error=reason
    )
