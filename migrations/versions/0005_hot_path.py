"""hot path: fewer per-row checks and copies on the tables every job writes

Measured with pg_stat_statements under the benchmark's load (bench/compare.py),
three kinds of per-row work sat on every job's path and bought nothing the
engine's own statements and ``perpbot audit`` do not already guarantee:

* ``job_events.job_id -> hedge_jobs``: a foreign-key probe (``SELECT ... FOR KEY
  SHARE``) for each of a job's four events and one more when the archive deletes
  the job.  Every event is written by the statement that moves its job, from that
  UPDATE's RETURNING, so it cannot name a missing job, and events are never
  deleted (below).  ``perpbot audit`` checks that every event belongs to a job,
  live or archived (check "event without a job").
* ``legs.exchange`` and ``capital_reservations.exchange -> exchanges``: a key-share
  lock on one of a handful of exchange rows for every leg and reservation, which
  concurrent submitters and schedulers turn into multixacts.  Submission refuses
  unknown exchanges and exchange rows are never deleted (a removed exchange is
  disabled); the audit checks every leg and reservation names a known exchange.
* moving ``job_events`` to ``job_events_archive`` (migration 0004) was four copies
  and four deletes per job, about half of the archive's cost, for nothing: the
  table is insert-only (never updated, so no dead rows) and no claim, tick or
  finish reads it, so its size does not slow the queue.  Events now stay in
  ``job_events`` for good; the archived ones move back, ``job_events_archive`` and
  the ``job_events_all`` view go, and ``job_events`` refuses UPDATE, DELETE and
  TRUNCATE again as in migration 0001.

``legs`` gets ``fillfactor = 75``: a leg is written three times (inserted, marked
``sent``, booked), and none of those updates changes an indexed column, so with
room on the page they are HOT updates (no new index entries).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, constraint, column, referred table, referred column)
DROPPED_FOREIGN_KEYS = (
    ("job_events", "fk_job_events_job_id_hedge_jobs", "job_id", "hedge_jobs", "id"),
    ("legs", "fk_legs_exchange_exchanges", "exchange", "exchanges", "name"),
    (
        "capital_reservations",
        "fk_capital_reservations_exchange_exchanges",
        "exchange",
        "exchanges",
        "name",
    ),
)


def upgrade() -> None:
    for table, name, _, _, _ in DROPPED_FOREIGN_KEYS:
        op.drop_constraint(name, table, type_="foreignkey")
    op.execute("ALTER TABLE legs SET (fillfactor = 75)")
    op.execute("INSERT INTO job_events SELECT * FROM job_events_archive ORDER BY id")
    op.execute("DROP VIEW job_events_all")
    op.execute("DROP TABLE job_events_archive")  # its append-only triggers go with it
    op.execute("DROP TRIGGER job_events_delete_if_archived ON job_events")
    op.execute("DROP FUNCTION job_event_delete_if_archived()")
    op.execute("DROP TRIGGER job_events_no_update ON job_events")
    op.execute(
        "CREATE TRIGGER job_events_no_update_delete BEFORE UPDATE OR DELETE ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION append_only()"
    )


def downgrade() -> None:
    # Back to migration 0004's shape.
    op.execute("DROP TRIGGER job_events_no_update_delete ON job_events")
    op.execute(
        "CREATE TRIGGER job_events_no_update BEFORE UPDATE ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION append_only()"
    )
    op.execute("CREATE TABLE job_events_archive (LIKE job_events INCLUDING CONSTRAINTS)")
    op.create_primary_key("pk_job_events_archive", "job_events_archive", ["id"])
    op.create_index("ix_job_events_archive_job_id_id", "job_events_archive", ["job_id", "id"])
    op.create_index(
        "ix_job_events_archive_at", "job_events_archive", ["at"], postgresql_using="brin"
    )
    op.execute(
        "CREATE VIEW job_events_all AS SELECT * FROM job_events "
        "UNION ALL SELECT * FROM job_events_archive"
    )
    # Events of archived jobs go back to the archive (the foreign key below needs it).
    op.execute(
        "INSERT INTO job_events_archive SELECT * FROM job_events e "
        "WHERE NOT EXISTS (SELECT FROM hedge_jobs j WHERE j.id = e.job_id) ORDER BY id"
    )
    op.execute(
        "DELETE FROM job_events e WHERE NOT EXISTS (SELECT FROM hedge_jobs j WHERE j.id = e.job_id)"
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
    op.execute(
        "CREATE TRIGGER job_events_delete_if_archived BEFORE DELETE ON job_events "
        "FOR EACH ROW EXECUTE FUNCTION job_event_delete_if_archived()"
    )
    op.execute("ALTER TABLE legs RESET (fillfactor)")
    for table, name, column, referred, referred_column in DROPPED_FOREIGN_KEYS:
        op.create_foreign_key(name, table, referred, [column], [referred_column])
