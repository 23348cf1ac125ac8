"""Settings (issue 2, section 2): PERPBOT_* variables over perpbot.toml.

A wrong setting must stop the program with one line per problem naming the
setting; ``perpbot`` must do so before it touches any database.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from perpbot_db.settings import Settings, SettingsError, load_settings

EXCHANGES_TOML = """\
[exchanges.binance]
equity_usd = 50000
[exchanges.okx]
equity_usd = 40000
max_concurrent_jobs = 3
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PERPBOT_* variable (a session fixture may set PERPBOT_CONFIG); an empty cwd."""
    for name in list(os.environ):
        if name.startswith("PERPBOT_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def settings_error(**overrides: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    return str(info.value)


# -- what is read, and from where ---------------------------------------------------


def test_without_file_or_environment_every_setting_has_its_default() -> None:
    s = load_settings()
    assert s.database_url is None
    assert s.config is None
    assert s.exchanges == {}
    assert s.home_dir == Path.home() / ".perpbot"
    assert s.hedge_tolerance == Decimal("0.001")
    assert s.client_order_prefix == "pb"
    assert s.max_metadata_bytes == 4096
    assert s.max_legs == 8
    assert s.max_attempts == 3
    assert s.submit_batch_size == 2000
    assert s.submit_writers == 2


def test_perpbot_toml_in_the_working_directory_is_read_with_exchange_defaults(
    clean_environment: Path,
) -> None:
    write(clean_environment / "perpbot.toml", EXCHANGES_TOML)
    s = load_settings()
    assert s.config == Path("perpbot.toml")
    assert list(s.exchanges) == ["binance", "okx"]
    okx = s.exchanges["okx"]
    assert okx.equity_usd == Decimal("40000")
    assert okx.max_concurrent_jobs == 3
    binance = s.exchanges["binance"]
    assert binance.equity_usd == Decimal("50000")
    assert binance.max_concurrent_jobs == 5
    for ex in (okx, binance):
        assert (ex.volume_share, ex.arbitrage_share, ex.reserve_share) == (
            Decimal("0.50"),
            Decimal("0.30"),
            Decimal("0.20"),
        )
        assert (ex.single_job_cap, ex.inflight_cap) == (Decimal("0.10"), Decimal("0.30"))
        assert ex.max_inflight_notional_usd is None


def test_exchange_table_may_set_every_share_cap_and_limit(clean_environment: Path) -> None:
    write(
        clean_environment / "perpbot.toml",
        """\
[exchanges.bybit]
equity_usd = 30000.5
volume_share = 0.6
arbitrage_share = 0.25
reserve_share = 0.15
single_job_cap = 0.05
inflight_cap = 0.5
max_concurrent_jobs = 12
max_inflight_notional_usd = 9000
""",
    )
    bybit = load_settings().exchanges["bybit"]
    assert bybit.equity_usd == Decimal("30000.5")
    assert (bybit.volume_share, bybit.arbitrage_share, bybit.reserve_share) == (
        Decimal("0.6"),
        Decimal("0.25"),
        Decimal("0.15"),
    )
    assert (bybit.single_job_cap, bybit.inflight_cap) == (Decimal("0.05"), Decimal("0.5"))
    assert bybit.max_concurrent_jobs == 12
    assert bybit.max_inflight_notional_usd == Decimal("9000")


def test_perpbot_config_names_the_file_and_the_working_directory_file_is_ignored(
    clean_environment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_environment / "perpbot.toml", "[exchanges.kraken]\nequity_usd = 1\n")
    chosen = write(tmp_path / "elsewhere.toml", "submit_batch_size = 10\n" + EXCHANGES_TOML)
    monkeypatch.setenv("PERPBOT_CONFIG", str(chosen))
    s = load_settings()
    assert s.config == chosen
    assert sorted(s.exchanges) == ["binance", "okx"]
    assert s.submit_batch_size == 10


def test_environment_variable_overrides_the_file(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_environment / "perpbot.toml", "submit_batch_size = 10\nmax_legs = 4\n")
    monkeypatch.setenv("PERPBOT_SUBMIT_BATCH_SIZE", "77")
    s = load_settings()
    assert s.submit_batch_size == 77
    assert s.max_legs == 4  # what the environment does not set still comes from the file


def test_nested_environment_variable_overrides_one_exchange_setting_and_keeps_the_rest(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_environment / "perpbot.toml", EXCHANGES_TOML)
    monkeypatch.setenv("PERPBOT_EXCHANGES__OKX__EQUITY_USD", "123.45")
    s = load_settings()
    assert s.exchanges["okx"].equity_usd == Decimal("123.45")
    assert s.exchanges["okx"].max_concurrent_jobs == 3
    assert s.exchanges["binance"].equity_usd == Decimal("50000")


def test_environment_alone_can_configure_an_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERPBOT_EXCHANGES__BYBIT__EQUITY_USD", "30000")
    monkeypatch.setenv("PERPBOT_EXCHANGES__BYBIT__MAX_CONCURRENT_JOBS", "2")
    bybit = load_settings().exchanges["bybit"]
    assert (bybit.equity_usd, bybit.max_concurrent_jobs) == (Decimal("30000"), 2)


def test_keyword_overrides_win_over_environment_and_file(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_environment / "perpbot.toml", "submit_batch_size = 10\n")
    monkeypatch.setenv("PERPBOT_SUBMIT_BATCH_SIZE", "77")
    assert load_settings(submit_batch_size=5).submit_batch_size == 5


def test_home_and_database_url_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = "postgresql+psycopg://perpbot:s3cret@db.example:5432/perpbot"
    monkeypatch.setenv("PERPBOT_DATABASE_URL", url)
    monkeypatch.setenv("PERPBOT_HOME", str(tmp_path / "home"))
    s = load_settings()
    assert s.database_url is not None
    assert s.database_url.get_secret_value() == url
    assert s.home_dir == tmp_path / "home"
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s)


# -- wrong settings: one line each, naming the setting ---------------------------------

BAD_FILES = [
    pytest.param(
        "[exchanges.okx]\nequity_usd = -1\n",
        "exchanges.okx.equity_usd",
        "greater than 0",
        id="negative-equity",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 0\n",
        "exchanges.okx.equity_usd",
        "greater than 0",
        id="zero-equity",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = nan\n", "exchanges.okx.equity_usd", "finite", id="nan-equity"
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 'lots'\n",
        "exchanges.okx.equity_usd",
        "decimal",
        id="equity-not-a-number",
    ),
    pytest.param(
        "[exchanges.okx]\nmax_concurrent_jobs = 3\n",
        "exchanges.okx.equity_usd",
        "required",
        id="equity-missing",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 1\nvolume_share = 0.6\n",
        "exchanges.okx",
        "volume_share + arbitrage_share + reserve_share is 1.1",
        id="tier-shares-sum-over-1",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 1\nreserve_share = -0.1\n",
        "exchanges.okx.reserve_share",
        "greater than or equal to 0",
        id="negative-share",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 1\nsingle_job_cap = 0.5\ninflight_cap = 0.4\n",
        "exchanges.okx",
        "single_job_cap is larger than inflight_cap",
        id="single-job-cap-over-inflight-cap",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 1\nmax_concurrent_jobs = 0\n",
        "exchanges.okx.max_concurrent_jobs",
        "greater than 0",
        id="zero-concurrency",
    ),
    pytest.param(
        "[exchanges.'Binance!']\nequity_usd = 1\n",
        "exchanges",
        "'Binance!'",
        id="bad-exchange-name",
    ),
    pytest.param(
        "[exchanges.okx]\nequity_usd = 1\nleverage = 20\n",
        "exchanges.okx.leverage",
        "not permitted",
        id="unknown-key-in-exchange-table",
    ),
    pytest.param("colour = 'red'\n", "colour", "not permitted", id="unknown-top-level-key"),
    pytest.param(
        "client_order_prefix = 'PB'\n",
        "client_order_prefix",
        "1 to 6 lowercase letters",
        id="prefix-uppercase",
    ),
    pytest.param(
        "client_order_prefix = 'perpbot'\n",
        "client_order_prefix",
        "1 to 6 lowercase letters",
        id="prefix-too-long",
    ),
    pytest.param(
        "client_order_prefix = 'p-b'\n",
        "client_order_prefix",
        "1 to 6 lowercase letters",
        id="prefix-with-hyphen",
    ),
    pytest.param(
        "database_url = 'mysql://u:p@localhost/perpbot'\n",
        "database_url",
        "postgresql+psycopg://",
        id="database-url-not-postgres",
    ),
    pytest.param("hedge_tolerance = 1\n", "hedge_tolerance", "less than 1", id="tolerance-1"),
    pytest.param("max_legs = 1\n", "max_legs", "greater than or equal to 2", id="max-legs-1"),
    pytest.param(
        "submit_batch_size = 0\n", "submit_batch_size", "greater than 0", id="batch-size-zero"
    ),
]


@pytest.mark.parametrize(("toml", "setting", "fragment"), BAD_FILES)
def test_wrong_setting_in_the_file_is_one_line_naming_the_setting(
    clean_environment: Path, toml: str, setting: str, fragment: str
) -> None:
    write(clean_environment / "perpbot.toml", toml)
    message = settings_error()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"setting {setting}: "), message
    assert fragment in message


@pytest.mark.parametrize(
    ("variable", "value", "setting", "fragment"),
    [
        pytest.param(
            "PERPBOT_EXCHANGES__OKX__EQUITY_USD",
            "-5",
            "exchanges.okx.equity_usd",
            "greater than 0",
            id="negative-equity",
        ),
        pytest.param(
            "PERPBOT_SUBMIT_BATCH_SIZE",
            "lots",
            "submit_batch_size",
            "valid integer",
            id="batch-size-not-a-number",
        ),
        pytest.param(
            "PERPBOT_DATABASE_URL",
            "sqlite:///perpbot.db",
            "database_url",
            "postgresql+psycopg://",
            id="database-url-sqlite",
        ),
        pytest.param(
            "PERPBOT_CLIENT_ORDER_PREFIX",
            "",
            "client_order_prefix",
            "1 to 6 lowercase letters",
            id="empty-prefix",
        ),
    ],
)
def test_wrong_environment_variable_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    message = settings_error()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"setting {setting}: "), message
    assert fragment in message


def test_wrong_environment_variable_is_reported_even_when_the_file_is_right(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_environment / "perpbot.toml", EXCHANGES_TOML)
    monkeypatch.setenv("PERPBOT_EXCHANGES__OKX__EQUITY_USD", "-1")
    assert settings_error().startswith("setting exchanges.okx.equity_usd: ")


def test_every_wrong_setting_gets_its_own_line(clean_environment: Path) -> None:
    write(
        clean_environment / "perpbot.toml",
        "client_order_prefix = 'PB'\n[exchanges.okx]\nequity_usd = -1\n"
        "[exchanges.binance]\nequity_usd = 1\nvolume_share = 0.9\n",
    )
    lines = settings_error().splitlines()
    assert len(lines) == 3, lines
    named = {line.split(":", 1)[0] for line in lines}
    assert named == {
        "setting client_order_prefix",
        "setting exchanges.okx.equity_usd",
        "setting exchanges.binance",
    }


def test_non_json_exchanges_variable_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERPBOT_EXCHANGES", "binance")
    assert settings_error().startswith("setting exchanges: ")


def test_perpbot_config_naming_a_missing_file_is_an_error_not_a_silent_default(
    clean_environment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_environment / "perpbot.toml", EXCHANGES_TOML)  # must not be the fallback
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("PERPBOT_CONFIG", str(missing))
    message = settings_error()
    assert message == f"setting PERPBOT_CONFIG: file {missing} does not exist"


def test_invalid_toml_is_one_line_naming_the_file_and_the_place(
    clean_environment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write(tmp_path / "bad.toml", "[exchanges.okx]\nequity_usd = \n")
    monkeypatch.setenv("PERPBOT_CONFIG", str(bad))
    message = settings_error()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"settings file {bad}: not valid TOML"), message
    assert "line 2" in message


def test_invalid_perpbot_toml_in_the_working_directory_is_reported(
    clean_environment: Path,
) -> None:
    write(clean_environment / "perpbot.toml", "[exchanges\n")
    assert settings_error().startswith("settings file perpbot.toml: not valid TOML")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.submit_batch_size = 1  # type: ignore[misc]
    assert isinstance(s, Settings)


# -- the CLI stops on a wrong setting before it starts any database ------------------


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"unhedged_exposure_limit_usd": "-1"}, "unhedged_exposure_limit_usd"),
        ({"unhedged_lock_s": 0}, "unhedged_lock_s"),
        ({"unhedged_lock_s": 8 * 86_400}, "unhedged_lock_s"),
    ],
)
def test_protection_limits_out_of_range_are_refused_naming_the_setting(
    overrides: dict[str, object], name: str
) -> None:
    assert settings_error(**overrides).startswith(f"setting {name}:")


def test_protection_limits_default_to_locking_on_any_unhedged_exposure_for_a_day() -> None:
    s = load_settings()
    assert s.unhedged_exposure_limit_usd == 0
    assert s.unhedged_lock_s == 86_400
