"""The dashboard through HTTP on a real PostgreSQL: its pages and static files under a
strict CSP, the token exchanged once for a session cookie, the live stream and the
history of the day's figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, text

from perpbot_db.runtime.web import WebServer
from perpbot_db.services import console
from perpbot_db.settings import Settings
from perpbot_db.web.app import SESSION_COOKIE, create_app
from perpbot_db.web.auth import SessionStore, same_origin
from perpbot_db.web.dashboard import CSP
from tests.builders import HANG_S, ManualClock, free_port, job, put_market, submit, wait_for

TOKEN = "planted-dash-token-9a8b7c"
HOST = "testserver"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def armed(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"api_token": SecretStr(TOKEN), "web_auth_failures": 5, "web_auth_window_s": 60}
    )


@pytest.fixture
def api(engine: Engine, armed: Settings, clock: ManualClock) -> Iterator[TestClient]:
    with TestClient(create_app(engine, armed, clock=clock)) as client:
        yield client


def system_status(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT status FROM system_state")).scalar_one())


def refused(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT reason FROM control_events WHERE action = :a ORDER BY id"),
                {"a": console.ACTION_REFUSED},
            ).scalars()
        )


def assert_secure(answer: httpx.Response) -> None:
    assert answer.headers["Content-Security-Policy"] == CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    assert "access-control-allow-origin" not in answer.headers


def test_the_pages_are_served_under_a_strict_csp_with_no_inline_script_or_style(
    api: TestClient,
) -> None:
    for path in ("/", "/jobs/42"):
        page = api.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert_secure(page)
        assert "<script>" not in page.text and "style=" not in page.text
        assert "<style" not in page.text and "onclick" not in page.text
        assert '<script src="/static/app.js" defer></script>' in page.text
    assert 'data-job-id="42"' in api.get("/jobs/42").text
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    assert api.get("/jobs/nope").status_code == 422


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/static/app.js", "javascript"),
        ("/static/app.css", "text/css"),
        ("/static/vendor/uPlot.iife.min.js", "javascript"),
        ("/static/vendor/uPlot.min.css", "text/css"),
    ],
)
def test_the_static_files_are_served_with_the_security_headers(
    api: TestClient, path: str, kind: str
) -> None:
    answer = api.get(path)
    assert answer.status_code == 200
    assert kind in answer.headers["content-type"]
    assert_secure(answer)
    assert len(answer.content) > 100


def test_the_token_is_exchanged_once_for_an_httponly_strict_cookie_that_never_holds_it(
    engine: Engine, api: TestClient
) -> None:
    assert api.get("/api/session").json() == {"authenticated": False, "read_only": False}
    login = api.post("/api/session", json={"token": TOKEN})
    assert login.status_code == 204
    cookie = login.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie and "planted" not in cookie
    value = api.cookies[SESSION_COOKIE]
    assert len(value) >= 40 and TOKEN not in value
    assert api.get("/api/session").json()["authenticated"] is True

    # A change with the cookie (and no bearer header) works, audited as the client.
    paused = api.post("/api/control/pause", json={"reason": "from the page"})
    assert paused.status_code == 200, paused.text
    assert system_status(engine) == "paused"
    # Without it: 401.
    api.cookies.clear()
    assert api.post("/api/control/resume", json={"reason": "x"}).status_code == 401
    assert system_status(engine) == "paused"


def test_logging_out_ends_the_session(engine: Engine, api: TestClient) -> None:
    assert api.post("/api/session", json={"token": TOKEN}).status_code == 204
    stolen = api.cookies[SESSION_COOKIE]
    out = api.delete("/api/session")
    assert out.status_code == 204
    assert SESSION_COOKIE in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    api.cookies.set(SESSION_COOKIE, stolen)  # the old id replayed
    answer = api.post("/api/control/pause", json={"reason": "x"})
    assert answer.status_code == 401
    assert "log in again" in answer.json()["error"]["message"]
    assert system_status(engine) == "running"


def test_a_cookie_sent_from_another_origin_is_refused(engine: Engine, api: TestClient) -> None:
    assert api.post("/api/session", json={"token": TOKEN}).status_code == 204
    evil = api.post(
        "/api/control/pause", json={"reason": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert evil.status_code == 401
    assert system_status(engine) == "running"
    ours = api.post(
        "/api/control/pause", json={"reason": "x"}, headers={"Origin": f"http://{HOST}"}
    )
    assert ours.status_code == 200
    assert refused(engine) == ["POST /api/control/pause: wrong"]


def test_a_wrong_token_exchange_is_401_audited_and_sets_no_cookie(
    engine: Engine, api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = api.post("/api/session", json={"token": TOKEN + "x"})
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    assert TOKEN not in wrong.text
    empty = api.post("/api/session", json={"token": ""})
    assert empty.status_code == 422
    assert empty.json()["error"]["fields"][0]["field"] == "body.token"
    assert refused(engine) == ["POST /api/session: wrong"]
    with engine.connect() as conn:
        dumped = conn.execute(
            text("SELECT coalesce(string_agg(t::text, ' '), '') FROM control_events t")
        ).scalar_one()
    assert "planted" not in dumped and "planted" not in caplog.text


def test_failed_exchanges_count_against_the_same_limiter(
    api: TestClient, clock: ManualClock
) -> None:
    for _ in range(5):
        assert api.post("/api/session", json={"token": "guess"}).status_code == 401
    limited = api.post("/api/session", json={"token": TOKEN})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "set-cookie" not in limited.headers
    clock.now += 61
    assert api.post("/api/session", json={"token": TOKEN}).status_code == 204


def test_read_only_the_exchange_is_403_and_the_page_says_so(
    engine: Engine, settings: Settings
) -> None:
    with TestClient(create_app(engine, settings)) as client:
        assert client.post("/api/session", json={"token": "x"}).status_code == 403
        assert client.get("/api/session").json() == {"authenticated": False, "read_only": True}
        assert 'data-auth="read-only"' in client.get("/").text


def test_the_history_grows_by_one_sample_per_new_state(
    engine: Engine, settings: Settings, clock: ManualClock
) -> None:
    put_market(engine)
    app = create_app(engine, settings, clock=clock)
    with TestClient(app) as client:
        first = client.get("/api/state/history").json()
        assert len(first["samples"]) == 1
        assert client.get("/api/state/history").json() == first  # same build: no new sample
        sample = first["samples"][0]
        assert set(sample) == {
            "built_at",
            "realized_pnl_usd",
            "volume_usd",
            "fees_usd",
            "loss_used_usd",
        }
        clock.now += settings.monitor_interval_s
        client.get("/api/state")  # the last state at once; one rebuild in the background

        def samples() -> list[dict[str, str]]:
            return list(client.get("/api/state/history").json()["samples"])

        assert wait_for(lambda: len(samples()) == 2)
        grown = samples()
        assert len(grown) == 2 and grown[0] == sample
        assert grown[1]["built_at"] > grown[0]["built_at"]
        assert app.state.monitor.builds == 2


def test_the_stream_yields_the_shared_state_as_server_sent_events(
    engine: Engine, settings: Settings
) -> None:
    put_market(engine)
    submit(engine, settings, [job(i) for i in range(2)])
    server = WebServer(engine, settings.model_copy(update={"web_port": free_port()}))
    server.start()
    try:
        assert wait_for(lambda: server.started)
        events: list[dict[str, Any]] = []
        with (
            httpx.Client(base_url=server.address, timeout=HANG_S) as client,
            client.stream("GET", "/api/state/stream") as answer,
        ):
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: ") and event == "state":
                    events.append(json.loads(line[len("data: ") :]))
                    break
        state = events[0]
        assert state["version"] == 1 and state["jobs"]["pending"] == 2
        assert server.server.config.app.state.monitor.builds >= 1
    finally:
        server.stop(timeout_s=HANG_S)


def test_the_schema_declares_the_session_and_history_but_not_the_endless_stream(
    api: TestClient,
) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/session", "/api/state/history"} <= set(paths)
    assert {"401", "422", "429"} <= set(paths["/api/session"]["post"]["responses"])
    assert "/api/state/stream" not in paths and "/" not in paths


def test_a_session_store_expires_and_forgets_sessions() -> None:
    store = SessionStore(ttl_s=10, max_sessions=2)
    a = store.open(0.0)
    assert store.valid(a, 5.0) and not store.valid(a, 10.0) and not store.valid(a, 5.0)
    b, c, d = store.open(1.0), store.open(2.0), store.open(3.0)
    assert not store.valid(b, 3.0) and store.valid(c, 3.0) and store.valid(d, 3.0)
    store.close(c)
    assert not store.valid(c, 3.0) and not store.valid(None, 3.0) and not store.valid("", 3.0)


def test_same_origin_needs_the_origin_or_referer_to_name_the_host() -> None:
    assert same_origin("h:1", "http://h:1", None)
    assert same_origin("h:1", None, "http://h:1/jobs/3")
    assert same_origin("h:1", None, None)
    assert not same_origin("h:1", "http://evil:1", None)
    assert not same_origin("h:1", None, "http://evil/")
    assert not same_origin("h:1", "null", None)
