"""The bodies the API takes and returns (pydantic), and its error shape.

Every error is ``{"error": {"code", "message", "fields": [{"field", "message"}]}}``:
a field that is wrong is named (``body.reason``, ``jobs[0].legs[1].quantity``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from perpbot_db.domain.lifecycle import RiskMode


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[FieldError] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


class Reason(BaseModel):
    """Every change says why: it is audited."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")

    @field_validator("reason")
    @classmethod
    def _storable(cls, value: str) -> str:
        if "\x00" in value:  # PostgreSQL text cannot hold it: named here, not a 500
            raise PydanticCustomError(
                "nul", "must not hold a NUL character (\\u0000), which PostgreSQL cannot store"
            )
        return value


class RiskModeChange(Reason):
    mode: RiskMode


class SchedulerConfig(Reason):
    """``POST /api/scheduler/config`` of the original design: the risk mode."""

    risk_mode: RiskMode


#: A limit value ``risk_limits`` can store: its check is ``abs(value) < 1e12``, and
#: PostgreSQL's numeric has no room for an exponent like 1e-999999 (12 decimal places
#: are far finer than any limit means).
LimitValue = Annotated[
    Decimal, Field(allow_inf_nan=False, gt=-(10**12), lt=10**12, decimal_places=12)
]


class RiskLimitsChange(Reason):
    mode: RiskMode
    limits: dict[str, LimitValue] = Field(min_length=1)


class Changed(BaseModel):
    ok: bool = True
    detail: dict[str, Any] = Field(default_factory=dict)


class Submitted(BaseModel):
    job_ids: list[int]
    inserted: int
    existing: int


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class Login(BaseModel):
    """The dashboard's one exchange of the token for a session cookie."""

    model_config = ConfigDict(extra="forbid")
    token: SecretStr = Field(min_length=1, max_length=1000)


class SessionInfo(BaseModel):
    authenticated: bool
    read_only: bool
