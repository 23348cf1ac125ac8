"""archive: finished jobs leave the hot tables for <table>_archive; <table>_all views

hedge_jobs, legs, capital_reservations and job_events each get an archive table
created with ``LIKE`` (the same columns in the same physical order, with their
NOT NULLs and CHECKs, but no defaults, identities or foreign keys), so that
``INSERT INTO x_archive SELECT * FROM x`` and the ``x_all`` views
(``SELECT * FROM x UNION ALL SELECT * FROM x_archive``) stay exact.  A later
migration that adds a column to one of these tables must add it to the archive
and recreate the view (tests/test_schema.py fails until it does).

job_events stays append-only: UPDATE and TRUNCATE are refused as before, and a
DELETE is refused unless the event already sits in job_events_archive (which is
itself append-only).  The archive's only way out of the hot table is therefore
"copied first".  capital_reservations gets an index on job_id: the archive
deletes a job's reservations, and the foreign-key cascade looks for them, by job;
legs get one on unwinds_leg_id for the same reason (every foreign key has an
index that leads with its column: tests/test_schema.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Live table -> (unique columns, btree indexes, brin columns) of its archive.
ARCHIVES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...], tuple[str, ...]]] = {
    "hedge_jobs": (("idempotency_key",), (), ("finished_at",)),
    "legs": (("client_order_id",), (("job_id",),), ("booked_at",)),
    "capital_reservations": ((), (("job_id",),), ()),
    "job_events": ((), (("job_id", "id"),), ("at",)),
}


def upgrade() -> None:
    op.create_index("ix_capital_reservations_job_id", "capital_reservations", ["job_id"])
    # Deleting a leg cascades to the unwinds that close it: found by index, not a scan.
    op.create_index(
        "ix_legs_unwinds_leg_id",
        "legs",
        ["unwinds_leg_id"],
        postgresql_where="unwinds_leg_id IS NOT NULL",
    )
    for table, (uniques, indexes, brins) in ARCHIVES.items():
        archive = f"{table}_archive"
        op.execute(f"CREATE TABLE {archive} (LIKE {table} INCLUDING CONSTRAINTS)")
        op.create_primary_key(f"pk_{archive}", archive, ["id"])
        for column in uniques:
            op.create_unique_constraint(f"uq_{archive}_{column}", archive, [column])
        for columns in indexes:
            op.create_index(f"ix_{archive}_{'_'.join(columns)}", archive, list(columns))
        for column in brins:
            op.create_index(f"ix_{archive}_{column}", archive, [column], postgresql_using="brin")
        op.execute(
            f"CREATE VIEW {table}_all AS SELECT * FROM {table} UNION ALL SELECT * FROM {archive}"
        )

    op.execute(
        "CREATE TRIGGER job_events_archive_no_update_delete BEFORE UPDATE OR DELETE "
        "ON job_events_archive FOR EACH ROW EXECUTE FUNCTION append_only()"
    )
    op.execute(
        "CREATE TRIGGER job_events_archive_no_truncate BEFORE TRUNCATE ON job_events_archive "
        "FOR EACH STATEMENT EXECUTE FUNCTION append_only()"
    )
    op.execute(
        """
        CREATE FUNCTION job_event_delete_if_archived() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT EXISTS (SELECT FROM job_events_archive a WHERE a.id = OLD.id) THEN
                RAISE EXCEPTION 'job_events is append-only: DELETE refused (event % is not '
                                'in job_events_archive)', OLD.id;
            END IF;
            RETURN OLD;
        END
        $$
        """
    )
    op.execute("DROP TRIGGER job_events_no_update_delete ON job_events")
    op.execute(
        "CREATE TRIGGER job_events_no_update BEFORE UPDATE ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION append_only()"
    )
    op.execute(
        "CREATE TRIGGER job_events_delete_if_archived BEFORE DELETE ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION job_event_delete_if_archived()"
    )


def downgrade() -> None:
    # Archived rows go back where they came from, parents first.
    for table in ARCHIVES:
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_archive")
    op.execute("DROP TRIGGER job_events_delete_if_archived ON job_events")
    op.execute("DROP TRIGGER job_events_no_update ON job_events")
    op.execute(
        "CREATE TRIGGER job_events_no_update_delete BEFORE UPDATE OR DELETE ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION append_only()"
    )
    op.execute("DROP FUNCTION job_event_delete_if_archived()")
    for table in reversed(ARCHIVES):
        op.execute(f"DROP VIEW {table}_all")
        op.execute(f"DROP TABLE {table}_archive")  # its triggers and indexes go with it
    op.drop_index("ix_legs_unwinds_leg_id", table_name="legs")
    op.drop_index("ix_capital_reservations_job_id", table_name="capital_reservations")
