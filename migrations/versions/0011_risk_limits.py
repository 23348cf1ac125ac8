"""risk limits in force live in the database: ``risk_limits``

The risk modes' limits were a table inside ``perpbot_db/domain/risk.py``.  They
are settings now (``[risk.MODE]``), and the limits in force are rows here, so
every scheduler on every host judges with the same limits and SQL can audit
them.  ``perpbot db upgrade`` and ``perpbot run`` bring the rows in line with
the settings, ``perpbot risk set`` changes one at run time; each change is a
``risk_limit_changed`` control event.  A limit without a row is its default.

The limit names are those of ``LIMIT_NAMES`` when this revision was written; a
renamed limit needs a revision of its own.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MODES = ("conservative", "balanced", "aggressive", "volume_focused")
NAMES = (
    "spread_soft_bps",
    "spread_hard_bps",
    "volume_cost_soft_bps",
    "volume_cost_hard_bps",
    "rebalance_cost_soft_bps",
    "rebalance_cost_hard_bps",
    "funding_soft_bps",
    "funding_hard_bps",
    "latency_soft_ms",
    "latency_hard_ms",
    "volatility_soft",
    "volatility_hard",
    "leverage_soft",
    "leverage_hard",
    "max_market_age_s",
    "min_score",
    "soft_penalty",
    "weight_edge",
    "weight_pnl",
    "weight_risk",
    "weight_latency",
    "weight_volume",
    "weight_funding",
    "weight_liquidity",
)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def upgrade() -> None:
    op.create_table(
        "risk_limits",
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Numeric(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("updated_by", sa.Text(), nullable=False),
        sa.CheckConstraint(f"mode IN ({_in(MODES)})", name=op.f("ck_risk_limits_mode")),
        sa.CheckConstraint(f"name IN ({_in(NAMES)})", name=op.f("ck_risk_limits_name")),
        # NaN sorts above every number and infinities are beyond any bound: both fail.
        sa.CheckConstraint("abs(value) < 1000000000000", name=op.f("ck_risk_limits_finite")),
        sa.CheckConstraint("length(updated_by) > 0", name=op.f("ck_risk_limits_updated_by")),
        sa.PrimaryKeyConstraint("mode", "name", name=op.f("pk_risk_limits")),
    )


def downgrade() -> None:
    op.drop_table("risk_limits")
