"""the rolling re-score reads its order straight from an index

The tick re-scores the pending jobs scored longest ago: ``ORDER BY scored_at, id
LIMIT rescore_batch``.  The partial index held ``scored_at`` alone, so every job
with the same ``scored_at`` had to be sorted by ``id`` first, and a big
submission gives every new job the same one (``-infinity``, never scored): with
a backlog of a million fresh jobs each tick sorted all of them before taking
the first thousand.  With ``id`` in the index the scan stops after the batch.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_hedge_jobs_pending_scored_at_id",
        "hedge_jobs",
        ["scored_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_hedge_jobs_pending_scored_at", table_name="hedge_jobs")


def downgrade() -> None:
    op.create_index(
        "ix_hedge_jobs_pending_scored_at",
        "hedge_jobs",
        ["scored_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_hedge_jobs_pending_scored_at_id", table_name="hedge_jobs")
