"""The console as a real process: `perpbot web` alone and inside `perpbot run`.

Each binds 127.0.0.1 (on any free port: the tests set ``PERPBOT_WEB_PORT=0``), prints
where it listens, answers, and stops cleanly on SIGTERM; a change made through it lands
in the database; the token never reaches its output.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading

import httpx
from sqlalchemy import Engine, text

from tests.builders import HANG_S, Spawn, wait_for

TOKEN = "planted-console-token-77aa"
LISTENING = re.compile(r"console on (http://127\.0\.0\.1:\d+) ")


def address_of(proc: subprocess.Popen[str], seen: list[str]) -> str:
    """Read the process's stderr (in a thread, kept in ``seen``) until it says where it
    listens."""
    found: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            match = LISTENING.search(line)
            if match and not found:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    assert wait_for(lambda: found or proc.poll() is not None), "no console line"
    assert found, "".join(seen)
    return found[0]


def test_perpbot_web_serves_the_api_on_loopback_and_takes_changes_with_the_token(
    spawn: Spawn, engine: Engine
) -> None:
    proc = spawn("web", PERPBOT_API_TOKEN=TOKEN)
    seen: list[str] = []
    base = address_of(proc, seen)
    assert httpx.get(f"{base}/healthz", timeout=HANG_S).json() == {"status": "ok"}
    refused = httpx.post(f"{base}/api/control/pause", json={"reason": "x"}, timeout=HANG_S)
    assert refused.status_code == 401
    paused = httpx.post(
        f"{base}/api/control/pause",
        json={"reason": "maintenance"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=HANG_S,
    )
    assert paused.status_code == 200
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM system_state")).scalar_one() == "paused"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(HANG_S) == 0
    assert TOKEN not in "".join(seen)


def test_perpbot_run_serves_its_console_beside_the_scheduler_and_workers(
    spawn: Spawn, engine: Engine
) -> None:
    proc = spawn("run", "--workers", "1", "--no-strategies")
    seen: list[str] = []
    base = address_of(proc, seen)
    assert wait_for(lambda: httpx.get(f"{base}/readyz", timeout=HANG_S).status_code == 200), (
        httpx.get(f"{base}/readyz", timeout=HANG_S).text
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(HANG_S) == 0, "".join(seen)
