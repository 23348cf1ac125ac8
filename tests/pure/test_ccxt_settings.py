"""ccxt venues at start-up: modes, the live flags, keys from the environment or a
secrets file, and keys kept out of every text (workers/venues/ccxt_venues.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from perpbot_db.settings import Settings, SettingsError
from tests.builders import HANG_S
from workers.venues.ccxt_venues import make_exchange, plan_venue

KEY, SECRET, PASSWORD = "k3y-AAAA-never-printed", "s3cret-BBBB-never-printed", "pa55-CCCC"


def settings(name: str = "binance", **exchange: object) -> Settings:
    table = {"equity_usd": 1000, "venue": "ccxt", **exchange}
    return Settings(exchanges={name: table}, _env_prefix="PERPBOT_TEST_NONE_")  # type: ignore[call-arg]


def keys_env(name: str = "binance") -> dict[str, str]:
    stem = f"PERPBOT_{name.upper()}_API_"
    return {stem + "KEY": KEY, stem + "SECRET": SECRET, stem + "PASSWORD": PASSWORD}


def plan(name: str, s: Settings, env: dict[str, str]) -> object:
    return plan_venue(name, s.exchanges[name], s, env)


def test_demo_is_the_default_and_needs_keys() -> None:
    s = settings()
    assert s.exchanges["binance"].mode == "demo" and not s.exchanges["binance"].live
    with pytest.raises(SettingsError, match=r"^setting exchanges\.binance: no API keys"):
        plan("binance", s, {})
    chosen = plan_venue("binance", s.exchanges["binance"], s, keys_env())
    assert (chosen.ccxt_id, chosen.mode) == ("binanceusdm", "demo")


def test_live_mode_without_the_live_flag_refuses_to_start() -> None:
    with pytest.raises(SettingsError, match=r"^setting exchanges\.okx\.live: .*live = true"):
        plan("okx", settings("okx", mode="live"), keys_env("okx"))


def test_live_flag_without_live_mode_refuses_to_start() -> None:
    with pytest.raises(SettingsError, match=r"^setting exchanges\.okx\.mode: "):
        plan("okx", settings("okx", live=True), keys_env("okx"))


def test_live_with_both_flags_but_no_keys_refuses_to_start() -> None:
    with pytest.raises(SettingsError, match=r"no API keys"):
        plan("bybit", settings("bybit", mode="live", live=True), {})
    live = settings("bybit", mode="live", live=True)
    chosen = plan_venue("bybit", live.exchanges["bybit"], live, keys_env("bybit"))
    assert chosen.mode == "live"


def test_okx_needs_its_password() -> None:
    env = keys_env("okx")
    del env["PERPBOT_OKX_API_PASSWORD"]
    with pytest.raises(SettingsError, match="_API_PASSWORD"):
        plan("okx", settings("okx"), env)


def test_binance_testnet_is_refused_for_demo() -> None:
    with pytest.raises(SettingsError, match=r"exchanges\.binance\.mode: .*\"demo\""):
        plan("binance", settings(mode="testnet"), keys_env())


def test_an_unknown_exchange_name_needs_a_ccxt_id() -> None:
    with pytest.raises(SettingsError, match=r"exchanges\.acme\.ccxt_id"):
        plan("acme", settings("acme"), keys_env("acme"))
    named = settings("acme", ccxt_id="bybit")
    assert plan_venue("acme", named.exchanges["acme"], named, keys_env("acme")).ccxt_id == "bybit"


def test_a_bad_mode_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"exchanges\.binance\.mode"):
        settings(mode="paper-ish")


def test_keys_from_a_secrets_file_only_when_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(
        f'[okx]\napi_key = "{KEY}"\napi_secret = "{SECRET}"\napi_password = "{PASSWORD}"\n'
    )
    s = Settings(exchanges={"okx": {"equity_usd": 1, "venue": "ccxt"}}, secrets_file=path)  # type: ignore[arg-type]
    path.chmod(0o644)
    with pytest.raises(SettingsError, match=r"^setting secrets_file: .*chmod 600"):
        plan_venue("okx", s.exchanges["okx"], s, {})
    path.chmod(0o600)
    chosen = plan_venue("okx", s.exchanges["okx"], s, {})
    assert chosen.keys.api_password is not None
    assert chosen.keys.api_password.get_secret_value() == PASSWORD


def test_keys_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = settings("okx")
    chosen = plan_venue("okx", s.exchanges["okx"], s, keys_env("okx"))
    exchange = make_exchange(chosen.ccxt_id, chosen.mode, chosen.keys)
    assert exchange.headers.get("x-simulated-trading") == "1"  # okx demo: simulated trading
    text = repr(chosen) + str(chosen.keys) + repr(s) + caplog.text
    for secret in (KEY, SECRET, PASSWORD):
        assert secret not in text


@pytest.mark.parametrize(
    ("ccxt_id", "mode", "host"),
    [("binanceusdm", "demo", "demo-fapi.binance.com"), ("bybit", "demo", "api-demo.bybit.com"),
     ("bybit", "testnet", "api-testnet.bybit.com"), ("bybit", "live", "api.bybit.com")],
)  # fmt: skip
def test_modes_pick_the_venue_urls(ccxt_id: str, mode: str, host: str) -> None:
    exchange = make_exchange(ccxt_id, mode, None)
    urls = exchange.urls["api"]
    assert any(host in exchange.implode_hostname(str(url)) for url in urls.values())


@pytest.mark.parametrize(
    ("table", "named"),
    [('mode = "live"', "exchanges.binance.live"), ("", "exchanges.binance: no API keys")],
)
def test_worker_refuses_to_start_saying_why(tmp_path: Path, table: str, named: str) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "perpbot.toml"
    config.write_text(f'[exchanges.binance]\nequity_usd = 1000\nvenue = "ccxt"\n{table}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env |= {
        "PERPBOT_CONFIG": str(config),
        "PERPBOT_HOME": str(tmp_path / "home"),
        # nothing listens here: the refusal comes before any database is touched
        "PERPBOT_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",
    }
    if "live" in named:
        env |= {"PERPBOT_BINANCE_API_KEY": KEY, "PERPBOT_BINANCE_API_SECRET": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "perpbot_db", "worker", "--once"],
        env=env, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert named in line
    assert KEY not in done.stderr + done.stdout and SECRET not in done.stderr + done.stdout
