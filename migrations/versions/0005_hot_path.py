"""hot path: fewer per-row checks on the tables every job writes

Measured with pg_stat_statements under the benchmark's load (bench/compare.py),
three kinds of per-row work sat on every job's path and bought nothing the
engine's own statements and ``perpbot audit`` do not already guarantee:

* ``job_events.job_id -> hedge_jobs``: a foreign-key probe (``SELECT ... FOR KEY
  SHARE``) for each of a job's four events and one more when the archive deletes
  the job.  Every event is written by the statement that moves its job, from that
  UPDATE's RETURNING, so it cannot name a missing job; the archive copies a job's
  events before deleting it.  ``perpbot audit`` checks that every event, live or
  archived, belongs to a job (check "event without a job").
* ``legs.exchange`` and ``capital_reservations.exchange -> exchanges``: a key-share
  lock on one of a handful of exchange rows for every leg and reservation, which
  concurrent submitters and schedulers turn into multixacts.  Submission refuses
  unknown exchanges and exchange rows are never deleted (a removed exchange is
  disabled); the audit checks every leg and reservation names a known exchange.
* the row-level ``job_events`` delete guard ran PL/pgSQL once per archived event; it
  is now one statement-level trigger over the deleted rows (a transition table)
  with the same rule: a DELETE is refused unless every deleted event is already in
  ``job_events_archive``.

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
    op.execute("DROP TRIGGER job_events_delete_if_archived ON job_events")
    op.execute("DROP FUNCTION job_event_delete_if_archived()")
    op.execute(
        """
        CREATE FUNCTION job_events_delete_if_archived() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            missing bigint;
        BEGIN
            SELECT d.id INTO missing FROM deleted d
            WHERE NOT EXISTS (SELECT FROM job_events_archive a WHERE a.id = d.id)
            LIMIT 1;
            IF missing IS NOT NULL THEN
                RAISE EXCEPTION 'job_events is append-only: DELETE refused (event % is not '
                                'in job_events_archive)', missing;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER job_events_delete_if_archived AFTER DELETE ON job_events "
        "REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT "
        "EXECUTE FUNCTION job_events_delete_if_archived()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER job_events_delete_if_archived ON job_events")
    op.execute("DROP FUNCTION job_events_delete_if_archived()")
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
