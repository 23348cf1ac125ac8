"""the console reads the hour's refusals and failures from their own index

The monitoring state counts the last hour's rejections, expiries and failures by
code.  ``job_events`` has one BRIN index on ``at``, which bounds the read to the
window's pages but not to these events: at 500 jobs a second an hour holds
millions of events, nearly all of them submits, admissions, claims and
completions, and the console re-read the last two minutes of them on every build
(about 60 % of its database time, measured with pg_stat_statements in
``bench/console.py --statements``).  A partial index on ``at`` of the refusal and
failure events alone makes that read cost what those events are.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out: a migration keeps the values it was written with.
REFUSAL_ACTIONS = "'reject', 'expire', 'fail', 'recover_fail'"


def upgrade() -> None:
    op.create_index(
        "ix_job_events_refusals",
        "job_events",
        ["at"],
        postgresql_where=sa.text(f"action IN ({REFUSAL_ACTIONS})"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_refusals", table_name="job_events")
