"""the last tick of each scheduler: ``scheduler_ticks``

Nothing recorded when the admission tick last ran, so neither an operator nor a health
check could tell a live scheduler from a dead one.  One row per scheduler process,
written in the tick's own transaction: when it last ticked, how long the tick took,
what it did (rescored, admitted, rejected, expired) and why it skipped admission, if it
did.  A tick that found another scheduler ticking writes nothing.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-02 10:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduler_ticks",
        sa.Column("scheduler", sa.Text(), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Numeric(14, 3), nullable=False),
        sa.Column("rescored", sa.Integer(), nullable=False),
        sa.Column("admitted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("expired", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Text(), nullable=True),
        sa.Column("ticks", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.CheckConstraint("duration_ms >= 0", name=op.f("ck_scheduler_ticks_duration")),
        sa.PrimaryKeyConstraint("scheduler", name=op.f("pk_scheduler_ticks")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_ticks")
