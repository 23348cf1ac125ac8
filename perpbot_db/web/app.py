"""The FastAPI application: routes, the token guard on every change, JSON errors.

Reads use the engine's pooled connections through the read commands' functions
(:mod:`perpbot_db.services.overview`), each in a READ ONLY transaction under a
``statement_timeout``.  Changes call the same services as the CLI (submit, cancel,
control, risk), with ``api:<client>`` as the audited actor.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at
# run time, and ``Actor`` is local to :func:`create_app`.

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

from fastapi import Body, Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from perpbot_db.domain.lifecycle import JOB_STATUSES, RiskMode
from perpbot_db.services import console, control, metrics, monitor, overview, risk_limits
from perpbot_db.services.cancel import CancelError, cancel
from perpbot_db.services.control import ControlError
from perpbot_db.services.submit import SubmitError, submit_lines
from perpbot_db.settings import Settings
from perpbot_db.store.overview import ReadConnection
from perpbot_db.web.auth import (
    Check,
    FailureLimiter,
    SessionStore,
    TokenGuard,
    Verdict,
    bearer,
    same_origin,
)
from perpbot_db.web.dashboard import StateFeed, mount_dashboard
from perpbot_db.web.models import (
    Changed,
    ErrorBody,
    ErrorResponse,
    FieldError,
    Health,
    Login,
    Readiness,
    Reason,
    RiskLimitsChange,
    RiskModeChange,
    SchedulerConfig,
    SessionInfo,
    Submitted,
)

#: The responses a change may give besides its own, declared in the OpenAPI schema.
CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No token, or the wrong one"},
    403: {"model": ErrorResponse, "description": "Read-only: no token is configured"},
    409: {"model": ErrorResponse, "description": "Not possible in the current state"},
    422: {"model": ErrorResponse, "description": "A field is wrong (named)"},
    429: {"model": ErrorResponse, "description": "Too many failed attempts: see Retry-After"},
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "A parameter is wrong (named)"},
}


class ApiError(Exception):
    """An error answer: status, code, message, the fields at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(code=code, message=message, fields=fields or [])
        self.headers = headers


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=exc.body).model_dump(), status_code=exc.status, headers=exc.headers
    )


def _field_of(message: str) -> list[FieldError]:
    """The services name the field first (``reason: must say why``)."""
    name, sep, rest = message.partition(": ")
    return [FieldError(field=name, message=rest)] if sep and " " not in name else []


SESSION_COOKIE = "perpbot_session"
#: How a change is authorised, as the OpenAPI document declares it (either one).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="PERPBOT_API_TOKEN as `Authorization: Bearer <token>`",
)
SESSION = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="the dashboard's session, from POST /api/session (same origin only)",
)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(
    engine: Engine,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    statement_timeout_ms: int = 5000,
    session_ttl_s: float = 12 * 3600.0,
) -> FastAPI:
    app = FastAPI(
        title="perpbot-db console",
        version="1",
        description="Cross-exchange hedge jobs: state, jobs and controls. Every change needs "
        "`Authorization: Bearer <PERPBOT_API_TOKEN>`; without a configured token the API is "
        "read-only.",
    )
    guard = TokenGuard(
        settings.api_token,
        FailureLimiter(
            max_failures=settings.web_auth_failures, window_s=settings.web_auth_window_s
        ),
    )
    app.state.guard = guard
    sessions = SessionStore(ttl_s=session_ttl_s)
    app.state.sessions = sessions

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            FieldError(field=".".join(str(part) for part in err.get("loc", ())), message=err["msg"])
            for err in exc.errors()
        ]
        names = ", ".join(f.field for f in fields)
        return _error(ApiError(422, "invalid", f"invalid request: {names}", fields))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot parse (not UTF-8, nested too deeply):
            # the declared 422 naming the body, as for a body that is not JSON.
            fields = [FieldError(field="body", message="could not be parsed as JSON")]
            return _error(ApiError(422, "invalid", "invalid request: body", fields))
        return _error(ApiError(exc.status_code, "http", str(exc.detail)))

    # -- reads --------------------------------------------------------------------

    @contextlib.contextmanager
    def reading() -> Iterator[ReadConnection]:
        with engine.connect() as conn:
            raw: ReadConnection = conn.connection.driver_connection  # type: ignore[assignment]
            raw.execute("SET TRANSACTION READ ONLY")
            raw.execute(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
            try:
                yield raw
            except BaseException:
                raw.rollback()
                raise
            raw.commit()  # not a rollback: it would drop the connection's prepared statements

    # -- the guard on changes -------------------------------------------------------

    def authorised(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
        _cookie: Annotated[str | None, Security(SESSION)] = None,
    ) -> str:
        """The audited actor of a change (``api:<client>``), or an error answer: the
        bearer token, or else the dashboard's session cookie (from our own origin).

        ``_bearer`` and ``_cookie`` only declare the two schemes in the OpenAPI
        document (either one authorises a change); the checks below read the request
        themselves, so a malformed header is refused and audited like a wrong one."""
        client = _client(request)
        presented = bearer(request.headers.get("authorization"))
        by_cookie = presented is None and not guard.read_only and SESSION_COOKIE in request.cookies
        check = (
            session_check(request, client) if by_cookie else guard.check(client, presented, clock())
        )
        if check.allowed:
            return f"api:{client}"
        refuse(request, client, check, cookie=by_cookie)

    def session_check(request: Request, client: str) -> Check:
        """A session cookie: valid, unexpired and sent by our own page."""
        now = clock()
        wait = guard.limiter.retry_after(client, now)
        if wait:
            return Check(Verdict.LIMITED, wait)
        headers = request.headers
        if sessions.valid(request.cookies.get(SESSION_COOKIE), now) and same_origin(
            headers.get("host"), headers.get("origin"), headers.get("referer")
        ):
            return Check(Verdict.ALLOWED)
        guard.limiter.fail(client, now)
        return Check(Verdict.WRONG)

    def refuse(request: Request, client: str, check: Check, cookie: bool = False) -> NoReturn:
        """Raise the answer to a refused credential (audited unless read-only)."""
        if check.verdict is Verdict.READ_ONLY:
            raise ApiError(
                403, "read_only", "the API is read-only: no PERPBOT_API_TOKEN is configured"
            )
        console.audit_refused(
            engine,
            client=client,
            method=request.method,
            path=request.url.path.replace("\x00", "%00"),  # PostgreSQL stores no NUL
            verdict=check.verdict.value,
        )
        if check.verdict is Verdict.LIMITED:
            raise ApiError(
                429,
                "too_many_failures",
                f"too many failed attempts: retry in {check.retry_after_s}s",
                headers={"Retry-After": str(check.retry_after_s)},
            )
        raise ApiError(
            401,
            "unauthorized",
            "the session is not valid (expired, logged out, or sent from another origin): "
            "log in again"
            if cookie
            else "a change needs Authorization: Bearer <token>"
            if check.verdict is Verdict.MISSING
            else "the token is not the configured one",
            headers={"WWW-Authenticate": "Bearer"},
        )

    Actor = Annotated[str, Depends(authorised)]

    # -- the dashboard's session: the token exchanged once for a cookie ----------------

    @app.post("/api/session", tags=["session"], status_code=204, responses=CHANGE_ERRORS)
    def login(request: Request, body: Login) -> Response:
        """Exchange the token for an HttpOnly SameSite=Strict session cookie (the cookie
        is a random id: never the token)."""
        client = _client(request)
        check = guard.check(client, body.token.get_secret_value(), clock())
        if not check.allowed:
            refuse(request, client, check)
        response = Response(status_code=204)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.open(clock()),
            max_age=int(session_ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.delete("/api/session", tags=["session"], status_code=204)
    def logout(request: Request) -> Response:
        """Log out: the session ends and its cookie is cleared."""
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/api/session", tags=["session"], response_model=SessionInfo)
    def session_info(request: Request) -> SessionInfo:
        """Whether this browser holds a live session, and whether the API is read-only."""
        live = sessions.valid(request.cookies.get(SESSION_COOKIE), clock())
        return SessionInfo(authenticated=live, read_only=guard.read_only)

    def controlled(call: Callable[[], object]) -> object:
        try:
            return call()
        except ControlError as exc:
            message = str(exc)
            fields = _field_of(message)
            status = 422 if fields and fields[0].field in ("reason", "actor") else 409
            raise ApiError(status, "refused", message, fields) from None

    # -- health -------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """The process is up (it checks nothing else)."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness, "description": "Not ready: the checks say why"}},
    )
    def readyz() -> JSONResponse:
        """The database answers, a scheduler ticked recently, a worker is alive."""
        checks = console.readiness(
            engine,
            tick_within_s=max(3 * settings.tick_interval_s, 10.0),
            heartbeat_within_s=settings.lease_s,
        )
        ready = all(value == "ok" for value in checks.values())
        body = Readiness(ready=ready, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    # -- jobs ---------------------------------------------------------------------

    @app.get("/api/jobs", tags=["jobs"], responses=READ_ERRORS)
    def list_jobs(
        status: Annotated[str | None, Query(description="one of the job statuses")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """The newest jobs, each with its last decision code and a short reason."""
        if status is not None and status not in JOB_STATUSES:
            raise ApiError(
                422,
                "invalid",
                f"status: not a job status (one of {', '.join(JOB_STATUSES)})",
                [FieldError(field="query.status", message="not a job status")],
            )
        with reading() as conn:
            return {"jobs": overview.job_rows(conn, status=status, limit=limit)}

    @app.get(
        "/api/jobs/{job_id}",
        tags=["jobs"],
        responses={404: {"model": ErrorResponse, "description": "No such job"}, **READ_ERRORS},
    )
    def get_job(job_id: int) -> dict[str, Any]:
        """One job: its legs, reservations, event timeline, and why it is where it is."""
        with reading() as conn:
            view = overview.job_view(conn, job_id)
        if view is None:
            raise ApiError(404, "not_found", f"job {job_id} does not exist")
        return view.as_dict()

    @app.post("/api/jobs", tags=["jobs"], status_code=201, responses=CHANGE_ERRORS)
    def submit_jobs(
        actor: Actor,
        body: Annotated[
            dict[str, Any] | list[dict[str, Any]],
            Body(description="a job as in DESIGN.md, or a list of jobs (all or nothing)"),
        ],
    ) -> Submitted:
        """Submit one job or a list, through the CLI's validation and idempotency."""
        many = isinstance(body, list)
        jobs = body if isinstance(body, list) else [body]
        if not jobs:
            raise ApiError(
                422, "invalid", "body: no job", [FieldError(field="body", message="empty")]
            )
        lines = [json.dumps(job) for job in jobs]
        try:
            result = submit_lines(engine, lines, settings, datetime.now(UTC))
        except SubmitError as exc:
            raise ApiError(409, "refused", str(exc)) from None
        if not result.written:
            fields = [
                FieldError(
                    field=(f"body[{p.line - 1}]." if many else "body.") + p.field,
                    message=p.message,
                )
                for p in result.problems
            ]
            raise ApiError(422, "invalid", "a job is invalid: nothing was written", fields)
        return Submitted(job_ids=result.job_ids, inserted=result.inserted, existing=result.existing)

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"], responses=CHANGE_ERRORS)
    def cancel_job(job_id: int, actor: Actor, body: Reason) -> Changed:
        """Cancel a pending or admitted job (a running one is not interrupted)."""
        try:
            was = cancel(engine, job_id, actor=actor, reason=body.reason)
        except CancelError as exc:
            raise ApiError(409, "refused", str(exc)) from None
        return Changed(detail={"job_id": job_id, "was": was.value})

    @app.post("/api/jobs/{job_id}/override", tags=["jobs"], responses=CHANGE_ERRORS)
    def override_job(job_id: int, actor: Actor, body: Reason) -> Changed:
        """Let one pending job pass soft limits and the score threshold (never a hard limit)."""
        controlled(lambda: control.force_admit(engine, job_id, actor=actor, reason=body.reason))
        return Changed(detail={"job_id": job_id})

    # -- control ------------------------------------------------------------------

    def control_route(path: str, action: Callable[..., object], summary: str) -> None:
        def route(actor: Actor, body: Reason) -> Changed:
            controlled(lambda: action(engine, actor=actor, reason=body.reason))
            return Changed(detail={"action": path.rsplit("/", 1)[1]})

        route.__doc__ = summary
        app.post(path, tags=["control"], responses=CHANGE_ERRORS, name=path)(route)

    control_route("/api/control/pause", control.pause, "Stop admitting and starting jobs.")
    control_route("/api/control/resume", control.resume, "Admit and start jobs again.")
    control_route("/api/control/halt", control.halt, "Halt: nothing is admitted or started.")
    control_route(
        "/api/control/clear-halt",
        control.clear_halt,
        "Override a halt: the system runs under manual_override until resumed normally.",
    )

    def set_mode(actor: str, mode: RiskMode, reason: str) -> Changed:
        def change() -> RiskMode:
            return control.set_risk_mode(engine, mode, actor=actor, reason=reason)

        previous = controlled(change)
        return Changed(detail={"previous": str(previous), "mode": mode.value})

    @app.post("/api/risk/mode", tags=["risk"], responses=CHANGE_ERRORS)
    def risk_mode(actor: Actor, body: RiskModeChange) -> Changed:
        """Change the risk mode (audited); the next tick judges with it."""
        return set_mode(actor, body.mode, body.reason)

    @app.post("/api/scheduler/config", tags=["risk"], responses=CHANGE_ERRORS)
    def scheduler_config(actor: Actor, body: SchedulerConfig) -> Changed:
        """The original design's scheduler config: its risk mode."""
        return set_mode(actor, body.risk_mode, body.reason)

    @app.post("/api/risk/limits", tags=["risk"], responses=CHANGE_ERRORS)
    def risk_limits_change(actor: Actor, body: RiskLimitsChange) -> Changed:
        """Change limits of one mode together (validated against its other limits)."""
        try:
            change = risk_limits.set_limits(
                engine, body.mode, body.limits, actor=actor, reason=body.reason
            )
        except risk_limits.RiskLimitError as exc:
            message = str(exc)
            raise ApiError(422, "invalid", message, _field_of(message)) from None
        return Changed(detail={"changed": {} if change is None else change.details()})

    @app.get("/api/scheduler/state", tags=["risk"])
    def scheduler_state() -> dict[str, Any]:
        """The system status, risk mode and limits in force, and the last ticks."""
        with reading() as conn:
            snapshot = overview.status_snapshot(conn)
        return {"system": snapshot["system"], "jobs": snapshot["jobs"]}

    # -- the monitoring state: one build per interval, shared by every client ---------

    @contextlib.contextmanager
    def driver_connection() -> Iterator[ReadConnection]:
        with engine.connect() as conn:
            raw: ReadConnection = conn.connection.driver_connection  # type: ignore[assignment]
            yield raw

    state_cache = monitor.StateCache(
        monitor.state_builder(
            driver_connection,
            monitor.MonitorConfig.from_settings(settings, interval_s=settings.monitor_interval_s),
        ),
        interval_s=settings.monitor_interval_s,
        clock=clock,
    )
    app.state.monitor = state_cache
    feed = StateFeed(state_cache)
    mount_dashboard(app, feed, interval_s=settings.monitor_interval_s, read_only=guard.read_only)

    @app.get(
        "/api/state",
        tags=["state"],
        response_class=Response,
        responses={
            200: {"content": {"application/json": {}}, "description": "The monitoring state"},
            503: {"model": ErrorResponse, "description": "The state could not be built"},
        },
    )
    def state() -> Response:
        """The monitoring state (global, capital, exchanges, jobs, risk, market, processes,
        health), built at most once per ``monitor_interval_s`` and shared by every client."""
        try:
            built = feed.get()
        except monitor.StateUnavailable as exc:
            raise ApiError(503, "state_unavailable", str(exc)) from None
        return Response(feed.json(built), media_type="application/json")

    metrics_config = metrics.MetricsConfig.from_settings(settings)

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus"}},
    )
    def metrics_route() -> Response:
        """Prometheus metrics, read from the database at scrape time (docs/metrics.md)."""
        with reading() as conn:
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            body = metrics.render(conn, row[0], metrics_config)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    return app
