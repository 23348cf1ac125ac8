"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package through ``executable_path``; .ci/run installs it).

The page loads under its CSP with no console error, its numbers are the API's,
logging in with the token and pausing through the page's confirm dialog pauses the
system, and the planted token appears in no page, cookie or log.  A missing browser
FAILS this test: it never skips.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from pydantic import SecretStr
from sqlalchemy import Engine, text

from perpbot_db.runtime.web import WebServer
from perpbot_db.settings import Settings
from tests.builders import HANG_S, job, put_market, submit, wait_for

TOKEN = "planted-browser-token-5e6f7a"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = HANG_S * 1000  # a hang guard, never a pace: every wait is for a condition


@pytest.fixture
def server(engine: Engine, settings: Settings) -> Iterator[WebServer]:
    armed = settings.model_copy(update={"web_port": 0, "api_token": SecretStr(TOKEN)})
    web = WebServer(engine, armed)
    web.start()
    try:
        assert wait_for(lambda: web.started), "the console did not start"
        yield web
    finally:
        web.stop(timeout_s=HANG_S)


@pytest.fixture
def browser() -> Iterator[Browser]:
    found = Path(CHROMIUM).exists() or shutil.which("chromium")
    assert found, f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Problems:
    """Console errors and warnings (a CSP violation is one) and uncaught page errors."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", self.console)
        page.on("pageerror", lambda exc: self.seen.append(f"pageerror: {exc}"))

    def console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") or "Content Security Policy" in message.text:
            self.seen.append(f"{message.type}: {message.text}")


def system_status(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT status FROM system_state")).scalar_one())


def test_the_dashboard_shows_the_api_numbers_and_pauses_the_system_from_the_page(
    engine: Engine,
    settings: Settings,
    server: WebServer,
    browser: Browser,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    put_market(engine)
    job_ids = submit(engine, settings, [job(i) for i in range(3)])
    base = server.address

    context = browser.new_context()
    page = context.new_page()
    problems = Problems(page)
    page.goto(f"{base}/", wait_until="load")

    # The numbers on the page are the API's.
    expect(page.locator("#jobs-pending")).to_have_text("3", timeout=WAIT_MS)
    state = httpx.get(f"{base}/api/state", timeout=HANG_S).json()
    assert state["jobs"]["pending"] == 3
    expect(page.locator("#system-status")).to_have_text(state["global"]["status"])
    expect(page.locator("#risk-mode")).to_have_text(state["global"]["risk_mode"])
    expect(page.locator("#health-verdict")).to_have_text(state["health"]["verdict"])
    expect(page.locator("#live-state")).to_have_text("live", timeout=WAIT_MS)
    expect(page.locator("#age")).to_contain_text("s old", timeout=WAIT_MS)
    expect(page.locator("#chart-pnl canvas")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#capital .exchange").first).to_be_visible(timeout=WAIT_MS)

    # Controls are disabled until logged in; the token is exchanged once for a cookie.
    pause = page.locator("button.control[data-action=pause]")
    expect(pause).to_be_disabled()
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect(page.locator("#logout")).to_be_visible(timeout=WAIT_MS)
    expect(pause).to_be_enabled(timeout=WAIT_MS)

    # Pause through the confirm dialog: cancelling changes nothing, confirming pauses.
    pause.click()
    expect(page.locator("#confirm")).to_be_visible(timeout=WAIT_MS)
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden(timeout=WAIT_MS)
    assert system_status(engine) == "running"
    pause.click()
    page.fill("#confirm-reason", "paused from the browser")
    page.click("#confirm-ok")
    assert wait_for(lambda: system_status(engine) == "paused")
    expect(page.locator("#system-status")).to_have_text("paused", timeout=WAIT_MS)
    with engine.connect() as conn:
        actor = conn.execute(
            text("SELECT actor FROM control_events WHERE reason = 'paused from the browser'")
        ).scalar_one()
    assert actor == "api:127.0.0.1"

    # Pausing live updates stops them; resuming reconnects.
    page.click("#live-toggle")
    expect(page.locator("#live-state")).to_have_text("paused")
    page.click("#live-toggle")
    expect(page.locator("#live-state")).to_have_text("live", timeout=WAIT_MS)

    # The charts follow the window's width.
    wide = page.locator("#chart-pnl canvas").bounding_box()
    assert wide is not None
    page.set_viewport_size({"width": 520, "height": 900})  # one column, narrower
    page.wait_for_function(
        "w => document.querySelector('#chart-pnl canvas').getBoundingClientRect().width < w",
        arg=wide["width"],
        timeout=WAIT_MS,
    )

    # A job page: its legs and event timeline, live while the job can still change.
    page.goto(f"{base}/jobs/{job_ids[0]}", wait_until="load")
    expect(page.locator("#job-legs table tbody tr")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator("#job-events table tbody tr").first).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#job-status")).to_have_text("pending", timeout=WAIT_MS)
    expect(page.locator("#live-state")).to_have_text("live (polling)", timeout=WAIT_MS)
    cancelled = httpx.post(
        f"{base}/api/jobs/{job_ids[0]}/cancel",
        json={"reason": "cancelled while its page is open"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=HANG_S,
    )
    assert cancelled.status_code == 200, cancelled.text
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=WAIT_MS)
    expect(page.locator("#live-state")).to_have_text("finished", timeout=WAIT_MS)

    # Where server-sent events cannot get through, the page polls instead.
    fallback = context.new_page()
    fallback.route("**/api/state/stream", lambda route: route.abort())
    fallback.goto(f"{base}/", wait_until="load")
    expect(fallback.locator("#live-state")).to_have_text("live (polling)", timeout=WAIT_MS)
    expect(fallback.locator("#system-status")).to_have_text("paused", timeout=WAIT_MS)
    fallback.close()

    # The token is nowhere: page, cookies, logs.
    content = page.content()
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == ["perpbot_session"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    context.close()
    out, err = capfd.readouterr()
    for text_ in (content, *(c["value"] for c in cookies), caplog.text, out, err):
        assert TOKEN not in text_ and "planted" not in text_
    assert problems.seen == []
