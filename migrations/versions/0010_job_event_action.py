"""each job event names the lifecycle action that wrote it

Every status change is an edge of the lifecycle table
(``perpbot_db.domain.lifecycle.JOB_EDGES``), named by its action: ``submit``,
``expire``, ``admit``, ``reject``, ``cancel``, ``claim``, ``complete``, ``fail``,
``retry``, ``recover_complete``, ``recover_fail``.  The statement that takes an
edge writes its action into the event, so the history tells a recovered job from
one its worker finished, and a test can compare the edges taken with the table.
Events written before this migration have no action (NULL).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``JobAction`` at this revision (a later action needs a migration, as a status does).
ACTIONS = (
    "submit", "expire", "admit", "reject", "cancel", "claim", "complete", "fail", "retry",
    "recover_complete", "recover_fail",
)  # fmt: skip


def upgrade() -> None:
    # A nullable column without a default: no table rewrite, instant on a big table.
    op.add_column("job_events", sa.Column("action", sa.Text(), nullable=True))
    # NOT VALID: old rows (all NULL) are not scanned; new rows are checked.
    op.execute(
        "ALTER TABLE job_events ADD CONSTRAINT ck_job_events_action CHECK (action IS NULL OR "
        f"action IN ({', '.join(repr(a) for a in ACTIONS)})) NOT VALID"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE job_events DROP CONSTRAINT ck_job_events_action")
    op.drop_column("job_events", "action")
