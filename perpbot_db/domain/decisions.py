"""Admission decisions: a stable code plus ``key=value`` context.

Every check of the admission tick (validation, system state, blacklists, risk,
concurrency, in-flight notional, safe mode, capital) answers with a
:class:`Decision`.  The code is an enum stored as text on the job
(``hedge_jobs.decision_code``) and in its ``job_events`` row, so denials can be
counted and grouped with one SQL query; the context says why in numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DecisionCode(StrEnum):
    ADMITTED = "admitted"
    CANCELLED = "cancelled"
    # system and protections
    SYSTEM_NOT_RUNNING = "system_not_running"
    DEADLINE_PASSED = "deadline_passed"
    SYMBOL_BLACKLISTED = "symbol_blacklisted"
    EXCHANGE_BLACKLISTED = "exchange_blacklisted"
    EXCHANGE_DISABLED = "exchange_disabled"
    EXCHANGE_SAFE_MODE = "exchange_safe_mode"
    # market data (fail closed)
    MARKET_DATA_MISSING = "market_data_missing"
    MARKET_DATA_STALE = "market_data_stale"
    # risk dimensions: hard limits
    SPREAD_HARD_LIMIT = "spread_hard_limit"
    FUNDING_HARD_LIMIT = "funding_hard_limit"
    LATENCY_HARD_LIMIT = "latency_hard_limit"
    VOLATILITY_HARD_LIMIT = "volatility_hard_limit"
    LEVERAGE_HARD_LIMIT = "leverage_hard_limit"
    # risk dimensions: soft limits (notes that lowered the score; never reject)
    SPREAD_SOFT_LIMIT = "spread_soft_limit"
    FUNDING_SOFT_LIMIT = "funding_soft_limit"
    LATENCY_SOFT_LIMIT = "latency_soft_limit"
    VOLATILITY_SOFT_LIMIT = "volatility_soft_limit"
    LEVERAGE_SOFT_LIMIT = "leverage_soft_limit"
    # score
    SCORE_BELOW_THRESHOLD = "score_below_threshold"
    # throttles
    GLOBAL_CONCURRENCY = "global_concurrency"
    EXCHANGE_CONCURRENCY = "exchange_concurrency"
    INFLIGHT_NOTIONAL = "inflight_notional"
    LOSS_BUDGET = "loss_budget"  # its worst case does not fit in what is left of the limit
    # capital
    CAPITAL_INVALID_AMOUNT = "capital_invalid_amount"
    CAPITAL_TIER_FORBIDDEN = "capital_tier_forbidden"
    CAPITAL_SINGLE_JOB_CAP = "capital_single_job_cap"
    CAPITAL_INFLIGHT_CAP = "capital_inflight_cap"
    CAPITAL_TIER_BUDGET = "capital_tier_budget"


#: Hard limits: nothing is admitted past one.  Stale or missing market data counts as
#: one (fail closed, DESIGN.md); so do the five risk dimensions' hard thresholds.
HARD_LIMITS: frozenset[DecisionCode] = frozenset(
    {
        DecisionCode.MARKET_DATA_MISSING,
        DecisionCode.MARKET_DATA_STALE,
        DecisionCode.SPREAD_HARD_LIMIT,
        DecisionCode.FUNDING_HARD_LIMIT,
        DecisionCode.LATENCY_HARD_LIMIT,
        DecisionCode.VOLATILITY_HARD_LIMIT,
        DecisionCode.LEVERAGE_HARD_LIMIT,
    }
)

#: What the job and the configuration make impossible: these end a pending job as
#: ``rejected``.  The job is too large for the account (leverage, the single-job cap)
#: or asks for capital its strategy may not use.  Everything else (stale or missing
#: data, a fast market, spread, latency, volatility, funding, full capital or
#: concurrency, the protections' locks) is something the market or the book changes by
#: itself: the job stays pending with its code until its deadline, then expires.
REJECTING: frozenset[DecisionCode] = frozenset(
    {
        DecisionCode.LEVERAGE_HARD_LIMIT,
        DecisionCode.CAPITAL_INVALID_AMOUNT,
        DecisionCode.CAPITAL_TIER_FORBIDDEN,
        DecisionCode.CAPITAL_SINGLE_JOB_CAP,
    }
)

#: Holds that depend on the job itself (its edge, its direction, its score), not only on
#: its markets: the tick leaves such a job out of its candidate window until the
#: rolling re-score has judged it again, so it never takes the place of one that could
#: run.  Market-wide holds are left out by the window's open markets instead.
HELD_UNTIL_RESCORED: frozenset[DecisionCode] = frozenset(
    {
        DecisionCode.SPREAD_HARD_LIMIT,
        DecisionCode.FUNDING_HARD_LIMIT,
        DecisionCode.SCORE_BELOW_THRESHOLD,
    }
)


@dataclass(frozen=True)
class Decision:
    code: DecisionCode
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def admitted(self) -> bool:
        return self.code is DecisionCode.ADMITTED

    @property
    def hard(self) -> bool:
        """A hard limit: never admitted past it (it may still only hold the job)."""
        return self.code in HARD_LIMITS

    @property
    def rejects(self) -> bool:
        """The job can never pass: it ends ``rejected``."""
        return self.code in REJECTING

    def __str__(self) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.code.value} {ctx}".strip()


def deny(code: DecisionCode, **context: Any) -> Decision:
    return Decision(code, context)


def _pairs(context: Mapping[str, Any]) -> str:
    return " ".join(
        f"{k}=({_pairs(v)})" if isinstance(v, Mapping) else f"{k}={v}" for k, v in context.items()
    )


def short_reason(context: Mapping[str, Any] | None, limit: int = 80) -> str:
    """A stored decision's context on one line: ``key=value`` pairs, at most ``limit``.

    An expired job's context names the hold it last had first (``held <code> (...)``).
    """
    if not context:
        return ""
    rest = dict(context)
    held, held_context = rest.pop("held_code", None), rest.pop("held_context", None)
    parts = []
    if held:
        shown = _pairs(held_context) if isinstance(held_context, Mapping) else ""
        parts.append(f"held {held}" + (f" ({shown})" if shown else ""))
    if rest:
        parts.append(_pairs(rest))
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."
