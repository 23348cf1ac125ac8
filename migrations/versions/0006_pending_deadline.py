"""every pending job has a deadline

DESIGN.md: nothing waits forever.  A job the market holds stays pending until
its deadline (its own, or ``max_pending_s`` after submission) and then expires
with the last reason it was held.  Submission gives every job a deadline; this
CHECK makes the database refuse a pending job without one, whatever wrote it
(a script inserting rows by hand included), and a retry (``failed -> pending``)
keeps the deadline it had.  Jobs left pending without one by an older version
get the default 300 s from the upgrade.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE hedge_jobs SET deadline = now() + interval '300 seconds' "
        "WHERE status = 'pending' AND deadline IS NULL"
    )
    op.create_check_constraint(
        "pending_has_deadline", "hedge_jobs", "status <> 'pending' OR deadline IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_constraint("pending_has_deadline", "hedge_jobs", type_="check")
