"""Risk limits an operator can tune (issue 11, item 5): names, rules, settings.

Pure: no database.  The limits are :data:`perpbot_db.domain.risk.LIMITS` by
default, ``[risk.MODE]`` settings (or ``PERPBOT_RISK__MODE__LIMIT`` variables)
change them, and one set of rules checks every value with the limit named.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest

from perpbot_db.domain.lifecycle import RiskMode
from perpbot_db.domain.risk import (
    LIMIT_NAMES,
    LIMITS,
    WEIGHTS,
    LimitError,
    ModeLimits,
    ScoreComponents,
    final_score,
    limit_values,
    with_limits,
)
from perpbot_db.services.risk_limits import ModeChange, plan_sync, text_of
from perpbot_db.settings import SettingsError, load_settings
from perpbot_db.store.risk_limits import RiskLimitRow

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "versions" / "0011_risk_limits.py"

#: Today's table (before the limits became settings), pinned: a default that moves
#: changes every user's trading without a word in their settings.
TODAY = {
    RiskMode.CONSERVATIVE: "-2/0 3/6 15/50 1/3 150/400 0.01/0.03 0.05/0.10 5 60 15",
    RiskMode.BALANCED: "0/2 5/10 20/75 2/5 250/750 0.02/0.05 0.10/0.25 10 50 10",
    RiskMode.AGGRESSIVE: "2/5 8/15 30/100 5/15 400/1500 0.04/0.10 0.20/0.50 10 40 5",
    RiskMode.VOLUME_FOCUSED: "0/3 10/20 20/75 3/10 100/300 0.015/0.04 0.10/0.25 5 45 10",
}
#: Today's weights: edge pnl risk latency volume funding liquidity.
TODAY_WEIGHTS = {
    RiskMode.CONSERVATIVE: ".15 .10 .40 .10 .05 .10 .10",
    RiskMode.BALANCED: ".25 .20 .20 .10 .10 .10 .05",
    RiskMode.AGGRESSIVE: ".40 .25 .10 .05 .10 .05 .05",
    RiskMode.VOLUME_FOCUSED: ".10 .05 .15 .15 .40 .05 .10",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("PERPBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings_error(**overrides: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    return str(info.value)


# -- the defaults and the names ---------------------------------------------------------


@pytest.mark.parametrize("mode", list(RiskMode))
def test_default_limits_when_nothing_is_set_then_exactly_todays_table(mode: RiskMode) -> None:
    *pairs, age, min_score, penalty = TODAY[mode].split()
    expected = [D(v) for pair in pairs for v in pair.split("/")] + [D(age), D(min_score)]
    expected.append(D(penalty))
    expected += [D(w) for w in TODAY_WEIGHTS[mode].split()]
    assert list(limit_values(LIMITS[mode]).values()) == expected
    assert LIMITS[mode].weights == WEIGHTS[mode]
    assert LIMITS[mode].max_market_age == timedelta(seconds=int(age))
    assert load_settings().risk_limits()[mode] == LIMITS[mode]


def test_limit_names_when_listed_then_one_per_mode_limits_field_in_table_order() -> None:
    fields = [f.name for f in dataclasses.fields(ModeLimits)]
    assert [n.replace("max_market_age_s", "max_market_age") for n in LIMIT_NAMES] == fields
    assert len(set(LIMIT_NAMES)) == len(LIMIT_NAMES) == 24


def test_migration_names_when_compared_then_the_database_accepts_every_limit_name() -> None:
    spec = importlib.util.spec_from_file_location("m0008", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NAMES == LIMIT_NAMES
    assert tuple(m.value for m in RiskMode) == module.MODES


@pytest.mark.parametrize("mode", list(RiskMode))
def test_limit_values_when_applied_to_any_mode_then_round_trip(mode: RiskMode) -> None:
    assert with_limits(LIMITS[RiskMode.AGGRESSIVE], limit_values(LIMITS[mode])) == LIMITS[mode]
    assert with_limits(LIMITS[mode], {}) == LIMITS[mode]


def test_max_market_age_when_given_in_fractional_seconds_then_kept_to_the_microsecond() -> None:
    limits = with_limits(LIMITS[RiskMode.BALANCED], {"max_market_age_s": D("2.5")})
    assert limits.max_market_age == timedelta(seconds=2.5)
    assert limit_values(limits)["max_market_age_s"] == D("2.5")
    assert text_of(limit_values(limits)["max_market_age_s"]) == "2.5"


# -- one set of rules, the limit named ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "name", "message"),
    [
        ({"spread_soft_bps": D(3)}, "spread_soft_bps", "must not exceed spread_hard_bps (2)"),
        ({"latency_hard_ms": D(200)}, "latency_soft_ms", "must not exceed latency_hard_ms"),
        ({"leverage_soft": D("-0.1")}, "leverage_soft", "must not be negative"),
        ({"rebalance_cost_soft_bps": D(-1)}, "rebalance_cost_soft_bps", "must not be negative"),
        ({"volatility_hard": D(0), "volatility_soft": D(0)}, "volatility_hard", "above 0"),
        ({"funding_hard_bps": D("NaN")}, "funding_hard_bps", "finite"),
        ({"min_score": D("Infinity")}, "min_score", "finite"),
        ({"min_score": D("100.5")}, "min_score", "within 0-100"),
        ({"min_score": D(-1)}, "min_score", "must not be negative"),
        ({"soft_penalty": D(101)}, "soft_penalty", "within 0-100"),
        ({"max_market_age_s": D(0)}, "max_market_age_s", "above 0"),
        ({"max_market_age_s": D(86_401)}, "max_market_age_s", "at most 86400"),
        ({"spread_bps": D(1)}, "spread_bps", "unknown limit"),
        ({"spread_hard_bps": D("1e12")}, "spread_hard_bps", "strictly between -1e12 and 1e12"),
        ({"spread_soft_bps": D("-1e13")}, "spread_soft_bps", "strictly between -1e12 and 1e12"),
        ({"weight_pnl": D("0.3")}, "weight_pnl", "the weights must sum to 1, got 1.1"),
        ({"weight_volume": D("-0.1"), "weight_edge": D("0.45")}, "weight_volume", "negative"),
    ],
)
def test_limit_when_it_breaks_a_rule_then_refused_with_the_limit_named(
    changes: dict[str, D], name: str, message: str
) -> None:
    with pytest.raises(LimitError) as info:
        with_limits(LIMITS[RiskMode.BALANCED], changes)
    assert info.value.name == name
    assert message in info.value.message
    assert str(info.value).startswith(f"{name}: ")


def test_weights_when_changed_together_to_sum_1_then_the_score_follows() -> None:
    edge_heavy = with_limits(
        LIMITS[RiskMode.BALANCED], {"weight_edge": D("0.45"), "weight_pnl": D(0)}
    )
    assert edge_heavy.weights["edge"] == D("0.45") and edge_heavy.weights["pnl"] == 0
    assert sum(edge_heavy.weights.values()) == 1
    only_edge = ScoreComponents(D(100), D(0), D(100), D(0), D(0), D(0), D(0))  # safety 0
    assert final_score(only_edge, RiskMode.BALANCED, 0, LIMITS[RiskMode.BALANCED]) == 25
    assert final_score(only_edge, RiskMode.BALANCED, 0, edge_heavy) == 45


def test_net_cost_limits_when_negative_then_allowed() -> None:
    # conservative arb wants 2 bps of edge left after costs: a negative net cost
    strict = with_limits(
        LIMITS[RiskMode.BALANCED], {"spread_soft_bps": D(-4), "spread_hard_bps": D(-1)}
    )
    assert (strict.spread_soft_bps, strict.spread_hard_bps) == (D(-4), D(-1))


# -- settings: [risk.MODE] and PERPBOT_RISK__MODE__LIMIT -----------------------------------


def test_settings_file_when_it_sets_a_limit_then_only_that_limit_moves(
    clean_environment: Path,
) -> None:
    (clean_environment / "perpbot.toml").write_text(
        "[risk.balanced]\nspread_hard_bps = 1.5\nmax_market_age_s = 4\n"
        "[risk.aggressive]\nmin_score = 45\n"
    )
    limits = load_settings().risk_limits()
    balanced = limit_values(limits[RiskMode.BALANCED])
    assert balanced["spread_hard_bps"] == D("1.5")  # a TOML float, every digit kept
    assert limits[RiskMode.BALANCED].max_market_age == timedelta(seconds=4)
    unchanged = {
        k: v for k, v in balanced.items() if k not in ("spread_hard_bps", "max_market_age_s")
    }
    assert unchanged == {
        k: v for k, v in limit_values(LIMITS[RiskMode.BALANCED]).items() if k in unchanged
    }
    assert limits[RiskMode.AGGRESSIVE].min_score == 45
    assert limits[RiskMode.CONSERVATIVE] == LIMITS[RiskMode.CONSERVATIVE]


def test_environment_when_it_sets_a_limit_then_it_wins_over_the_file_and_merges(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environment / "perpbot.toml").write_text(
        "[risk.balanced]\nspread_hard_bps = 1.5\nmin_score = 55\n"
    )
    monkeypatch.setenv("PERPBOT_RISK__BALANCED__SPREAD_HARD_BPS", "1.25")
    monkeypatch.setenv("PERPBOT_RISK__VOLUME_FOCUSED__LATENCY_HARD_MS", "280")
    limits = load_settings().risk_limits()
    assert limits[RiskMode.BALANCED].spread_hard_bps == D("1.25")
    assert limits[RiskMode.BALANCED].min_score == 55
    assert limits[RiskMode.VOLUME_FOCUSED].latency_hard_ms == 280


@pytest.mark.parametrize(
    ("risk", "line"),
    [
        (
            {"balanced": {"spread_soft_bps": 3}},
            "setting risk.balanced.spread_soft_bps: must not exceed spread_hard_bps (2), got 3",
        ),
        (
            {"conservative": {"latency_soft_ms": 500}},
            "setting risk.conservative.latency_soft_ms: must not exceed latency_hard_ms (400)",
        ),
        (
            {"aggressive": {"leverage_hard": -1}},
            "setting risk.aggressive.leverage_hard: must not be negative",
        ),
        ({"balanced": {"volatility_soft": -0.01}}, "setting risk.balanced.volatility_soft: must"),
        ({"balanced": {"min_score": 101}}, "setting risk.balanced.min_score: must be within"),
        ({"balanced": {"min_score": "nan"}}, "setting risk.balanced.min_score: "),
        ({"balanced": {"latency_hard_ms": "fast"}}, "setting risk.balanced.latency_hard_ms: "),
        ({"balanced": {"max_market_age_s": 0}}, "setting risk.balanced.max_market_age_s: must"),
        ({"balanced": {"max_spread": 1}}, "setting risk.balanced.max_spread: unknown limit"),
        ({"reckless": {"min_score": 1}}, "setting risk.reckless"),
        (
            {"aggressive": {"weight_edge": 0.5}},
            "setting risk.aggressive.weight_edge: the weights must sum to 1, got 1.1",
        ),
    ],
)
def test_settings_when_a_risk_limit_is_wrong_then_one_line_names_it(
    risk: dict[str, dict[str, object]], line: str
) -> None:
    message = settings_error(risk=risk)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(line), message


def test_settings_file_when_a_limit_is_wrong_then_the_line_names_it(
    clean_environment: Path,
) -> None:
    (clean_environment / "perpbot.toml").write_text("[risk.balanced]\nmin_score = 120\n")
    assert settings_error() == "setting risk.balanced.min_score: must be within 0-100, got 120"


def test_environment_when_a_limit_is_wrong_then_the_line_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERPBOT_RISK__BALANCED__SPREAD_SOFT_BPS", "9")
    assert settings_error().startswith("setting risk.balanced.spread_soft_bps: must not exceed")


# -- the sync's plan ------------------------------------------------------------------------


def rows_of(limits: dict[RiskMode, ModeLimits]) -> list[RiskLimitRow]:
    from datetime import UTC, datetime

    at = datetime(2026, 12, 2, tzinfo=UTC)
    return [
        RiskLimitRow(mode, name, value, at, "perpbot")
        for mode, each in limits.items()
        for name, value in limit_values(each).items()
    ]


def test_plan_when_the_table_is_empty_then_every_limit_of_every_mode() -> None:
    plan = plan_sync([], LIMITS)
    assert [c.mode for c in plan] == list(RiskMode)
    assert all(list(c.changes) == list(LIMIT_NAMES) for c in plan)
    assert all(old is None for c in plan for old, _ in c.changes.values())


def test_plan_when_in_line_then_nothing_and_when_one_limit_moves_then_only_it() -> None:
    rows = rows_of(dict(LIMITS))
    assert plan_sync(rows, LIMITS) == []
    wanted = {
        **LIMITS,
        RiskMode.BALANCED: with_limits(LIMITS[RiskMode.BALANCED], {"min_score": D(60)}),
    }
    assert plan_sync(rows, wanted) == [ModeChange(RiskMode.BALANCED, {"min_score": (D(50), D(60))})]
    [change] = plan_sync(rows, wanted)
    assert change.diff() == "min_score 50 -> 60"
    assert change.details() == {"min_score": ["50", "60"]}


def test_plan_when_a_row_holds_the_same_number_written_otherwise_then_in_line() -> None:
    rows = [
        dataclasses.replace(r, value=D("0.100")) if r.name == "leverage_soft" else r
        for r in rows_of(dict(LIMITS))
        if r.mode is RiskMode.BALANCED
    ]
    assert plan_sync(rows, {RiskMode.BALANCED: LIMITS[RiskMode.BALANCED]}) == []


# -- the README's table of defaults ---------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_of_defaults_when_read_then_equals_the_defaults_in_code() -> None:
    section = README.read_text().split("## Risk limits", 1)[1].split("\n## ", 1)[0]
    shown: dict[RiskMode, dict[str, D]] = {mode: {} for mode in RiskMode}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = [n.strip().strip("`") for n in cells[0].split("/")]
        for mode, cell in zip(RiskMode, cells[1:5], strict=True):
            for name, value in zip(names, cell.split("/"), strict=True):
                shown[mode][name] = D(value.strip())
    for mode in RiskMode:
        assert shown[mode] == limit_values(LIMITS[mode]), mode
