"""The settings the read commands need, without pydantic: a conservative first look.

``perpbot status``, ``jobs`` and ``job`` need two settings (the database URL and
the home directory), yet a wrong setting anywhere must still stop them with the
full validator's one line naming it.  Importing pydantic-settings and building the
models costs a read command more than everything else it does, so this module looks
first: it reads ``PERPBOT_*`` and the settings file exactly as
:mod:`perpbot_db.settings` does and checks every value it finds against the same
rules.  It answers only when it is sure the full validation would accept the same
input; anything it is not sure of (a value out of range, a type it would have to
coerce, a nested ``PERPBOT_X__Y`` variable, ``[risk]``, an unknown key, a file it
cannot read) returns None, and the caller runs the full validation, which accepts
it or names what is wrong.  It never reports an error itself.

The rules (:data:`SETTINGS`, :data:`EXCHANGE`, :data:`PAPER`) are the models'
field types, bounds and defaults written out as data; ``tests/pure/test_settings_light.py``
derives them from the models and fails, printing the table to paste, when they
differ.  The checks the models make in code (exchange names, the client order
prefix, the URL scheme, the API token, an exchange's shares) are the functions
below, which the models call too.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

ENV_PREFIX = "PERPBOT_"
EXCHANGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CLIENT_ORDER_PREFIX = re.compile(r"^[a-z]{1,6}$")
DATABASE_URL_SCHEMES = ("postgresql+psycopg://", "postgresql://", "postgres://")


# -- the checks the models make in code (they call these) ----------------------------


def exchange_name_problem(name: str) -> str | None:
    if EXCHANGE_NAME.match(name):
        return None
    return f"exchange name {name!r} must be lowercase letters, digits or _ (a ccxt exchange id)"


def client_order_prefix_problem(value: str) -> str | None:
    return None if CLIENT_ORDER_PREFIX.match(value) else "must be 1 to 6 lowercase letters"


def database_url_problem(value: str) -> str | None:
    return None if value.startswith(DATABASE_URL_SCHEMES) else "must be a postgresql+psycopg:// URL"


def api_token_problem(token: str) -> str | None:
    if len(token) < 16 or token != token.strip() or not token.isprintable():
        return "must be at least 16 printable characters with no surrounding space"
    return None


def exchange_shares_problem(
    *,
    volume_share: Decimal,
    arbitrage_share: Decimal,
    reserve_share: Decimal,
    single_job_cap: Decimal,
    inflight_cap: Decimal,
) -> str | None:
    total = volume_share + arbitrage_share + reserve_share
    if total > 1:
        return f"volume_share + arbitrage_share + reserve_share is {total}, more than 1"
    if single_job_cap > inflight_cap:
        return "single_job_cap is larger than inflight_cap"
    return None


def config_path(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The settings file: ``$PERPBOT_CONFIG`` (must exist) else ``./perpbot.toml`` if present."""
    explicit = environ.get("PERPBOT_CONFIG")
    if explicit:
        return Path(explicit), True
    return Path("perpbot.toml"), False


# -- the rules, as data ---------------------------------------------------------------


class Rule(NamedTuple):
    """One field: its kind, default (as text; None: none or a factory) and bounds.

    Kinds: ``decimal``, ``int``, ``float``, ``bool``, ``str``, ``path``, ``secret``
    (checked here); ``exchanges`` and ``paper`` (the nested tables, checked here);
    ``full`` (only the full validation judges it).
    """

    kind: str
    default: str | int | float | bool | None = None
    required: bool = False
    ge: int | float | None = None
    gt: int | float | None = None
    le: int | float | None = None
    lt: int | float | None = None


# fmt: off
SETTINGS: dict[str, Rule] = {
    "database_url": Rule("secret"),
    "home": Rule("path", "~/.perpbot"),
    "config": Rule("path"),
    "exchanges": Rule("exchanges"),
    "secrets_file": Rule("path"),
    "hedge_tolerance": Rule("decimal", "0.001", ge=0, lt=1),
    "client_order_prefix": Rule("str", "pb"),
    "max_metadata_bytes": Rule("int", 4096, gt=0, le=1000000),
    "max_legs": Rule("int", 8, ge=2, le=16),
    "max_attempts": Rule("int", 3, ge=1, le=999),
    "submit_batch_size": Rule("int", 2000, gt=0, le=50000),
    "submit_writers": Rule("int", 2, ge=1, le=16),
    "max_pending_s": Rule("float", 300.0, gt=0, le=31622400),
    "market_max_future_skew_s": Rule("float", 5.0, ge=0, le=3600),
    "max_concurrent_jobs": Rule("int", 50, gt=0, le=100000),
    "tick_interval_s": Rule("float", 1.0, gt=0, le=3600),
    "tick_candidates": Rule("int", 2000, gt=0, le=100000),
    "rescore_batch": Rule("int", 1000, ge=0, le=100000),
    "rescore_after_s": Rule("float", 5.0, ge=0, le=86400),
    "blacklist_cooldown_s": Rule("int", 300, gt=0, le=86400),
    "safe_mode_cooldown_s": Rule("int", 900, gt=0, le=86400),
    "safe_mode_drawdown": Rule("decimal", "0.05", gt=0, le=1),
    "safe_mode_failures": Rule("int", 3, gt=0, le=1000),
    "unhedged_exposure_limit_usd": Rule("decimal", "0", ge=0, le=1000000000),
    "unhedged_lock_s": Rule("int", 86400, gt=0, le=604800),
    "job_worst_loss_bps": Rule("decimal", "50", gt=0, le=10000),
    "tier_for_strategy": Rule("full"),
    "worker_concurrency": Rule("int", 50, gt=0, le=10000),
    "lease_s": Rule("float", 30.0, ge=1, le=3600),
    "poll_interval_s": Rule("float", 1.0, gt=0, le=600),
    "retry_backoff_s": Rule("float", 5.0, ge=0, le=86400),
    "recovery_interval_s": Rule("float", 5.0, gt=0, le=3600),
    "shutdown_grace_s": Rule("float", 60.0, gt=0, le=3600),
    "archive_after_s": Rule("float", 60.0, ge=0, le=31622400),
    "archive_batch": Rule("int", 5000, gt=0, le=100000),
    "paper": Rule("paper"),
    "strategies": Rule("full"),
    "feed": Rule("full"),
    "api_token": Rule("secret"),
    "web_host": Rule("str", "127.0.0.1"),
    "web_port": Rule("int", 8480, ge=0, le=65535),
    "web_auth_failures": Rule("int", 5, ge=1, le=1000),
    "web_auth_window_s": Rule("float", 60.0, gt=0, le=86400),
    "monitor_interval_s": Rule("float", 2.0, gt=0, le=60),
    "risk": Rule("full"),
}
EXCHANGE: dict[str, Rule] = {
    "equity_usd": Rule("decimal", required=True, gt=0),
    "volume_share": Rule("decimal", "0.50", ge=0, le=1),
    "arbitrage_share": Rule("decimal", "0.30", ge=0, le=1),
    "reserve_share": Rule("decimal", "0.20", ge=0, le=1),
    "single_job_cap": Rule("decimal", "0.10", gt=0, le=1),
    "inflight_cap": Rule("decimal", "0.30", gt=0, le=1),
    "max_concurrent_jobs": Rule("int", 5, gt=0, le=10000),
    "max_inflight_notional_usd": Rule("decimal", gt=0),
    "funding_interval_h": Rule("int", 8, ge=1, le=24),
    "venue": Rule("full"),
    "ccxt_id": Rule("full"),
    "mode": Rule("full"),
    "live": Rule("bool", False),
}
PAPER: dict[str, Rule] = {
    "seed": Rule("int", 7),
    "latency_ms": Rule("float", 20.0, ge=0, le=60000),
    "taker_fee_bps": Rule("decimal", "5", ge=0, le=100),
    "maker_fee_bps": Rule("decimal", "2", ge=0, le=100),
    "impact_bps_per_100k_usd": Rule("decimal", "1", ge=0, le=1000),
    "reject_rate": Rule("float", 0.0, ge=0, le=1),
    "timeout_rate": Rule("float", 0.0, ge=0, le=1),
    "timeout_fills": Rule("float", 0.5, ge=0, le=1),
    "partial_fill_rate": Rule("float", 0.0, ge=0, le=1),
    "max_snapshot_age_s": Rule("float", 300.0, gt=0, le=86400),
    "fail_reduce_only": Rule("bool", True),
}
# fmt: on

#: The checks the models make in code that this module makes too, by validator name;
#: the test fails if a model gains one that is neither here nor on a ``full`` field.
MIRRORED_VALIDATORS = {
    "Settings": frozenset({"_exchange_names", "_prefix", "_url", "_token"}),
    "ExchangeSettings": frozenset({"_shares_fit"}),
    "PaperSettings": frozenset(),
}


class LightSettings(NamedTuple):
    """What the read commands need: where the database is."""

    database_url: str | None
    home: Path
    config: Path | None

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()


class _Unsure(Exception):
    """The full validation must judge this input."""


# Numbers written plainly (no sign but minus, no exponent, no underscores, no leading zeros):
# the full validation reads these the same way; anything fancier is left to it.
_INT = re.compile(r"-?(0|[1-9][0-9]{0,29})")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]{0,29})(\.[0-9]{1,30})?")
_SIMPLE = frozenset({"decimal", "int", "float", "bool", "str", "path", "secret"})
_SHARE_FIELDS = (
    "volume_share", "arbitrage_share", "reserve_share", "single_job_cap", "inflight_cap"
)  # fmt: skip


def _number(rule: Rule, value: Any) -> Decimal | int | float:
    """The value as the model would hold it, if surely valid; else :class:`_Unsure`."""
    if isinstance(value, bool):
        raise _Unsure
    if rule.kind == "int":
        if isinstance(value, str) and _INT.fullmatch(value):
            value = int(value)
        if not isinstance(value, int):
            raise _Unsure
        number: Decimal | int | float = value
    elif rule.kind == "float":
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise _Unsure
        number = float(value)
    else:  # decimal
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _Unsure
            number = Decimal(str(value))  # what pydantic does with a float
        elif isinstance(value, int) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
            number = Decimal(value)
        else:
            raise _Unsure
    if not (
        (rule.ge is None or number >= rule.ge)
        and (rule.gt is None or number > rule.gt)
        and (rule.le is None or number <= rule.le)
        and (rule.lt is None or number < rule.lt)
    ):
        raise _Unsure
    return number


def _value(rule: Rule, value: Any) -> Any:
    if rule.kind in ("int", "float", "decimal"):
        return _number(rule, value)
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise _Unsure
        return value
    if rule.kind in ("str", "path", "secret"):
        if not isinstance(value, str) or "\x00" in value:
            raise _Unsure
        return Path(value) if rule.kind == "path" else value
    raise _Unsure  # a nested table or a ``full`` field: checked by its caller, or not here


def _table(rules: Mapping[str, Rule], data: Any) -> dict[str, Any]:
    """A nested model's table, every field checked, defaults filled in."""
    if not isinstance(data, dict) or any(key not in rules for key in data):
        raise _Unsure
    values: dict[str, Any] = {}
    for name, rule in rules.items():
        if name in data:
            values[name] = _value(rule, data[name])
        elif rule.required:
            raise _Unsure
        elif rule.kind == "decimal" and rule.default is not None:
            values[name] = Decimal(str(rule.default))
        else:
            values[name] = rule.default
    return values


def _check_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in data.items():
        rule = SETTINGS.get(name)
        if rule is None:
            raise _Unsure  # extra settings are forbidden: the full validation says so
        if rule.kind == "exchanges":
            if not isinstance(value, dict):
                raise _Unsure
            for exchange, table in value.items():
                if exchange_name_problem(exchange) is not None:
                    raise _Unsure
                checked = _table(EXCHANGE, table)
                shares = {k: checked[k] for k in _SHARE_FIELDS}
                if exchange_shares_problem(**shares) is not None:
                    raise _Unsure
        elif rule.kind == "paper":
            _table(PAPER, value)
        else:
            values[name] = _value(rule, value)
    prefix = values.get("client_order_prefix")
    if prefix is not None and client_order_prefix_problem(prefix) is not None:
        raise _Unsure
    url = values.get("database_url")
    if url is not None and database_url_problem(url) is not None:
        raise _Unsure
    token = values.get("api_token")
    if token is not None and api_token_problem(token) is not None:
        raise _Unsure
    return values


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``PERPBOT_<FIELD>`` variables (names in any case, as pydantic-settings reads them)."""
    found: dict[str, str] = {}
    for key, value in environ.items():
        if key[:8].upper() != ENV_PREFIX:
            continue
        name = key[8:].lower()
        if "__" in name:
            raise _Unsure  # a nested value, merged into the file's tables
        if name not in SETTINGS:
            continue  # not a setting: pydantic-settings ignores it too
        if name in found:
            raise _Unsure  # the same setting twice, in different cases
        found[name] = value
    return found


def load_light(environ: Mapping[str, str] | None = None) -> LightSettings | None:
    """The database settings if every setting is surely valid; None: run the full
    validation (:func:`perpbot_db.settings.load_settings`), which decides."""
    env = os.environ if environ is None else environ
    try:
        from_env = _environment(env)
        path, explicit = config_path(env)
        data: dict[str, Any] = {}
        if explicit or path.exists():
            with path.open("rb") as fh:
                data = tomllib.load(fh)
            data.setdefault("config", str(path))
        merged = {**data, **from_env}  # the environment wins, as in the full settings
        if any(SETTINGS[name].kind not in _SIMPLE for name in from_env):
            raise _Unsure  # a table given as JSON in a variable
        values = _check_settings(merged)
    except (_Unsure, OSError, ValueError, ArithmeticError, tomllib.TOMLDecodeError):
        return None
    return LightSettings(
        database_url=values.get("database_url"),
        home=values.get("home", Path(str(SETTINGS["home"].default))),
        config=values.get("config"),
    )
