"""Schemathesis over the console's own OpenAPI schema, on a real PostgreSQL.

Every operation the app declares is called with data generated from its schema (valid
data, then data the schema forbids), three ways: with the bearer token, with a token
configured but none sent, and read-only (no token configured).  No answer may be a
server error, and every answer's status, content type and body must be ones the schema
declares for that operation.

Each (operation, access) pair gets its own fresh database (the ``engine`` fixture).  The
generation is derandomized with a fixed number of examples and no deadline, so a run does
the same work on any machine and passes or fails the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, create_engine, text

from perpbot_db.services import console
from perpbot_db.settings import Settings
from perpbot_db.web.app import create_app
from tests.builders import job, submit

TOKEN = "fuzz-token-8d41c0a9e2b7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 50

#: The same work on any machine: a fixed number of examples per operation and mode, no
#: deadline, no "slow" health checks, the same examples on every run, no example database.
FUZZ = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _declared_operations() -> list[tuple[str, str]]:
    """The operations of the app's schema, read at collection time (no database: the
    engine never connects, and the schema does not depend on the settings' values)."""
    app = create_app(
        create_engine("postgresql+psycopg://schema@localhost/schema"), Settings.model_construct()
    )
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


OPERATIONS = _declared_operations()


def server_error(ctx: CheckContext, response: Any, case: schemathesis.Case) -> bool | None:
    """``not_a_server_error``, except a 503 the operation declares: ``/readyz`` answers
    "not ready" with 503 by design (a fresh database has no tick and no worker), and
    ``/api/state`` with 503 when the state cannot be built."""
    if response.status_code == 503 and "503" in case.operation.definition.raw["responses"]:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS: list[Callable[..., bool | None]] = [
    server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class FixedClock:
    """The guard's clock stands still: once the failure limit is reached, every later
    attempt in the run is 429, whatever the machine's speed."""

    def __call__(self) -> float:
        return 1000.0


ACCESS = {
    # access: (the configured token, the headers sent)
    "token": (SecretStr(TOKEN), AUTH),
    "no-token-sent": (SecretStr(TOKEN), {}),
    "read-only": (None, {}),
}


def fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, headers: dict[str, str]
) -> None:
    @FUZZ
    @given(case=operation.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def takes_input(operation: schemathesis.APIOperation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


@pytest.mark.parametrize("access", list(ACCESS))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_answers_only_as_its_schema_declares(
    engine: Engine, settings: Settings, method: str, path: str, access: str
) -> None:
    token, headers = ACCESS[access]
    app = create_app(engine, settings.model_copy(update={"api_token": token}), clock=FixedClock())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operation = schema.find_operation_by_path(method.lower(), path)
    assert operation is not None, f"{method} {path} is not in the served schema"
    fuzz(operation, GenerationMode.POSITIVE, headers)
    if takes_input(operation):  # nothing to get wrong in a request without inputs
        fuzz(operation, GenerationMode.NEGATIVE, headers)


# -- what the fuzzing found, each pinned by a focused test -----------------------------


@pytest.fixture
def api(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    armed = settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    with TestClient(create_app(engine, armed, clock=FixedClock())) as client:
        yield client


def writes(engine: Engine) -> tuple[Any, ...]:
    """What a change could have written: the system row, the jobs, events and limits."""
    with engine.connect() as conn:
        return tuple(
            conn.execute(text(sql)).scalar_one()
            for sql in (
                "SELECT status || ' ' || risk_mode FROM system_state",
                "SELECT string_agg(id || status, ',' ORDER BY id) FROM hedge_jobs",
                "SELECT count(*) FROM control_events",
                "SELECT count(*) FROM job_events",
                "SELECT count(*) FROM risk_limits",
            )
        )


def test_a_body_that_cannot_be_parsed_is_a_422_naming_the_body(
    engine: Engine, api: TestClient
) -> None:
    """It was FastAPI's 400 (undeclared): a body that is not UTF-8 or nests too deeply."""
    before = writes(engine)
    for body in (b'{"reason": "caf\xe9"}', b"[" * 5000 + b"]" * 5000):
        answer = api.post(
            "/api/control/pause",
            content=body,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["fields"] == [
            {"field": "body", "message": "could not be parsed as JSON"}
        ]
    assert writes(engine) == before


REASONED = [
    ("/api/control/pause", {}),
    ("/api/control/halt", {}),
    ("/api/risk/mode", {"mode": "conservative"}),
    ("/api/scheduler/config", {"risk_mode": "conservative"}),
    ("/api/risk/limits", {"mode": "balanced", "limits": {"spread_hard_bps": "30"}}),
    ("/api/jobs/{job}/cancel", {}),
    ("/api/jobs/{job}/override", {}),
]


@pytest.mark.parametrize(("path", "body"), REASONED, ids=[p for p, _ in REASONED])
def test_a_reason_with_a_nul_character_is_named_and_nothing_is_written(
    engine: Engine, settings: Settings, api: TestClient, path: str, body: dict[str, Any]
) -> None:
    """It was a 500: PostgreSQL's text cannot hold NUL, and the reason is audited."""
    [job_id] = submit(engine, settings, [job(1)])
    before = writes(engine)
    answer = api.post(
        path.format(job=job_id), json={**body, "reason": "maintenance\x00window"}, headers=AUTH
    )
    assert answer.status_code == 422, answer.text
    [field] = answer.json()["error"]["fields"]
    assert field["field"] == "body.reason" and "NUL" in field["message"]
    assert writes(engine) == before


@pytest.mark.parametrize("value", ["1e12", "-1e12", "1e30", "1e999999", "1e-13", "1e-999999"])
def test_a_limit_too_large_or_too_fine_is_named_and_nothing_is_written(
    engine: Engine, api: TestClient, value: str
) -> None:
    """It was a 500: ``risk_limits`` checks ``abs(value) < 1e12`` and PostgreSQL's numeric
    overflows on an exponent like 1e-999999 (now: at most 12 decimal places)."""
    before = writes(engine)
    answer = api.post(
        "/api/risk/limits",
        json={"reason": "tune", "mode": "balanced", "limits": {"spread_hard_bps": value}},
        headers=AUTH,
    )
    assert answer.status_code == 422, answer.text
    assert [f["field"] for f in answer.json()["error"]["fields"]] == ["body.limits.spread_hard_bps"]
    assert writes(engine) == before


def test_the_largest_and_finest_storable_limits_are_taken(engine: Engine, api: TestClient) -> None:
    for value in ("999999999999", "30.000000000001"):
        answer = api.post(
            "/api/risk/limits",
            json={"reason": "tune", "mode": "balanced", "limits": {"spread_hard_bps": value}},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["detail"]["changed"]["spread_hard_bps"][1] == value


def test_a_refused_change_to_a_path_with_a_nul_is_audited_with_it_escaped(
    engine: Engine, api: TestClient
) -> None:
    """It was a 500: the refused attempt's path is audited, and a NUL cannot be stored."""
    answer = api.post("/api/jobs/%00/cancel", json={"reason": "x"})
    assert answer.status_code == 401
    with engine.connect() as conn:
        reason = conn.execute(
            text("SELECT reason FROM control_events WHERE action = :a"),
            {"a": console.ACTION_REFUSED},
        ).scalar_one()
    assert reason == "POST /api/jobs/%00/cancel: missing"
