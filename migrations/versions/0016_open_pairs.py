"""open pairs: the completed openings whose close has not completed, kept by a trigger

Every producer pass read the completed openings (volume, funding_arb, arb) back
from the whole job history, archive included, and looked for their closes: a
scan of every opening and every close ever made, growing with the history while
the answer (the pairs still open) stays a handful.  Whether an opening is still
open depends on another row (its close), so no partial index of ``hedge_jobs``
can tell; this table can.  ``open_pairs`` holds one row per completed opening
until a close of it completes, written in the transaction that completes the
job (triggers on ``hedge_jobs``: an opening that becomes completed is added, a
close that becomes completed removes the opening it names in ``metadata.opens``).
The producers' read starts from it and reaches the opening, its legs and its
closes by index (``ix_hedge_jobs*_close_opens``: the closes by the key they name),
so a pass costs what is open, not what was ever traded.

The table is a guide, not the judge: the read still checks each opening's closes
(a close on its way or completed keeps the pair out, lost closes are counted),
so a row left behind can only cost a lookup, never a second close.  The archive
moves jobs without changing their status: no trigger fires, ``open_pairs`` keeps
naming the opening by id and the read finds it in ``hedge_jobs_all``.  The
upgrade fills the table from the history once (the old full read).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out: a migration keeps the values it was written with.
PAIRED = "'volume', 'funding_arb', 'arb'"
OPENING = (
    f"strategy IN ({PAIRED}) AND metadata->>'phase' = 'open' AND idempotency_key IS NOT NULL "
    "AND (strategy <> 'volume' OR idempotency_key LIKE 'vol:open:%')"
)


def upgrade() -> None:
    op.create_table(
        "open_pairs",
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("strategy", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column(
            "opened_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_open_pairs"),
    )
    op.create_index("ix_open_pairs_idempotency_key", "open_pairs", ["idempotency_key"])
    for table in ("hedge_jobs", "hedge_jobs_archive"):
        op.create_index(
            f"ix_{table}_close_opens",
            table,
            [sa.text("(metadata ->> 'opens')")],
            postgresql_where=sa.text("(metadata ->> 'phase') = 'close'"),
        )
    op.execute(
        f"""
        CREATE FUNCTION open_pairs_track() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.strategy NOT IN ({PAIRED}) THEN
                RETURN NULL;
            ELSIF NEW.metadata->>'phase' = 'open' THEN
                IF NEW.idempotency_key IS NOT NULL
                   AND (NEW.strategy <> 'volume' OR NEW.idempotency_key LIKE 'vol:open:%') THEN
                    INSERT INTO open_pairs (job_id, strategy, idempotency_key)
                    VALUES (NEW.id, NEW.strategy, NEW.idempotency_key)
                    ON CONFLICT (job_id) DO NOTHING;
                END IF;
            ELSIF NEW.metadata->>'phase' = 'close' THEN
                DELETE FROM open_pairs
                WHERE idempotency_key = NEW.metadata->>'opens' AND strategy = NEW.strategy;
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER open_pairs_on_complete AFTER UPDATE OF status ON hedge_jobs "
        "FOR EACH ROW WHEN (NEW.status = 'completed' AND OLD.status <> 'completed' "
        "AND NEW.metadata ? 'phase') EXECUTE FUNCTION open_pairs_track()"
    )
    op.execute(
        "CREATE TRIGGER open_pairs_on_insert AFTER INSERT ON hedge_jobs "
        "FOR EACH ROW WHEN (NEW.status = 'completed' AND NEW.metadata ? 'phase') "
        "EXECUTE FUNCTION open_pairs_track()"
    )
    op.execute(
        f"""
        INSERT INTO open_pairs (job_id, strategy, idempotency_key)
        SELECT id, strategy, idempotency_key FROM hedge_jobs_all o
        WHERE status = 'completed' AND {OPENING}
          AND NOT EXISTS (
              SELECT FROM hedge_jobs_all c
              WHERE c.status = 'completed' AND c.metadata->>'phase' = 'close'
                AND c.strategy = o.strategy AND c.metadata->>'opens' = o.idempotency_key
          )
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER open_pairs_on_insert ON hedge_jobs")
    op.execute("DROP TRIGGER open_pairs_on_complete ON hedge_jobs")
    op.execute("DROP FUNCTION open_pairs_track()")
    for table in ("hedge_jobs", "hedge_jobs_archive"):
        op.drop_index(f"ix_{table}_close_opens", table_name=table)
    op.drop_table("open_pairs")
