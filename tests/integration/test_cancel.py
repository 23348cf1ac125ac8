"""Cancel: pending and admitted jobs end cancelled with capital released; running jobs finish."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from perpbot_db.services import cancel, tick
from perpbot_db.settings import Settings
from tests.builders import active_reserved, config, job, put_market, statuses, submit


def test_cancel_pending_job_ends_it_with_an_event(engine: Engine, settings: Settings) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    assert cancel.cancel(engine, job_id, actor="ops", reason="stale idea").value == "pending"
    assert statuses(engine) == {job_id: "cancelled"}
    with engine.connect() as conn:
        event = conn.execute(
            text("SELECT from_status, to_status, actor, reason, code FROM job_events "
                 "WHERE to_status = 'cancelled'")
        ).one()  # fmt: skip
        finished = conn.execute(text("SELECT finished_at FROM hedge_jobs")).scalar_one()
    assert tuple(event) == ("pending", "cancelled", "ops", "stale idea", "cancelled")
    assert finished is not None


def test_cancel_admitted_job_releases_its_capital_in_the_same_transaction(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    [job_id] = submit(engine, settings, [job(1)])
    assert tick.run_tick(engine, config()).admitted == [job_id]
    assert active_reserved(engine) != {}
    cancel.cancel(engine, job_id, actor="ops", reason="market moved")
    assert statuses(engine) == {job_id: "cancelled"}
    assert active_reserved(engine) == {}
    with engine.connect() as conn:
        reasons = set(
            conn.execute(text("SELECT release_reason FROM capital_reservations")).scalars()
        )
    assert reasons == {"cancelled"}


@pytest.mark.parametrize(
    ("status", "message"),
    [("running", "not interrupted"), ("completed", "already completed")],
)
def test_cancel_refuses_running_and_finished_jobs(
    engine: Engine, settings: Settings, status: str, message: str
) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE hedge_jobs SET status = :s, worker_id = 'w1', "
                "lease_expires_at = now() + interval '1 minute', "
                "finished_at = CASE WHEN :s = 'completed' THEN now() END WHERE id = :j"
            ),
            {"s": status, "j": job_id},
        )
    with pytest.raises(cancel.CancelError, match=message):
        cancel.cancel(engine, job_id, actor="ops", reason="x")
    assert statuses(engine) == {job_id: status}
