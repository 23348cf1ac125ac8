"""The read commands' first look at the settings (``perpbot_db.settings_light``).

It may say "not sure" (None) as often as it likes: the full validation then runs.
What it may never do is accept settings the full validation refuses, or read the
database URL, home or settings file differently.  Its rules are the models' fields
written out as data: a test derives them from the models and compares.
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import annotated_types
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from perpbot_db import settings_light as light
from perpbot_db.settings import ExchangeSettings, PaperSettings, Settings, load_settings
from tests.pure.test_settings import BAD_FILES

ROOT = Path(__file__).resolve().parents[2]

# -- the rules are the models' -------------------------------------------------------

_KINDS: dict[Any, str] = {
    Decimal: "decimal",
    int: "int",
    float: "float",
    bool: "bool",
    str: "str",
    Path: "path",
    SecretStr: "secret",
    PaperSettings: "paper",
}

_BOUNDS = {
    annotated_types.Ge: "ge",
    annotated_types.Gt: "gt",
    annotated_types.Le: "le",
    annotated_types.Lt: "lt",
}


def _rule(annotation: Any, metadata: list[Any], default: Any) -> light.Rule:
    """What settings_light must know of one field, read from the model."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        if typing.get_origin(inner) is typing.Annotated:
            base, *extras = typing.get_args(inner)
            inner_meta = [m for extra in extras for m in getattr(extra, "metadata", [extra])]
            return _rule(base, metadata + inner_meta, default)
        return _rule(inner, metadata, default)
    if annotation == dict[str, ExchangeSettings]:
        kind = "exchanges"
    else:
        kind = _KINDS.get(annotation, "full")
    bounds: dict[str, Any] = {}
    for item in metadata:
        bound = _BOUNDS.get(type(item))
        if bound is not None:
            bounds[bound] = getattr(item, bound)
        elif getattr(item, "allow_inf_nan", None) is False:
            pass  # settings_light never accepts inf or nan
        else:
            kind = "full"  # a constraint settings_light does not check
    if kind in ("exchanges", "paper", "full"):
        return light.Rule(kind)
    required = default is PydanticUndefined
    if required or default is None:
        text = None
    elif isinstance(default, Decimal | Path):
        text = str(default)
    else:
        text = default
    return light.Rule(kind, text, required, **bounds)


def derived(model: type[BaseModel]) -> dict[str, light.Rule]:
    return {
        name: _rule(f.annotation, list(f.metadata), f.default)
        for name, f in model.model_fields.items()
    }


@pytest.mark.parametrize(
    ("model", "rules"),
    [(Settings, light.SETTINGS), (ExchangeSettings, light.EXCHANGE), (PaperSettings, light.PAPER)],
    ids=["settings", "exchange", "paper"],
)
def test_the_rules_are_the_models_fields(model: type[BaseModel], rules: dict[str, Any]) -> None:
    expected = derived(model)
    if rules != expected:
        table = "\n".join(f'    "{name}": {_written(rule)},' for name, rule in expected.items())
        pytest.fail(f"settings_light's table for {model.__name__} is stale; it should be:\n{table}")


def _written(rule: light.Rule) -> str:
    """A rule as settings_light writes it."""
    parts = [f'"{rule.kind}"']
    if isinstance(rule.default, str):
        parts.append(json.dumps(rule.default))
    elif rule.default is not None:
        parts.append(repr(rule.default))
    if rule.required:
        parts.append("required=True")
    parts += [f"{k}={v!r}" for k in ("ge", "gt", "le", "lt") if (v := getattr(rule, k)) is not None]
    return f"Rule({', '.join(parts)})"


@pytest.mark.parametrize("model", [Settings, ExchangeSettings, PaperSettings], ids=repr)
def test_every_check_a_model_makes_in_code_is_made_by_settings_light_or_left_to_the_model(
    model: type[BaseModel],
) -> None:
    decorators = model.__pydantic_decorators__
    rules = derived(model)
    mirrored = light.MIRRORED_VALIDATORS[model.__name__]
    for name, decorator in decorators.field_validators.items():
        on_full_fields = all(rules[f].kind == "full" for f in decorator.info.fields)
        assert name in mirrored or on_full_fields, (
            f"{model.__name__}.{name} checks {decorator.info.fields} in code: make "
            "settings_light check it too (MIRRORED_VALIDATORS) or mark the field 'full'"
        )
    unmirrored = set(decorators.model_validators) - mirrored
    assert not unmirrored, f"{model.__name__} validators settings_light does not make: {unmirrored}"


# -- what it accepts, it reads as the full settings do --------------------------------


def _both(env: dict[str, str], cwd: Path) -> tuple[light.LightSettings | None, Settings | str]:
    """settings_light's answer and the full validation's (or its message) on one input."""
    with mock.patch.dict(os.environ, env, clear=True):
        previous = Path.cwd()
        os.chdir(cwd)
        try:
            quick = light.load_light(dict(os.environ))
            try:
                full: Settings | str = load_settings()
            except Exception as exc:  # SettingsError; anything else must fail the test too
                full = f"{type(exc).__name__}: {exc}"
        finally:
            os.chdir(previous)
    return quick, full


def _agree(quick: light.LightSettings | None, full: Settings | str) -> None:
    if quick is None:
        return  # not sure: the full validation decides
    assert isinstance(full, Settings), f"settings_light accepted what the model refuses: {full}"
    url = None if full.database_url is None else full.database_url.get_secret_value()
    assert (quick.database_url, quick.home, quick.config) == (url, full.home, full.config)
    assert quick.home_dir == full.home_dir


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("PERPBOT_")}


@pytest.mark.parametrize(
    "config",
    [ROOT / "perpbot.toml", None],
    ids=["repo", "none"],
)
def test_the_usual_settings_are_read_at_a_glance_as_the_models_read_them(
    tmp_path: Path, config: Path | None
) -> None:
    env = {**_base_env(), "PERPBOT_HOME": str(tmp_path / "home")}
    if config is not None:
        env["PERPBOT_CONFIG"] = str(config)
    env["PERPBOT_DATABASE_URL"] = "postgresql+psycopg://u:p@h:5432/db"
    quick, full = _both(env, tmp_path)
    assert quick is not None
    _agree(quick, full)


def test_a_perpbot_toml_in_the_working_directory_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "perpbot.toml").write_text(
        "max_legs = 4\nhedge_tolerance = 0.01\n[exchanges.okx]\nequity_usd = 40000\n"
        "volume_share = 0.6\nreserve_share = 0.1\n[paper]\nlatency_ms = 0\n"
    )
    quick, full = _both(_base_env(), tmp_path)
    assert quick is not None and quick.config == Path("perpbot.toml")
    assert quick.home == Path("~/.perpbot") and quick.database_url is None
    _agree(quick, full)


@pytest.mark.parametrize(("toml", "setting", "fragment"), BAD_FILES)
def test_a_wrong_setting_in_the_file_is_left_to_the_full_validation(
    tmp_path: Path, toml: str, setting: str, fragment: str
) -> None:
    (tmp_path / "perpbot.toml").write_text(toml)
    quick, full = _both(_base_env(), tmp_path)
    assert quick is None
    assert isinstance(full, str) and f"setting {setting}: " in full


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PERPBOT_DATABASE_URL", "sqlite:///perpbot.db"),
        ("PERPBOT_DATABASE_URL", ""),
        ("PERPBOT_SUBMIT_BATCH_SIZE", "lots"),
        ("PERPBOT_SUBMIT_BATCH_SIZE", "0"),
        ("perpbot_max_legs", "99"),  # pydantic-settings reads names in any case
        ("PERPBOT_CLIENT_ORDER_PREFIX", ""),
        ("PERPBOT_EXCHANGES__OKX__EQUITY_USD", "-5"),
        ("PERPBOT_EXCHANGES", "binance"),
        ("PERPBOT_CONFIG", "/nonexistent/perpbot.toml"),
    ],
)
def test_a_wrong_variable_is_left_to_the_full_validation(
    tmp_path: Path, variable: str, value: str
) -> None:
    quick, full = _both({**_base_env(), variable: value}, tmp_path)
    assert quick is None
    assert isinstance(full, str) and "setting" in full


def test_a_nested_variable_is_left_to_the_full_validation_even_when_right(tmp_path: Path) -> None:
    env = {**_base_env(), "PERPBOT_EXCHANGES__OKX__EQUITY_USD": "5"}
    quick, full = _both(env, tmp_path)
    assert quick is None and isinstance(full, Settings)


def test_variables_that_name_no_setting_are_ignored_as_the_models_ignore_them(
    tmp_path: Path,
) -> None:
    env = {**_base_env(), "PERPBOT_TEST_DATABASE_URL": "x", "PERPBOT_BOGUS": "1"}
    quick, full = _both(env, tmp_path)
    assert quick is not None
    _agree(quick, full)


# -- and on any input: never accepts what the models refuse -----------------------------

_names = st.sampled_from(["okx", "binance", "b_2", "Binance", "9x", "a" * 33, ""])
_strings = st.sampled_from(
    ["0", "1", "5", "-1", "-0", "007", "0.5", "0.50", ".5", "1.", "1e3", "1_000", " 1", "1 ",
     "nan", "inf", "abc", "", "pb", "PB", "p-b", "abcdefg", "true", "yes",
     "a-token-of-16-chars", " a-token-of-16-chars", "short-token",
     "postgresql+psycopg://u@h/db", "postgres://h/db", "mysql://h/db", "~/x", "a\x00b"]
)  # fmt: skip
_numbers = st.one_of(
    st.integers(min_value=-3, max_value=20),
    st.sampled_from([0, 1, 2, 16, 17, 999, 1000, 10**6, 10**9, 10**30, -(10**30), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.9999999, 1.0, 1.0000001, 1e-7, 3.0]),
)
_scalars = st.one_of(_numbers, _strings, st.booleans())


_shares = st.sampled_from([0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1, "0.35", "0.45", "0.7"])


def _exchange_tables() -> st.SearchStrategy[dict[str, Any]]:
    """Mostly plausible tables (shares and caps near their limits), some anything."""
    fields = st.sampled_from([*light.EXCHANGE, "leverage"])
    anything = st.dictionaries(fields, _scalars, max_size=5)
    share_fields = st.sampled_from(
        ["volume_share", "arbitrage_share", "reserve_share", "single_job_cap", "inflight_cap"]
    )
    plausible = st.builds(
        lambda shares, equity: {"equity_usd": equity, **shares},
        st.dictionaries(share_fields, _shares, max_size=5),
        st.sampled_from([1, 40000, "5000.5", 0.5]),
    )
    return st.dictionaries(_names, st.one_of(plausible, plausible, anything), max_size=3)


_top = st.sampled_from([n for n in light.SETTINGS if n not in ("exchanges", "paper")] + ["colour"])
_files = st.fixed_dictionaries(
    {},
    optional={
        "scalars": st.dictionaries(_top, _scalars, max_size=4),
        "exchanges": _exchange_tables(),
        "paper": st.dictionaries(st.sampled_from([*light.PAPER, "x"]), _scalars, max_size=3),
    },
)
_variables = st.dictionaries(
    st.sampled_from(
        ["PERPBOT_DATABASE_URL", "PERPBOT_HOME", "PERPBOT_MAX_LEGS", "perpbot_max_legs",
         "PERPBOT_HEDGE_TOLERANCE", "PERPBOT_LEASE_S", "PERPBOT_CLIENT_ORDER_PREFIX",
         "PERPBOT_TEST_DATABASE_URL", "PERPBOT_PAPER", "PERPBOT_EXCHANGES__OKX__EQUITY_USD",
         "PERPBOT_API_TOKEN", "PERPBOT_WEB_PORT",
         "PERPBOT_CONFIG"]
    ),
    _strings.filter(lambda s: "\x00" not in s),  # an environment cannot hold NUL
    max_size=3,
)  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def _toml(file: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in file.get("scalars", {}).items()]
    for name, table in file.get("exchanges", {}).items():
        lines.append(f"[exchanges.{json.dumps(name)}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    if "paper" in file:
        lines.append("[paper]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in file["paper"].items()]
    return "\n".join(lines) + "\n"


@hypothesis_settings(max_examples=300)
@given(file=_files, variables=_variables)
def test_never_accepts_what_the_models_refuse_nor_reads_it_differently(
    tmp_path_factory: pytest.TempPathFactory, file: dict[str, Any], variables: dict[str, str]
) -> None:
    work = tmp_path_factory.mktemp("light")
    (work / "perpbot.toml").write_text(_toml(file))
    quick, full = _both({**_base_env(), **variables}, work)
    if quick is not None:  # sure at a glance: the models must accept it, and read the same
        assert isinstance(full, Settings), f"settings_light accepted what the model refuses: {full}"
        url = None if full.database_url is None else full.database_url.get_secret_value()
        assert (quick.database_url, quick.home, quick.config) == (url, full.home, full.config)
        assert quick.home_dir == full.home_dir
