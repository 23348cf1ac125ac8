"""Bad settings stop a real perpbot process with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.builders import HANG_S, PERPBOT


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        pytest.param(
            "[exchanges.okx]\nequity_usd = -1\n",
            "setting exchanges.okx.equity_usd: ",
            id="negative-equity",
        ),
        pytest.param(
            "[exchanges.okx]\nequity_usd = 1\nleverage = 20\n",
            "setting exchanges.okx.leverage: ",
            id="unknown-key",
        ),
        pytest.param("[exchanges\n", "not valid TOML", id="invalid-toml"),
        pytest.param(None, "setting PERPBOT_CONFIG: ", id="missing-file"),
    ],
)
def test_perpbot_status_with_a_bad_settings_file_exits_2_with_one_line_and_starts_no_database(
    tmp_path: Path, toml: str | None, named: str
) -> None:
    config = tmp_path / "perpbot-bad.toml"
    if toml is not None:
        config.write_text(toml)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env.update(PERPBOT_CONFIG=str(config), PERPBOT_HOME=str(home))
    done = subprocess.run(
        [PERPBOT, "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        cwd=tmp_path,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (home / "pgdata").exists()
