"""protection_locks: each protection's time-bounded lock, with its reason

The protections (daily loss, failure streak, drawdown, API latency, fast market,
unhedged exposure; ``perpbot_db/domain/protections.py``) each write one row when
they trip: what is locked (the system, an exchange, a symbol), the stable code,
the reason with its numbers, until when.  The console shows them.  A unique
partial index keeps one active lock per (scope, target, code); the leader's
protection expiry releases a lock at its ``until``, an operator may release it
before.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "protection_locks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "context",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, server_default=sa.func.now(), nullable=False),
        sa.Column("until", TZ, nullable=False),
        sa.Column("released_at", TZ, nullable=True),
        sa.Column("released_by", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "scope IN ('system', 'exchange', 'symbol')", name=op.f("ck_protection_locks_scope")
        ),
        sa.CheckConstraint(
            "until > created_at", name=op.f("ck_protection_locks_until_after_created")
        ),
        sa.CheckConstraint(
            "(released_at IS NULL) = (released_by IS NULL)",
            name=op.f("ck_protection_locks_released_fields"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_protection_locks")),
    )
    op.create_index(
        "ix_protection_locks_active",
        "protection_locks",
        ["scope", "target", "code"],
        unique=True,
        postgresql_where=sa.text("released_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_protection_locks_active", table_name="protection_locks")
    op.drop_table("protection_locks")
