"""The HTTP API, through HTTP (FastAPI's test client, in process), on a real PostgreSQL.

Every change needs the token; without one configured the API is read-only; failed
attempts are audited and limited per client; errors name the field; submission is the
CLI's (validation, idempotency, all or nothing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, text

from perpbot_db.runtime.web import WebServer
from perpbot_db.services import console, tick
from perpbot_db.settings import Settings
from perpbot_db.store import workers
from perpbot_db.web.app import create_app
from tests.builders import (
    HANG_S,
    ManualClock,
    config,
    free_port,
    job,
    job_body,
    put_market,
    submit,
    wait_for,
)

TOKEN = "planted-token-4f9c2e7d1b"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def api(engine: Engine, settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    armed = settings.model_copy(
        update={"api_token": SecretStr(TOKEN), "web_auth_failures": 3, "web_auth_window_s": 60}
    )
    with TestClient(create_app(engine, armed, clock=clock)) as client:
        yield client


@pytest.fixture
def read_only(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(engine, settings)) as client:
        yield client


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def system_status(engine: Engine) -> str:
    return str(scalar(engine, "SELECT status FROM system_state"))


def test_healthz_answers_while_the_process_is_up(read_only: TestClient) -> None:
    assert read_only.get("/healthz").json() == {"status": "ok"}


def test_readyz_says_what_is_missing_until_a_scheduler_ticks_and_a_worker_beats(
    engine: Engine, read_only: TestClient
) -> None:
    answer = read_only.get("/readyz")
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["tick"] == "no scheduler has ticked"
    assert checks["worker"].startswith("no worker beat")
    tick.run_tick(engine, config(), scheduler="scheduler:test")
    with engine.begin() as conn:
        workers.register(conn, worker_id="worker:test", host="h", pid=1, concurrency=1)
    answer = read_only.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"ready": True, "checks": dict.fromkeys(checks, "ok")}


def test_without_a_token_configured_every_change_is_refused_and_nothing_written(
    engine: Engine, read_only: TestClient
) -> None:
    answer = read_only.post("/api/control/pause", json={"reason": "x"}, headers=AUTH)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "read_only"
    assert "PERPBOT_API_TOKEN" in answer.json()["error"]["message"]
    assert read_only.post("/api/jobs", json=job_body(1)).status_code == 403
    assert system_status(engine) == "running"
    assert scalar(engine, "SELECT count(*) FROM hedge_jobs") == 0


def test_a_change_without_the_token_is_401_audited_and_leaves_the_system_alone(
    engine: Engine, api: TestClient
) -> None:
    missing = api.post("/api/control/pause", json={"reason": "x"})
    wrong = api.post(
        "/api/control/pause", json={"reason": "x"}, headers={"Authorization": "Bearer nope"}
    )
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert system_status(engine) == "running"
    with engine.connect() as conn:
        events = conn.execute(
            text("SELECT actor, reason, details FROM control_events WHERE action = :a ORDER BY id"),
            {"a": console.ACTION_REFUSED},
        ).all()
    assert [e.reason for e in events] == [
        "POST /api/control/pause: missing",
        "POST /api/control/pause: wrong",
    ]
    assert events[0].actor == "api:testclient" and events[0].details["client"] == "testclient"


def test_too_many_failures_are_429_with_retry_after_even_with_the_right_token(
    engine: Engine, api: TestClient, clock: ManualClock
) -> None:
    for _ in range(3):
        assert api.post("/api/control/pause", json={"reason": "x"}).status_code == 401
    limited = api.post("/api/control/pause", json={"reason": "x"}, headers=AUTH)
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert system_status(engine) == "running"
    clock.now += 61  # the window has passed
    assert api.post("/api/control/pause", json={"reason": "x"}, headers=AUTH).status_code == 200
    assert system_status(engine) == "paused"


def test_pause_and_resume_through_the_api_are_audited_with_the_client(
    engine: Engine, api: TestClient
) -> None:
    assert api.post("/api/control/pause", json={"reason": "deploy"}, headers=AUTH).json()["ok"]
    assert system_status(engine) == "paused"
    again = api.post("/api/control/pause", json={"reason": "deploy"}, headers=AUTH)
    assert again.status_code == 409 and "nothing to pause" in again.json()["error"]["message"]
    assert api.post("/api/control/resume", json={"reason": "done"}, headers=AUTH).status_code == 200
    assert system_status(engine) == "running"
    actors = scalar(
        engine,
        "SELECT array_agg(DISTINCT actor) FROM control_events WHERE action IN "
        "('pause', 'resume', 'system_pause', 'system_resume') OR reason IN ('deploy', 'done')",
    )
    assert actors == ["api:testclient"]


def test_a_change_without_a_reason_names_the_field_and_writes_nothing(
    engine: Engine, api: TestClient
) -> None:
    for body in ({}, {"reason": "   "}, {"reason": "x", "extra": 1}):
        answer = api.post("/api/control/halt", json=body, headers=AUTH)
        assert answer.status_code == 422, body
        fields = [f["field"] for f in answer.json()["error"]["fields"]]
        assert any(f.startswith("body") for f in fields), fields
    assert system_status(engine) == "running"


def test_submit_validates_like_the_cli_and_is_idempotent(engine: Engine, api: TestClient) -> None:
    created = api.post("/api/jobs", json=job_body(1), headers=AUTH)
    assert created.status_code == 201
    [job_id] = created.json()["job_ids"]
    again = api.post("/api/jobs", json=job_body(1), headers=AUTH).json()
    assert again == {"job_ids": [job_id], "inserted": 0, "existing": 1}
    self_match = job_body(
        2,
        legs=[
            {"exchange": "binance", "side": "buy", "quantity": "0.01"},
            {"exchange": "binance", "side": "sell", "quantity": "0.01"},
        ],
    )
    refused = api.post("/api/jobs", json=[job_body(3), self_match], headers=AUTH)
    assert refused.status_code == 422
    fields = [f["field"] for f in refused.json()["error"]["fields"]]
    assert fields and all(f.startswith("body[1].legs") for f in fields), fields
    assert scalar(engine, "SELECT count(*) FROM hedge_jobs") == 1  # all or nothing


def test_a_job_is_read_back_with_its_legs_events_and_why(
    engine: Engine, settings: Settings, api: TestClient
) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    view = api.get(f"/api/jobs/{job_id}").json()
    assert view["job"]["id"] == job_id and len(view["legs"]) == 2
    assert [e["to_status"] for e in view["events"]] == ["pending"]
    listed = api.get("/api/jobs", params={"status": "pending"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    missing = api.get("/api/jobs/999999")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = api.get("/api/jobs", params={"status": "bogus"})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["field"] == "query.status"


def test_cancel_through_the_api_then_cancel_again_is_a_conflict(
    engine: Engine, settings: Settings, api: TestClient
) -> None:
    [job_id] = submit(engine, settings, [job(1)])
    done = api.post(f"/api/jobs/{job_id}/cancel", json={"reason": "stale idea"}, headers=AUTH)
    assert done.json() == {"ok": True, "detail": {"job_id": job_id, "was": "pending"}}
    again = api.post(f"/api/jobs/{job_id}/cancel", json={"reason": "again"}, headers=AUTH)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]


def test_risk_mode_and_limits_change_through_the_api_and_bad_limits_are_named(
    engine: Engine, api: TestClient
) -> None:
    moved = api.post(
        "/api/scheduler/config", json={"risk_mode": "conservative", "reason": "news"}, headers=AUTH
    )
    assert moved.json()["detail"] == {"previous": "balanced", "mode": "conservative"}
    assert scalar(engine, "SELECT risk_mode FROM system_state") == "conservative"
    bad_mode = api.post("/api/risk/mode", json={"mode": "yolo", "reason": "x"}, headers=AUTH)
    assert bad_mode.status_code == 422
    assert bad_mode.json()["error"]["fields"][0]["field"] == "body.mode"
    unknown = api.post(
        "/api/risk/limits",
        json={"mode": "balanced", "limits": {"spread_hardest_bps": 5}, "reason": "x"},
        headers=AUTH,
    )
    assert unknown.status_code == 422
    assert "spread_hardest_bps" in unknown.json()["error"]["message"]
    changed = api.post(
        "/api/risk/limits",
        json={"mode": "balanced", "limits": {"spread_hard_bps": "40"}, "reason": "wider"},
        headers=AUTH,
    )
    assert changed.status_code == 200, changed.json()
    assert (
        scalar(
            engine,
            "SELECT value FROM risk_limits WHERE mode = 'balanced' AND name = 'spread_hard_bps'",
        )
        == 40
    )
    state = api.get("/api/scheduler/state").json()
    assert state["system"]["risk_mode"] == "conservative"


def test_every_change_declares_its_error_answers_in_the_openapi_schema(
    read_only: TestClient,
) -> None:
    schema = read_only.get("/openapi.json").json()
    changes = [
        (path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method == "post"
    ]
    assert len(changes) >= 10
    for path, op in changes:
        assert {"401", "403", "422", "429"} <= set(op["responses"]), path


def test_changes_declare_the_token_and_the_session_as_their_security(
    read_only: TestClient,
) -> None:
    schema = read_only.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "PERPBOT_API_TOKEN as `Authorization: Bearer <token>`",
    }
    assert schemes["session"]["type"] == "apiKey"
    assert schemes["session"]["in"] == "cookie"
    assert schemes["session"]["name"] == "perpbot_session"
    for path, item in schema["paths"].items():
        for method, op in item.items():
            declared = {name for req in op.get("security", []) for name in req}
            if method == "post" and path != "/api/session":
                assert declared == {"token", "session"}, path
            if method == "get":
                assert declared == set(), path  # reads need no credential


def test_the_token_never_reaches_the_database_or_an_answer(
    engine: Engine, api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    put_market(engine)
    seen = [
        api.post("/api/control/pause", json={"reason": "x"}, headers=AUTH).text,
        api.post(
            "/api/control/resume",
            json={"reason": "y"},
            headers={"Authorization": f"Bearer {TOKEN}x"},
        ).text,
        api.get("/openapi.json").text,
        api.get("/api/scheduler/state").text,
    ]
    with engine.connect() as conn:
        dumped = conn.execute(
            text("SELECT coalesce(string_agg(t::text, ' '), '') FROM control_events t")
        ).scalar_one()
    assert TOKEN not in dumped and "planted" not in dumped
    assert all(TOKEN not in page for page in seen)
    assert TOKEN not in caplog.text


def test_the_server_listens_on_loopback_by_default_and_stops_when_asked(
    engine: Engine, settings: Settings
) -> None:
    assert Settings.model_fields["web_host"].default == "127.0.0.1"
    server = WebServer(engine, settings.model_copy(update={"web_port": free_port()}))
    server.start()
    try:
        assert wait_for(lambda: server.started)
        answer = httpx.get(f"{server.address}/healthz", timeout=HANG_S)
        assert answer.json() == {"status": "ok"}
        assert server.address.startswith("http://127.0.0.1:")
    finally:
        server.stop(timeout_s=HANG_S)
    assert server.thread is not None and not server.thread.is_alive()


def test_metrics_are_served_in_the_prometheus_format_from_the_database(
    engine: Engine, settings: Settings, read_only: TestClient
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(3)])
    answer = read_only.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = dict(
        line.rsplit(" ", 1) for line in answer.text.splitlines() if line and line[0] != "#"
    )
    assert float(samples['perpbot_jobs{status="pending"}']) == 3


def test_the_state_is_built_once_per_interval_and_shared_by_every_client(
    engine: Engine, settings: Settings, clock: ManualClock
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(2)])
    app = create_app(engine, settings, clock=clock)
    with TestClient(app) as client:
        first = client.get("/api/state").json()
        assert [client.get("/api/state").json() for _ in range(5)] == [first] * 5
        assert app.state.monitor.builds == 1
        assert first["version"] == 1 and first["jobs"]["pending"] == 2
        clock.now += settings.monitor_interval_s
        client.get("/api/state")
        assert app.state.monitor.builds == 2
