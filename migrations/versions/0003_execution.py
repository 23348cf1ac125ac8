"""execution: worker registry, paper exchange orders, unwind legs, booked leg PnL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 09:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "legs",
        sa.Column(
            "unwinds_leg_id",
            sa.BigInteger(),
            sa.ForeignKey("legs.id", name="fk_legs_unwinds_leg_id_legs", ondelete="CASCADE"),
            nullable=True,
        ),
    )
    op.add_column(
        "legs",
        sa.Column(
            "realized_pnl_usd",
            sa.Numeric(24, 8),
            server_default=sa.text("0"),
            nullable=False,
        ),
    )
    op.add_column("legs", sa.Column("booked_at", TZ, nullable=True))
    op.create_index("ix_legs_booked_at", "legs", ["booked_at"], postgresql_using="brin")

    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("heartbeat_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("stopped_at", TZ, nullable=True),
        sa.Column("jobs_finished", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("concurrency > 0", name=op.f("ck_workers_concurrency_pos")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )

    op.create_table(
        "paper_orders",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("client_order_id", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=True),
        sa.Column("side", sa.Text(), nullable=True),
        sa.Column("quantity", sa.Numeric(28, 12), nullable=True),
        sa.Column("reduce_only", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column(
            "filled_quantity", sa.Numeric(28, 12), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("avg_price", sa.Numeric(28, 12), nullable=True),
        sa.Column("fee_usd", sa.Numeric(24, 8), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('open', 'filled', 'partially_filled', 'rejected', 'cancelled')",
            name=op.f("ck_paper_orders_status"),
        ),
        sa.CheckConstraint(
            "side IS NULL OR side IN ('buy', 'sell')", name=op.f("ck_paper_orders_side")
        ),
        sa.CheckConstraint(
            "quantity IS NULL OR quantity > 0", name=op.f("ck_paper_orders_quantity_pos")
        ),
        sa.CheckConstraint(
            "filled_quantity >= 0 AND (quantity IS NULL OR filled_quantity <= quantity)",
            name=op.f("ck_paper_orders_filled_within_quantity"),
        ),
        sa.CheckConstraint("fee_usd >= 0", name=op.f("ck_paper_orders_fee_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_paper_orders")),
    )
    op.create_index(
        "uq_paper_orders_exchange_client_order_id",
        "paper_orders",
        ["exchange", "client_order_id"],
        unique=True,
    )
    op.create_index("ix_paper_orders_exchange_symbol", "paper_orders", ["exchange", "symbol"])


def downgrade() -> None:
    op.drop_index("ix_paper_orders_exchange_symbol", table_name="paper_orders")
    op.drop_index("uq_paper_orders_exchange_client_order_id", table_name="paper_orders")
    op.drop_table("paper_orders")
    op.drop_table("workers")
    op.drop_index("ix_legs_booked_at", table_name="legs", postgresql_using="brin")
    op.drop_column("legs", "booked_at")
    op.drop_column("legs", "realized_pnl_usd")
    op.drop_column("legs", "unwinds_leg_id")
