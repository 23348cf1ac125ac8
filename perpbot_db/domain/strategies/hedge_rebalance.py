"""Hedge rebalancer: close the residual exposure an unhedged job left, from the reserve tier.

Where exposure comes from.  When one leg of a job fills and the other cannot,
the worker unwinds the filled leg; if the unwind fails too, the job ends
``failed`` with ``hedge_jobs.unhedged`` set and its legs (unwind orders
included, ``legs.unwinds_leg_id``) no longer net to zero
(:func:`perpbot_db.domain.protections.exposures`; DESIGN.md invariant 8).  The
residual of a symbol on an exchange is the signed filled quantity of the legs
of unhedged jobs plus those of ``hedge_rebalance`` jobs (which exist to offset
them): :class:`Residual`, read by the producer service.

What a rebalance does.  For a symbol whose net residual over all exchanges is
worth at least ``min_usd``, one job trades the opposite of the net: on the
exchanges holding residual of the net's sign, each reduced by up to what it
holds, in proportion to their holdings.  A job must touch two exchanges (a
hedge needs two: ``perpbot submit`` refuses fewer), so when one exchange holds
it all the offset is split: half reduces that exchange, half is traded on the
other venue with the best price for that side.  Either way the symbol's delta
returns to zero; what remains per exchange is a hedged pair.
``hedge_rebalance`` jobs reserve the reserve tier (S3), are admitted even on an
exchange in safe mode (they reduce risk) and are judged on gross crossing cost,
not on a minimum score (the risk manager).

Once per round.  A symbol with a rebalance job still on its way (pending to
running) gets nothing new.  The key is ``rebal:<symbol>:<round>`` where the round
counts the rebalance jobs the symbol has had, so a re-run submits nothing new and
a finished rebalance that left residual starts the next round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from perpbot_db.domain.lifecycle import Side, Strategy
from perpbot_db.domain.strategies.base import (
    BPS,
    ZERO,
    Market,
    Output,
    Quote,
    Venue,
    crossing_cost_bps,
    pair_body,
    quantity_for,
    scores,
    short_symbol,
    size_cap_usd,
)


class RebalanceParams(BaseModel):
    """``[strategies.hedge_rebalance]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    min_usd: Annotated[Decimal, Field(ge=0, le=1_000_000_000, allow_inf_nan=False)] = Decimal(10)
    deadline_s: Annotated[float, Field(gt=0, le=3600)] = 60.0


@dataclass(frozen=True)
class Residual:
    """Open quantity of ``symbol`` on ``exchange`` left by unhedged jobs (long +)."""

    exchange: str
    symbol: str
    quantity: Decimal


@dataclass(frozen=True)
class RebalanceState:
    """The residuals, and per symbol: rebalance jobs so far and whether one is on its way."""

    residuals: Sequence[Residual] = ()
    rounds: Mapping[str, int] = field(default_factory=dict)
    in_flight: frozenset[str] = frozenset()


def _offset_legs(
    symbol: str,
    net: Decimal,
    held: Mapping[str, Decimal],
    market: Market,
    venues: Mapping[str, Venue],
) -> list[tuple[str, Side, Decimal]] | str:
    """Legs that trade ``-net`` of ``symbol``; a reason when none can."""
    side = Side.SELL if net > 0 else Side.BUY
    quoted = {q.exchange: q for q in market.venues_quoting(symbol, venues, safe_mode_ok=True)}
    same_sign = sorted(
        (ex for ex, qty in held.items() if qty * net > 0 and ex in quoted),
        key=lambda ex: (-abs(held[ex]), ex),
    )
    legs: list[tuple[str, Side, Decimal]] = []
    want = abs(net)
    holding = sum((abs(held[ex]) for ex in same_sign), Decimal(0))
    if holding > 0:
        # The holders of the net's sign hold at least the net (the others only offset it):
        # each is reduced in proportion to what it holds, the rounding dust on the largest.
        share = min(Decimal(1), want / holding)
        legs = [(ex, side, quantity_for(abs(held[ex]) * share, Decimal(1))) for ex in same_sign]
        ex, _, qty = legs[0]
        legs[0] = (ex, side, qty + want - sum((q for _, _, q in legs), Decimal(0)))
    elif quoted:  # no holder has a fresh quote: the best venue takes it (split below)
        legs = [(_best(list(quoted.values()), side).exchange, side, want)]
    else:
        return "no venue quotes it to take the offset"
    if len(legs) == 1:
        exchange, _, qty = legs[0]
        others = [q for ex, q in quoted.items() if ex != exchange]
        if not others:
            return "only one venue quotes it and a job needs two"
        half = quantity_for(qty / 2, Decimal(1))
        legs = [(exchange, side, qty - half), (_best(others, side).exchange, side, half)]
    return [leg for leg in legs if leg[2] > 0]


def _best(quotes: Sequence[Quote], side: Side) -> Quote:
    """The venue with the best price for ``side``: highest bid to sell, lowest ask to buy."""
    if side is Side.SELL:
        return max(quotes, key=lambda q: (q.bid, q.exchange))
    return min(quotes, key=lambda q: (q.ask, q.exchange))


def hedge_rebalance(
    market: Market,
    venues: Mapping[str, Venue],
    params: RebalanceParams,
    state: RebalanceState,
    now: datetime,
) -> Output:
    """One job per symbol whose residual net exposure is worth at least ``min_usd``."""
    out = Output(Strategy.HEDGE_REBALANCE)
    if not params.enabled:
        return out
    by_symbol: dict[str, dict[str, Decimal]] = {}
    for r in state.residuals:
        if r.quantity != 0:
            held = by_symbol.setdefault(r.symbol, {})
            held[r.exchange] = held.get(r.exchange, ZERO) + r.quantity
    for symbol, held in sorted(by_symbol.items()):
        net = sum(held.values(), ZERO)
        if net == 0:
            continue  # hedged across venues: no delta to close
        quotes = market.venues_quoting(symbol, venues, safe_mode_ok=True)
        if not quotes:
            out.skip(symbol, "no fresh quote to value the residual")
            continue
        price = max(q.last for q in quotes)
        if abs(net) * price < params.min_usd:
            out.skip(symbol, f"net residual {net:f} is worth less than min_usd {params.min_usd}")
            continue
        if symbol in state.in_flight:
            out.skip(symbol, "a rebalance job is already on its way")
            continue
        cap = size_cap_usd(*(venues[q.exchange] for q in quotes))
        if abs(net) * price > cap * 2:  # two legs at most a cap each: this round takes part
            net = quantity_for(cap * 2, price) * (1 if net > 0 else -1)
        legs = _offset_legs(symbol, net, held, market, venues)
        if isinstance(legs, str):
            out.skip(symbol, legs)
            continue
        by_exchange = {q.exchange: q for q in quotes}
        notional = sum((qty for _, _, qty in legs), ZERO) * price
        traded = sum((qty for _, _, qty in legs), ZERO)
        fees = sum((venues[ex].taker_fee_bps * qty for ex, _, qty in legs), ZERO) / traded
        cost = (
            sum(
                (crossing_cost_bps(qty * price, by_exchange[ex]) * qty for ex, _, qty in legs), ZERO
            )
            / traded
        )
        edge = -(fees + cost)
        gross = sum((crossing_cost_bps(qty * price, by_exchange[ex]) for ex, _, qty in legs), ZERO)
        round_ = state.rounds.get(symbol, 0)
        out.bodies.append(
            pair_body(
                strategy=Strategy.HEDGE_REBALANCE,
                symbol=symbol,
                legs=legs,
                notional_usd=notional,
                expected_edge_bps=edge,
                expected_pnl_usd=edge * notional / BPS,
                expected_volume_usd=notional,
                idempotency_key=f"rebal:{short_symbol(symbol)}:{round_}",
                deadline=now + timedelta(seconds=params.deadline_s),
                components=scores(
                    [by_exchange[ex] for ex, _, _ in legs],
                    notional_usd=notional,
                    equity_usd=min(venues[ex].equity_usd for ex, _, _ in legs),
                    cost_bps=gross,
                    funding_received_bps_8h=ZERO,
                    volume_usd=notional,
                ),
                metadata={
                    "source": "hedge_rebalance",
                    "net_residual": format(net, "f"),
                    "round": round_,
                },
            )
        )
    return out
