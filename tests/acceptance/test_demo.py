"""``perpbot demo``: the whole system on a fresh ``PERPBOT_HOME``, checked in the database.

The demo runs on this test's database (``PERPBOT_DATABASE_URL``) with the settings it
writes itself (no ``PERPBOT_CONFIG``, no ``./perpbot.toml``).  Nothing here depends on
the machine's speed: ``--duration 20`` is the demo's, and the hidden ``--until-*``
options keep it running until what is asserted has happened (``--max-duration`` is the
hang guard, under the tests' own).
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

from sqlalchemy import Engine, text

from tests.builders import HANG_S, PERPBOT, Cli

GUARD = str(int(HANG_S) - 60)  # the demo gives up (exit 1) before the test does


def demo_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in cli_env.items() if k not in ("PERPBOT_CONFIG", "PERPBOT_WEB_PORT")}
    return env


def completed_by_strategy(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT strategy, count(*) FROM hedge_jobs_all WHERE status = 'completed' "
                "GROUP BY strategy"
            )
        )
        return {r[0]: r[1] for r in rows}


def test_demo_runs_three_strategies_unwinds_a_failed_leg_and_serves_the_dashboard(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    env = demo_env(cli_env)
    home = Path(env["PERPBOT_HOME"])
    args = ["demo", "--duration", "20", "--until-strategies", "3", "--until-unwound"]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        proc = subprocess.Popen(
            [PERPBOT, *args, "--max-duration", GUARD],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=tmp_path,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        answered = None
        for line in proc.stdout:  # the dashboard, asked while the demo runs
            lines.append(line)
            if line.startswith("dashboard: "):
                url = line.split()[1]
                with urllib.request.urlopen(f"{url}/api/state", timeout=30) as response:
                    answered = response.status, json.loads(response.read())["global"]["status"]
                break
        rest = proc.stdout.read()  # not communicate(): it would skip what the loop buffered
        proc.wait(timeout=HANG_S)
    stdout = "".join(lines) + rest
    errors = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, errors[-2000:] + stdout[-3000:]
    assert answered == (200, "running")

    # the settings it wrote, and three strategies' jobs completed, in the database
    assert (home / "demo.toml").exists()
    done = completed_by_strategy(engine)
    assert len(done) >= 3, done
    summary = stdout[stdout.index("demo summary") :]
    for strategy in done:
        assert f"{strategy} {done[strategy]}" in summary
    # a job whose one leg filled and the other failed: the filled leg unwound
    with engine.connect() as conn:
        unwound = conn.execute(
            text(
                "SELECT count(*) FROM legs_all l JOIN hedge_jobs_all j ON j.id = l.job_id "
                "WHERE l.reduce_only AND l.status = 'filled' AND j.status = 'failed'"
            )
        ).scalar_one()
    assert unwound >= 1
    assert "job(s) had a filled leg unwound" in summary and "unwinds: 0 " not in summary
    assert "psql" in stdout and "docs/audit.md" in stdout

    # the session's token: printed once, and in no log (stderr, the workers' logs)
    token_lines = [line for line in stdout.splitlines() if "api token" in line]
    assert len(token_lines) == 1, stdout[:2000]
    token = token_lines[0].rsplit(" ", 1)[1]
    assert len(token) >= 16
    logs = [errors, *(p.read_text() for p in (home / "demo-logs").glob("*.log"))]
    assert all(token not in log for log in logs)
    assert stdout.count(token) == 1


def test_demo_stress_halts_the_system_on_the_daily_loss_limit(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    env = demo_env(cli_env)
    args = ["--duration", "20", "--scenario", "stress", "--no-web", "--workers", "2"]
    result = subprocess.run(
        [PERPBOT, "demo", *args, "--until-halted", "--max-duration", GUARD],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-3000:]
    with engine.connect() as conn:
        state = conn.execute(
            text("SELECT status, halt_reason, daily_loss_limit_usd FROM system_state")
        ).one()
        halts = (
            conn.execute(text("SELECT reason FROM control_events WHERE action = 'halt'"))
            .scalars()
            .all()
        )
        limit_set = (
            conn.execute(text("SELECT actor FROM control_events WHERE action = 'daily_loss_limit'"))
            .scalars()
            .all()
        )
    assert state.status == "halted" and "daily loss limit" in state.halt_reason
    assert any("daily loss limit" in reason for reason in halts)
    assert limit_set == ["perpbot demo"]
    assert "halted the system (daily loss limit" in result.stdout
    assert "api token" not in result.stdout  # --no-web: no console, no token


def test_demo_with_a_bad_duration_names_the_option_and_starts_nothing(
    cli: Cli, engine: Engine
) -> None:
    def written() -> tuple[int, int]:
        with engine.connect() as conn:
            jobs = conn.execute(text("SELECT count(*) FROM hedge_jobs_all")).scalar_one()
            events = conn.execute(text("SELECT count(*) FROM control_events")).scalar_one()
        return jobs, events

    before = written()
    for bad in ("0", "soon"):
        result = cli("demo", "--duration", bad)
        assert result.returncode == 2
        assert "--duration" in result.stderr
    assert written() == before


def test_demo_with_an_unknown_scenario_names_the_option(cli: Cli) -> None:
    result = cli("demo", "--scenario", "panic")
    assert result.returncode == 2
    assert "--scenario: must be one of calm, stress" in result.stderr


def test_ctrl_c_stops_the_demo_cleanly_with_its_summary(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    proc = subprocess.Popen(
        [PERPBOT, "demo", "--duration", "600", "--no-web", "--workers", "1"],
        env=demo_env(cli_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the live view has started: the whole system runs
    assert first.startswith("perpbot demo (calm):"), first
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=HANG_S) == 0
    assert "demo summary (calm, 1 worker(s); workers exited {0: 0})" in rest
    with engine.connect() as conn:
        running = conn.execute(
            text("SELECT count(*) FROM hedge_jobs WHERE status = 'running'")
        ).scalar_one()
    assert running == 0
