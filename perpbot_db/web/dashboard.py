"""The dashboard: HTML pages, their static files, the state's history and its live stream.

No build step: the pages are small server-rendered shells (every value escaped) that
load our own ``static/app.js`` and ``static/app.css`` and the vendored uPlot
(``static/vendor/``, see its README); ``app.js`` fills them from the JSON API.

* ``GET /`` the overview, ``GET /jobs/{id}`` one job (from ``GET /api/jobs/{id}``).
* ``GET /api/state/stream`` server-sent events: one ``state`` event each time a new
  state is built (at most once per ``monitor_interval_s``); left out of the OpenAPI
  schema (an endless stream would hang a schema-driven client).  Every client reads the
  one shared :class:`~perpbot_db.services.monitor.StateCache` through
  :class:`StateFeed`: twenty tabs cost one build per interval, not twenty.
* ``GET /api/state/history`` the day's PnL, volume and fees over time: a ring buffer
  of samples, one per new build this process has seen (it fills while anyone
  watches: the stream, ``/api/state``, or the history itself asks for the state).

Every HTML and static answer carries a strict Content-Security-Policy (no inline
script, no inline style), ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from perpbot_db.services import monitor

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
HISTORY_SAMPLES = 3600  # an hour at one build a second
KEEPALIVE_S = 15.0  # a comment line on a quiet stream, so proxies keep it open

STATIC_DIR = Path(str(resources.files("perpbot_db.web") / "static"))


@dataclass(frozen=True)
class Sample:
    """One point of the day's charts: when the state was built and its money figures."""

    built_at: datetime
    realized_pnl_usd: str
    volume_usd: str
    fees_usd: str
    loss_used_usd: str

    def as_dict(self) -> dict[str, str]:
        return {
            "built_at": self.built_at.isoformat(),
            "realized_pnl_usd": self.realized_pnl_usd,
            "volume_usd": self.volume_usd,
            "fees_usd": self.fees_usd,
            "loss_used_usd": self.loss_used_usd,
        }


class StateFeed:
    """The shared :class:`StateCache`, plus a ring buffer of the states it built.

    :meth:`get` is the cache's (it builds at most once per interval for every caller);
    a state not seen before appends one :class:`Sample`.  A new UTC day starts a new
    history (the figures are the day's).  Thread-safe.
    """

    def __init__(self, cache: monitor.StateCache, *, samples: int = HISTORY_SAMPLES) -> None:
        self.cache = cache
        self._samples: deque[Sample] = deque(maxlen=samples)
        self._last: monitor.MonitoringState | None = None
        self._lock = threading.Lock()
        self._json: tuple[monitor.MonitoringState, str] | None = None

    def json(self, state: monitor.MonitoringState) -> str:
        """``state``'s JSON, serialised once per state whatever the number of clients."""
        cached = self._json
        if cached is not None and cached[0] is state:
            return cached[1]
        text = state.to_json()
        self._json = (state, text)
        return text

    def get(self) -> monitor.MonitoringState:
        state = self.cache.get()
        if state is not self._last:
            with self._lock:
                if state is not self._last:
                    self._record(state)
        return state

    def _record(self, state: monitor.MonitoringState) -> None:
        self._last = state
        day = state.global_.day
        if self._samples and self._samples[-1].built_at.date() != day:
            self._samples.clear()
        if self._samples and state.built_at <= self._samples[-1].built_at:
            return
        self._samples.append(
            Sample(
                built_at=state.built_at,
                realized_pnl_usd=str(state.global_.realized_pnl_usd),
                volume_usd=str(state.global_.volume_usd),
                fees_usd=str(state.global_.fees_usd),
                loss_used_usd=str(state.global_.loss_used_usd),
            )
        )

    def history(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)


class SecureStatic(StaticFiles):
    """Static files with the dashboard's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _page(title: str, body_attrs: Mapping[str, str], main: str) -> HTMLResponse:
    attrs = "".join(f' {name}="{html.escape(value)}"' for name, value in body_attrs.items())
    text = PAGE.format(title=html.escape(title), attrs=attrs, main=main)
    return HTMLResponse(text, headers=dict(SECURITY_HEADERS) | {"Cache-Control": "no-store"})


def _sse(event: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n"


def mount_dashboard(app: FastAPI, feed: StateFeed, *, interval_s: float, read_only: bool) -> None:
    """Add the pages, the static files, ``/api/state/history`` and ``/api/state/stream``."""

    app.mount("/static", SecureStatic(directory=STATIC_DIR), name="static")
    mode = "read-only" if read_only else "token"

    @app.get("/", include_in_schema=False)
    def overview_page() -> HTMLResponse:
        return _page("perpbot console", {"data-page": "overview", "data-auth": mode}, OVERVIEW)

    @app.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(job_id: int) -> HTMLResponse:
        attrs = {"data-page": "job", "data-job-id": str(job_id), "data-auth": mode}
        return _page(f"job {job_id} · perpbot console", attrs, JOB.format(job_id=job_id))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204, headers=dict(SECURITY_HEADERS))

    @app.get("/api/state/history", tags=["state"])
    def history() -> dict[str, Any]:
        """The day's PnL, volume, fees and loss used, one sample per state this process
        built (oldest first, at most an hour of them)."""
        with contextlib.suppress(monitor.StateUnavailable):
            feed.get()
        return {
            "interval_s": interval_s,
            "samples": [sample.as_dict() for sample in feed.history()],
        }

    # Not in the OpenAPI schema: an endless text/event-stream is not something OpenAPI
    # describes, and a schema-driven client (a fuzzer, a generated SDK) would wait on it
    # for ever.  The README documents it.
    @app.get("/api/state/stream", include_in_schema=False)
    async def stream(request: Request) -> StreamingResponse:
        """Server-sent events: a ``state`` event (the JSON of ``GET /api/state``) each
        time a new state is built; ``unavailable`` while it cannot be built."""
        return StreamingResponse(
            _events(request, feed, interval_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


#: How often a stream looks for a newer state: asking the shared cache costs no query
#: while its state is fresh, and starts the one background rebuild once it is not.
STREAM_POLL_S = 0.25


async def _events(request: Request, feed: StateFeed, interval_s: float) -> AsyncIterator[str]:
    """A ``state`` event for every new build, within :data:`STREAM_POLL_S` of it."""
    yield "retry: 2000\n\n"
    last: object = None
    quiet = 0.0
    poll = min(STREAM_POLL_S, interval_s)
    while not await request.is_disconnected():
        try:
            state = await run_in_threadpool(feed.get)
        except monitor.StateUnavailable as exc:
            if last is not exc.__class__:
                yield _sse("unavailable", json.dumps({"error": str(exc)}))
                last = exc.__class__
        else:
            if state is not last:
                yield _sse("state", feed.json(state))
                last = state
                quiet = 0.0
        await asyncio.sleep(poll)
        quiet += poll
        if quiet >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/vendor/uPlot.min.css">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/vendor/uPlot.iife.min.js" defer></script>
<script src="/static/app.js" defer></script>
</head>
<body{attrs}>
<header class="top">
  <h1><a href="/">perpbot console</a></h1>
  <div class="live">
    <span id="live-state" class="pill">connecting</span>
    <span id="age" title="how old the data is (now - built_at)">no data yet</span>
    <button type="button" id="live-toggle">Pause live updates</button>
  </div>
  <div class="auth">
    <form id="login" class="hidden" autocomplete="off">
      <label>Token <input type="password" id="token" name="token" required></label>
      <button type="submit">Log in</button>
    </form>
    <span id="whoami" class="hidden">logged in</span>
    <button type="button" id="logout" class="hidden">Log out</button>
    <span id="auth-note"></span>
  </div>
</header>
<p id="message" role="status"></p>
<main>
{main}
</main>
<dialog id="confirm">
  <form id="confirm-form" method="dialog">
    <h2 id="confirm-title">Confirm</h2>
    <p id="confirm-text"></p>
    <label>Reason (audited) <input type="text" id="confirm-reason" required maxlength="500">
    </label>
    <menu>
      <button type="button" id="confirm-cancel">Cancel</button>
      <button type="submit" id="confirm-ok" value="ok">Confirm</button>
    </menu>
  </form>
</dialog>
</body>
</html>
"""

OVERVIEW = """<section id="banner" class="banner">
  <div class="card"><h3>System</h3><p class="big" id="system-status">?</p>
    <p>risk mode <b id="risk-mode">?</b></p></div>
  <div class="card"><h3>Health</h3><p class="big" id="health-verdict">?</p>
    <ul id="health-reasons" class="reasons"></ul></div>
  <div class="card"><h3>Today (<span id="day">?</span>)</h3>
    <table class="kv">
      <tr><th>PnL</th><td id="pnl">?</td></tr>
      <tr><th>Volume</th><td id="volume">?</td></tr>
      <tr><th>Fees</th><td id="fees">?</td></tr>
    </table></div>
  <div class="card"><h3>Daily loss</h3>
    <p><span id="loss-used">?</span> of <span id="loss-limit">?</span>
       (<span id="loss-ratio">?</span>)</p>
    <meter id="loss-meter" min="0" max="1" low="0.5" high="0.8" optimum="0" value="0"></meter>
    <p id="halt-reason" class="warn"></p></div>
</section>
<section id="controls" class="card">
  <h2>Controls</h2>
  <button type="button" class="control" data-action="pause">Pause</button>
  <button type="button" class="control" data-action="resume">Resume</button>
  <button type="button" class="control danger" data-action="halt">Halt</button>
  <label>Risk mode <select id="mode-select">
    <option value="conservative">conservative</option>
    <option value="balanced">balanced</option>
    <option value="aggressive">aggressive</option>
    <option value="volume_focused">volume_focused</option>
  </select></label>
  <button type="button" class="control" data-action="mode">Set mode</button>
</section>
<section class="grid2">
  <div class="card"><h2>PnL today</h2><div id="chart-pnl" class="chart"></div></div>
  <div class="card"><h2>Volume today</h2><div id="chart-volume" class="chart"></div></div>
</section>
<section class="card"><h2>Capital</h2><div id="capital"></div></section>
<section class="grid2">
  <div class="card"><h2>Jobs</h2>
    <table class="kv" id="jobs-counts">
      <tr><th>pending</th><td id="jobs-pending">?</td></tr>
      <tr><th>admitted</th><td id="jobs-admitted">?</td></tr>
      <tr><th>running</th><td id="jobs-running">?</td></tr>
      <tr><th>completed today</th><td id="jobs-completed">?</td></tr>
      <tr><th>failed today</th><td id="jobs-failed">?</td></tr>
    </table></div>
  <div class="card"><h2>Processes</h2>
    <table class="kv">
      <tr><th>leader</th><td id="leader">?</td></tr>
      <tr><th>last tick</th><td id="tick-age">?</td></tr>
      <tr><th>live workers</th><td id="live-workers">?</td></tr>
    </table></div>
</section>
<section class="card"><h2>Running jobs</h2><div id="running"></div></section>
<section class="grid2">
  <div class="card"><h2>Holds (pending, by code)</h2><div id="holds"></div></div>
  <div class="card"><h2>Denials and failures (last hour)</h2><div id="denials"></div></div>
</section>
<section class="card"><h2>Exchanges</h2><div id="exchanges"></div></section>
<section class="card"><h2>Protection locks</h2><div id="locks"></div></section>"""

JOB = """<section class="card">
  <h2>Job {job_id}: <span id="job-status">-</span></h2>
  <p><a href="/">&larr; overview</a></p>
  <p id="job-why"></p>
  <div id="job-summary"></div>
</section>
<section class="card"><h2>Legs</h2><div id="job-legs"></div></section>
<section class="card"><h2>Reservations</h2><div id="job-reservations"></div></section>
<section class="card"><h2>Event timeline</h2><div id="job-events"></div></section>"""
