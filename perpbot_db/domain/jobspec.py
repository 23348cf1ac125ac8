"""A hedge job as submitted (DESIGN.md, Interfaces), and every rule it must pass.

Parsing is two steps: pydantic checks shape, types and ranges; then
:func:`check_job`, a pure function over the parsed job and the
:class:`SubmissionRules` of this deployment, checks what needs context
(configured exchanges, the hedge balance, the clock) and that the database
will take every value (``metadata`` as ``jsonb``: no NUL, no lone surrogate, no
NaN, bounded numbers and nesting; see :mod:`perpbot_db.domain.jsonlines`).  Both report
:class:`FieldProblem` values that name the field, e.g. ``legs[1].quantity`` or
``metadata.notes[2]``; a job that passes is written without a database error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from perpbot_db.domain.jsonlines import (
    FieldProblem,
    Unstorable,
    encode_for_postgres,
    field_name,
    loads,
)
from perpbot_db.domain.lifecycle import Side, Strategy

__all__ = ["FieldProblem", "JobSpec", "SubmissionRules", "check_job", "parse_job"]

# ccxt unified symbols: BASE/QUOTE (spot), BASE/QUOTE:SETTLE (swap),
# BASE/QUOTE:SETTLE-YYMMDD (future), BASE/QUOTE:SETTLE-YYMMDD-STRIKE-C|P (option).
CCXT_SYMBOL = r"^[A-Za-z0-9]{1,24}/[A-Z0-9]{1,12}(:[A-Z0-9]{1,12}(-\d{6}(-\d+(\.\d+)?-[CP])?)?)?$"
EXCHANGE_ID = r"^[a-z][a-z0-9_]{0,31}$"
IDEMPOTENCY_KEY = r"^[^\x00-\x1f\x7f]{1,200}$"

Quantity = Annotated[Decimal, Field(gt=0, allow_inf_nan=False, max_digits=28, decimal_places=12)]
Usd = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=24, decimal_places=8)]
ScoreIn = Annotated[Decimal, Field(ge=0, le=100, allow_inf_nan=False, decimal_places=3)]


class LegSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exchange: Annotated[str, Field(pattern=EXCHANGE_ID)]
    side: Side
    quantity: Quantity


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy
    symbol: Annotated[str, Field(pattern=CCXT_SYMBOL)]
    notional_usd: Annotated[Usd, Field(gt=0, lt=Decimal("1e15"))]
    expected_edge_bps: Annotated[
        Decimal, Field(allow_inf_nan=False, gt=-10_000, lt=10_000, decimal_places=4)
    ] = Decimal(0)
    expected_pnl_usd: Annotated[Usd, Field(gt=Decimal("-1e15"), lt=Decimal("1e15"))] = Decimal(0)
    expected_volume_usd: Annotated[Usd, Field(ge=0, lt=Decimal("1e15"))] | None = None
    legs: Annotated[list[LegSpec], Field(min_length=2)]
    idempotency_key: Annotated[str, Field(pattern=IDEMPOTENCY_KEY)] | None = None
    deadline: AwareDatetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    risk_score: ScoreIn | None = None
    latency_score: ScoreIn | None = None
    vol_score: ScoreIn | None = None
    funding_score: ScoreIn | None = None
    liquidity_score: ScoreIn | None = None

    @property
    def volume_usd(self) -> Decimal:
        """Expected traded volume: as given, else the notional traded on every leg."""
        if self.expected_volume_usd is not None:
            return self.expected_volume_usd
        return self.notional_usd * len(self.legs)

    @cached_property
    def metadata_json(self) -> str:
        """``metadata`` as the ``jsonb`` text written to the database (computed once).

        Raises :class:`~perpbot_db.domain.jsonlines.Unstorable` for a value PostgreSQL
        would refuse; :func:`check_job` reports it naming the path."""
        return encode_for_postgres(self.metadata)


@dataclass(frozen=True)
class SubmissionRules:
    """What a job is checked against beyond its own shape."""

    exchanges: frozenset[str]
    hedge_tolerance: Decimal = Decimal("0.001")
    max_legs: int = 8
    max_metadata_bytes: int = 4096


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
}


def _field_name(loc: tuple[int | str, ...]) -> str:
    return field_name(loc) or "job"


def problems_from_validation(exc: ValidationError) -> list[FieldProblem]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        kind = err["type"]
        if kind == "json_invalid":
            problems.append(FieldProblem("job", f"not valid JSON: {err['ctx']['error']}"))
            continue
        if kind in ("model_type", "model_attributes_type"):
            problems.append(FieldProblem("job", "must be a JSON object"))
            continue
        message = _FRIENDLY.get(kind, str(err["msg"]).removeprefix("Value error, "))
        if kind == "string_pattern_mismatch":
            field = str(err["loc"][-1]) if err["loc"] else ""
            message = {
                "symbol": "not a ccxt unified symbol (like BTC/USDT:USDT)",
                "exchange": "not an exchange id (lowercase letters, digits, _)",
                "idempotency_key": "must be 1 to 200 characters without control characters",
            }.get(field, message)
        problems.append(FieldProblem(_field_name(tuple(err["loc"])), message))
    return problems


def unknown_exchange(name: str, configured: frozenset[str]) -> str:
    known = ", ".join(sorted(configured)) or "none"
    return f"unknown exchange {name!r} (configured: {known})"


#: ``numeric(24, 8)`` holds values below 1e16.
_MAX_USD = Decimal("1e16")


def check_job(spec: JobSpec, rules: SubmissionRules, now: datetime) -> list[FieldProblem]:
    """The rules that need context; an empty list means the job may be inserted."""
    problems: list[FieldProblem] = []
    if len(spec.legs) > rules.max_legs:
        problems.append(FieldProblem("legs", f"{len(spec.legs)} legs, at most {rules.max_legs}"))
    seen: dict[tuple[str, Side], int] = {}
    for i, leg in enumerate(spec.legs):
        if leg.exchange not in rules.exchanges:
            problems.append(
                FieldProblem(f"legs[{i}].exchange", unknown_exchange(leg.exchange, rules.exchanges))
            )
        other_side = Side.SELL if leg.side is Side.BUY else Side.BUY
        if (leg.exchange, other_side) in seen:
            twin = seen[(leg.exchange, other_side)]
            problems.append(
                FieldProblem(
                    f"legs[{i}]",
                    f"buys and sells {spec.symbol} on {leg.exchange} (with legs[{twin}]):"
                    " a job never trades against itself on one exchange",
                )
            )
        elif (leg.exchange, leg.side) in seen:
            twin = seen[(leg.exchange, leg.side)]
            problems.append(
                FieldProblem(
                    f"legs[{i}]",
                    f"repeats legs[{twin}] ({leg.side} on {leg.exchange}): one leg per exchange",
                )
            )
        seen.setdefault((leg.exchange, leg.side), i)
    if len({leg.exchange for leg in spec.legs}) < 2:
        problems.append(
            FieldProblem(
                "legs", f"all legs are on {spec.legs[0].exchange}: a hedge needs two exchanges"
            )
        )
    if spec.strategy is not Strategy.HEDGE_REBALANCE:
        problems.extend(_balance_problems(spec, rules.hedge_tolerance))
    if spec.deadline is not None and spec.deadline <= now:
        problems.append(FieldProblem("deadline", f"{spec.deadline.isoformat()} is in the past"))
    if spec.expected_volume_usd is None and spec.volume_usd >= _MAX_USD:
        problems.append(
            FieldProblem(
                "notional_usd",
                f"notional on {len(spec.legs)} legs makes an expected volume of "
                f"{spec.volume_usd}, at least the column's limit of 1e16",
            )
        )
    problems.extend(_metadata_problems(spec, rules.max_metadata_bytes))
    return problems


def _metadata_problems(spec: JobSpec, limit: int) -> list[FieldProblem]:
    try:
        text = spec.metadata_json
    except Unstorable as exc:
        return [FieldProblem(field_name(["metadata", *exc.path]), exc.message)]
    size = len(text.encode())
    if size > limit:
        return [FieldProblem("metadata", f"{size} bytes, more than the limit of {limit}")]
    return []


def _balance_problems(spec: JobSpec, tolerance: Decimal) -> list[FieldProblem]:
    bought = sum((leg.quantity for leg in spec.legs if leg.side is Side.BUY), Decimal(0))
    sold = sum((leg.quantity for leg in spec.legs if leg.side is Side.SELL), Decimal(0))
    if bought == 0 or sold == 0:
        side = "buy" if bought == 0 else "sell"
        return [FieldProblem("legs", f"no {side} leg: a {spec.strategy} job must be hedged")]
    gap = abs(bought - sold) / max(bought, sold)
    if gap > tolerance:
        return [
            FieldProblem(
                "legs",
                f"unbalanced hedge: bought {bought} and sold {sold} differ by "
                f"{gap:.4%} (tolerance {tolerance:.4%})",
            )
        ]
    return []


def parse_job(
    raw: str | bytes, rules: SubmissionRules, now: datetime
) -> JobSpec | list[FieldProblem]:
    """Parse one JSON job; the spec, or every problem found."""
    # JSON numbers are Decimal: they keep every digit (pydantic's own JSON parser
    # would read them as float64 first and round large quantities).
    data = loads(raw, "job")
    if isinstance(data, FieldProblem):
        return [data]
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        return problems_from_validation(exc)
    problems = check_job(spec, rules, now)
    return problems or spec
