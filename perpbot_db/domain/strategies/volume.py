"""Hedged volume: meet each exchange's daily volume target within a fee budget.

The volume program trades on purpose: it opens a delta-neutral pair (buy on one
venue, sell the same quantity on another, never both on one venue), holds it a
random while and closes it with the opposite pair.  Each pair trades its
notional twice on each of two venues, and pays the taker fees and the spread.

* **Which venues.**  The two venues furthest below their target for the UTC day
  (``daily_target_usd``, or ``targets.NAME``) that quote the symbol; long where
  funding per day is lower, so holding earns rather than pays.  The symbol is
  drawn at random among those (``symbols``, or every quoted one).
* **Randomised.**  Size uniform in ``[min_notional_usd, max_notional_usd]`` (and
  within the single-job cap and what the targets still need), hold uniform in
  ``[min_hold_s, max_hold_s]``, both from the seeded ``random.Random`` given:
  the same seed and inputs give the same jobs.
* **At most one opening per ``window_s``** and ``max_open_pairs`` pairs open or
  opening at once.  The opening's key names its window (``vol:open:<window>``);
  the run repeated in that window repeats the key, so nothing is submitted twice.
* **Closing.**  An opened pair whose hold has passed (``close_after`` in its
  metadata, read back as :class:`OpenPair`) is closed by a job keyed
  ``<opening key>:close`` (:func:`~perpbot_db.domain.strategies.base.close_body`): one
  close per opening at a time, whatever the number of runs, and a new one
  (``:close:<n>``) once a close failed or expired.
  Closing reduces exposure and goes ahead even past the budget.
* **Budget.**  Today's cost per volume over the configured venues, ``(fees +
  realised trading loss) / volume`` in bps, is checked before each opening;
  past ``max_cost_bps`` the program stops opening for the day.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perpbot_db.domain.lifecycle import Side, Strategy
from perpbot_db.domain.strategies.base import (
    BPS,
    HUNDRED,
    NO_QUOTES,
    RISK_FUNDING_HOURS,
    ZERO,
    Market,
    OpenPair,
    Output,
    Quote,
    Venue,
    close_body,
    crossing_cost_bps,
    key_time,
    pair_body,
    quantity_for,
    scores,
    size_cap_usd,
    window_start,
)

Usd = Annotated[Decimal, Field(gt=0, le=10_000_000_000, allow_inf_nan=False)]


class VolumeParams(BaseModel):
    """``[strategies.volume]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    daily_target_usd: Usd = Decimal(2_000_000)
    targets: dict[str, Usd] = Field(default_factory=dict)
    min_notional_usd: Usd = Decimal(1000)
    max_notional_usd: Usd = Decimal(5000)
    min_hold_s: Annotated[float, Field(ge=0, le=86_400)] = 5.0
    max_hold_s: Annotated[float, Field(ge=0, le=86_400)] = 20.0
    max_cost_bps: Annotated[Decimal, Field(ge=0, le=1000, allow_inf_nan=False)] = Decimal(8)
    max_open_pairs: Annotated[int, Field(ge=1, le=1000)] = 3
    window_s: Annotated[float, Field(gt=0, le=86_400)] = 5.0
    deadline_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    symbols: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ranges(self) -> VolumeParams:
        if self.min_notional_usd > self.max_notional_usd:
            raise ValueError("min_notional_usd must not exceed max_notional_usd")
        if self.min_hold_s > self.max_hold_s:
            raise ValueError("min_hold_s must not exceed max_hold_s")
        return self

    def target(self, exchange: str) -> Decimal:
        return self.targets.get(exchange, self.daily_target_usd)


@dataclass(frozen=True)
class VenueDay:
    """Today's counters of one exchange (``daily_counters``, scope = the exchange)."""

    exchange: str
    volume_usd: Decimal
    fees_usd: Decimal
    realized_pnl_usd: Decimal


@dataclass(frozen=True)
class VolumeState:
    """What the program needs besides the market: today's counters, the pairs opened and
    not closed, and how many openings are still on their way (pending to running)."""

    days: Mapping[str, VenueDay] = field(default_factory=dict)
    open_pairs: Sequence[OpenPair] = ()
    openings_in_flight: int = 0


def cost_per_volume_bps(days: Mapping[str, VenueDay]) -> Decimal:
    """Today's ``(fees + realised trading loss) / volume`` over the venues, in bps (0 with
    no volume yet)."""
    volume = sum((d.volume_usd for d in days.values()), ZERO)
    if volume <= 0:
        return ZERO
    fees = sum((d.fees_usd for d in days.values()), ZERO)
    pnl = sum((d.realized_pnl_usd for d in days.values()), ZERO)
    # realized PnL is booked net of fees: the loss beyond the fees is the trading loss
    trading_loss = max(ZERO, -(pnl + fees))
    return (fees + trading_loss) / volume * BPS


def _close(
    pair: OpenPair, market: Market, venues: Mapping[str, Venue], params: VolumeParams, now: datetime
) -> dict[str, object] | str:
    # closing is part of the volume already chosen: it scores 100 on volume
    return close_body(
        pair, market, venues, now=now, deadline_s=params.deadline_s, vol_score=HUNDRED
    )


def _need(params: VolumeParams, state: VolumeState, exchange: str) -> Decimal:
    day = state.days.get(exchange)
    done = day.volume_usd if day is not None else ZERO
    return params.target(exchange) - done


def volume(
    market: Market,
    venues: Mapping[str, Venue],
    params: VolumeParams,
    state: VolumeState,
    now: datetime,
    rng: random.Random,
) -> Output:
    """Close the pairs whose hold has passed; open one new pair if the budget allows."""
    out = Output(Strategy.VOLUME)
    if not params.enabled:
        return out
    for pair in state.open_pairs:
        if pair.close_after > now:
            continue
        body = _close(pair, market, venues, params, now)
        if isinstance(body, str):
            out.skip(pair.symbol, f"close of {pair.key}: {body}")
        else:
            out.bodies.append(body)

    if not market.quotes:
        out.skip("*", NO_QUOTES)
        return out
    cost = cost_per_volume_bps({n: d for n, d in state.days.items() if n in venues})
    if cost > params.max_cost_bps:
        out.skip("*", f"cost per volume today {cost:.2f} bps > max_cost_bps {params.max_cost_bps}")
        return out
    still_open = sum(1 for p in state.open_pairs if p.close_after > now)
    if still_open + state.openings_in_flight >= params.max_open_pairs:
        out.skip("*", f"{params.max_open_pairs} pair(s) open or opening (max_open_pairs)")
        return out
    needing = {n: _need(params, state, n) for n, v in venues.items() if not v.safe_mode}
    needing = {n: need for n, need in needing.items() if need > 0}
    if len(needing) < 2:
        out.skip("*", "fewer than two venues out of safe mode and below their daily target")
        return out
    wanted = set(params.symbols)
    # a venue that needs volume is a known one out of safe mode: what venues_quoting keeps
    candidates = [
        s
        for s in market.symbols()
        if (not wanted or s in wanted) and market.quoted_on(s, needing) >= 2
    ]
    if not candidates:
        out.skip("*", "no symbol quoted on two venues that need volume")
        return out
    symbol = rng.choice(candidates)
    quotes = [q for q in market.venues_quoting(symbol, venues) if q.exchange in needing]
    first, second = sorted(quotes, key=lambda q: (-needing[q.exchange], q.exchange))[:2]
    long_q, short_q = _long_short(first, second, venues)
    long_v, short_v = venues[long_q.exchange], venues[short_q.exchange]
    low, high = float(params.min_notional_usd), float(params.max_notional_usd)
    drawn = Decimal(str(round(rng.uniform(low, high), 2)))
    hold_s = round(rng.uniform(params.min_hold_s, params.max_hold_s), 3)
    need = min(needing[long_q.exchange], needing[short_q.exchange]) / 2  # open + close
    notional = min(drawn, size_cap_usd(long_v, short_v), max(need, params.min_notional_usd))
    price = max(long_q.ask, short_q.last, long_q.last)
    quantity = quantity_for(notional, price)
    if quantity <= 0:
        out.skip(symbol, "size rounds to zero")
        return out
    notional = quantity * price
    gap = (short_q.bid - long_q.ask) / ((long_q.mid + short_q.mid) / 2) * BPS
    edge = gap - long_v.taker_fee_bps - short_v.taker_fee_bps
    share_needed = min(
        needing[long_q.exchange] / params.target(long_q.exchange),
        needing[short_q.exchange] / params.target(short_q.exchange),
    )
    funding_8h = ZERO
    if long_q.funding_rate is not None and short_q.funding_rate is not None:
        daily = short_v.funding_per_day(short_q.funding_rate) - long_v.funding_per_day(
            long_q.funding_rate
        )
        funding_8h = daily * BPS * RISK_FUNDING_HOURS / 24
    key = f"vol:open:{key_time(window_start(now, params.window_s))}"
    out.bodies.append(
        pair_body(
            strategy=Strategy.VOLUME,
            symbol=symbol,
            legs=[(long_q.exchange, Side.BUY, quantity), (short_q.exchange, Side.SELL, quantity)],
            notional_usd=notional,
            expected_edge_bps=edge,
            expected_pnl_usd=edge * notional / BPS,
            expected_volume_usd=2 * notional,
            idempotency_key=key,
            deadline=now + timedelta(seconds=params.deadline_s),
            components=scores(
                (long_q, short_q),
                notional_usd=notional,
                equity_usd=min(long_v.equity_usd, short_v.equity_usd),
                cost_bps=crossing_cost_bps(notional, long_q) + crossing_cost_bps(notional, short_q),
                funding_received_bps_8h=funding_8h,
                volume_usd=2 * notional,
                vol_score=min(HUNDRED, HUNDRED * share_needed),
            ),
            metadata={
                "source": "volume",
                "phase": "open",
                "hold_s": hold_s,
                "close_after": (now + timedelta(seconds=hold_s)).isoformat(),
            },
        )
    )
    return out


def _long_short(a: Quote, b: Quote, venues: Mapping[str, Venue]) -> tuple[Quote, Quote]:
    """Long where funding per day is lower (ties: by name), short on the other."""

    def daily(q: Quote) -> Decimal:
        rate = q.funding_rate if q.funding_rate is not None else ZERO
        return venues[q.exchange].funding_per_day(rate)

    return (a, b) if (daily(a), a.exchange) <= (daily(b), b.exchange) else (b, a)
