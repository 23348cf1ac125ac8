"""Settings: ``PERPBOT_*`` environment variables over ``perpbot.toml``.

The settings file is ``$PERPBOT_CONFIG`` when set (it must then exist), else
``./perpbot.toml`` when present.  Environment variables win over the file;
nested values use ``__`` (``PERPBOT_EXCHANGES__OKX__EQUITY_USD=40000``).

A wrong setting raises :class:`SettingsError` whose message is one line per
problem, naming the setting, so the CLI can print it and exit non-zero.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import (
    SettingsError as PydanticSettingsError,
)

from perpbot_db.domain.capital import DEFAULT_TIER_FOR_STRATEGY
from perpbot_db.domain.jobspec import CCXT_SYMBOL
from perpbot_db.domain.lifecycle import CapitalTier, RiskMode, Strategy
from perpbot_db.domain.paper_market import MarketParams
from perpbot_db.domain.risk import LIMITS, LimitError, ModeLimits, with_limits
from perpbot_db.domain.strategies.arb import ArbParams
from perpbot_db.domain.strategies.funding_arb import FundingArbParams
from perpbot_db.domain.strategies.hedge_rebalance import RebalanceParams
from perpbot_db.domain.strategies.volume import VolumeParams
from perpbot_db.settings_light import (
    api_token_problem,
    client_order_prefix_problem,
    config_path,
    database_url_problem,
    exchange_name_problem,
    exchange_shares_problem,
)

Share = Annotated[Decimal, Field(ge=0, le=1, allow_inf_nan=False)]
PositiveMoney = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it."""


class ExchangeSettings(BaseModel):
    """One exchange account, as ``[exchanges.NAME]`` in the settings file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    equity_usd: PositiveMoney
    volume_share: Share = Decimal("0.50")
    arbitrage_share: Share = Decimal("0.30")
    reserve_share: Share = Decimal("0.20")
    single_job_cap: Annotated[Decimal, Field(gt=0, le=1)] = Decimal("0.10")
    inflight_cap: Annotated[Decimal, Field(gt=0, le=1)] = Decimal("0.30")
    max_concurrent_jobs: Annotated[int, Field(gt=0, le=10_000)] = 5
    max_inflight_notional_usd: PositiveMoney | None = None
    # Hours between funding payments (8 on most venues, 1 on hourly ones): a stored
    # ``funding_rate`` is the rate per this interval (ccxt's convention).
    funding_interval_h: Annotated[int, Field(ge=1, le=24)] = 8
    # The venue behind the account: the paper exchange, or a real one through ccxt
    # (workers/venues/ccxt_venues.py checks these at start-up and says what is missing).
    venue: Literal["paper", "ccxt"] = "paper"
    ccxt_id: Literal["binanceusdm", "okx", "bybit"] | None = None  # None: from the name
    mode: Literal["demo", "testnet", "live"] = "demo"
    live: bool = False  # real money: needs mode = "live" too

    @model_validator(mode="after")
    def _shares_fit(self) -> ExchangeSettings:
        problem = exchange_shares_problem(
            volume_share=self.volume_share,
            arbitrage_share=self.arbitrage_share,
            reserve_share=self.reserve_share,
            single_job_cap=self.single_job_cap,
            inflight_cap=self.inflight_cap,
        )
        if problem is not None:
            raise ValueError(problem)
        return self


Rate = Annotated[float, Field(ge=0, le=1)]


class PaperSettings(BaseModel):
    """The paper exchange (``[paper]``): the default venue for every configured exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 7
    latency_ms: Annotated[float, Field(ge=0, le=60_000)] = 20.0
    taker_fee_bps: Annotated[Decimal, Field(ge=0, le=100)] = Decimal("5")
    maker_fee_bps: Annotated[Decimal, Field(ge=0, le=100)] = Decimal("2")
    impact_bps_per_100k_usd: Annotated[Decimal, Field(ge=0, le=1000)] = Decimal("1")
    reject_rate: Rate = 0.0
    timeout_rate: Rate = 0.0
    timeout_fills: Rate = 0.5
    partial_fill_rate: Rate = 0.0
    max_snapshot_age_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    fail_reduce_only: bool = True


class StrategiesSettings(BaseModel):
    """The job producers (``[strategies]``, one sub-table per strategy): run under
    ``perpbot run`` every ``interval_s`` when any is enabled, or once by ``perpbot produce``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # the seed of the volume program's random sizes and holds
    seed: int = 11
    # quotes older than this are not traded on (the balanced risk mode holds them at 10 s)
    max_quote_age_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # taker fee per exchange in bps; an exchange not listed pays paper.taker_fee_bps
    taker_fee_bps: dict[str, Annotated[Decimal, Field(ge=0, le=100, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    funding_arb: FundingArbParams = Field(default_factory=FundingArbParams)
    arb: ArbParams = Field(default_factory=ArbParams)
    volume: VolumeParams = Field(default_factory=VolumeParams)
    hedge_rebalance: RebalanceParams = Field(default_factory=RebalanceParams)

    @property
    def any_enabled(self) -> bool:
        return any(
            p.enabled for p in (self.funding_arb, self.arb, self.volume, self.hedge_rebalance)
        )


Multiplier = Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)]
Bps = Annotated[float, Field(ge=0, le=10_000, allow_inf_nan=False)]


class FeedSettings(BaseModel):
    """The market data feed (``[feed]``): what writes ``market_snapshots`` under
    ``perpbot run`` and ``perpbot feed``.  The regime knobs drive the paper market
    (:mod:`perpbot_db.domain.paper_market`); each ``*_min``/``*_max`` pair is a range a
    fast market draws from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "paper": the seeded paper market; "ccxt": each ``venue = "ccxt"`` exchange's own
    # quotes through ccxt (and the paper market for the paper exchanges); "none": no feed
    # (snapshots come from elsewhere, e.g. ``perpbot market load``).
    kind: Literal["paper", "ccxt", "none"] = "paper"
    interval_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 1.0
    symbols: Annotated[list[str], Field(min_length=1, max_length=500)] = Field(
        default_factory=lambda: ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
    )
    seed: int = 7
    fast_per_hour: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 0.5
    fast_mean_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 120.0
    fast_volatility_x: Multiplier = 4.0
    fast_spread_x_min: Multiplier = 5.0
    fast_spread_x_max: Multiplier = 20.0
    fast_latency_x_min: Multiplier = 3.0
    fast_latency_x_max: Multiplier = 10.0
    calm_gap_bps_max: Bps = 3.0
    fast_gap_bps_min: Bps = 10.0
    fast_gap_bps_max: Bps = 50.0
    jumps_per_hour: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 0.2
    jump_bps: Bps = 30.0

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        for symbol in value:
            if not re.match(CCXT_SYMBOL, symbol):
                raise ValueError(f"{symbol!r} is not a ccxt unified symbol (BTC/USDT:USDT)")
        if len(set(value)) != len(value):
            raise ValueError("a symbol is listed twice")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> FeedSettings:
        for low, high in (
            ("fast_spread_x_min", "fast_spread_x_max"),
            ("fast_latency_x_min", "fast_latency_x_max"),
            ("fast_gap_bps_min", "fast_gap_bps_max"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise PydanticCustomError(
                    "feed_range",
                    "{message}",
                    {"setting": low, "message": f"is above {high}"},
                )
        return self

    def market_params(self) -> MarketParams:
        """The paper market's knobs."""
        return MarketParams(
            fast_per_hour=self.fast_per_hour,
            fast_mean_s=self.fast_mean_s,
            fast_volatility_x=self.fast_volatility_x,
            fast_spread_x=(self.fast_spread_x_min, self.fast_spread_x_max),
            fast_latency_x=(self.fast_latency_x_min, self.fast_latency_x_max),
            calm_gap_bps=(0.0, self.calm_gap_bps_max),
            fast_gap_bps=(self.fast_gap_bps_min, self.fast_gap_bps_max),
            jumps_per_hour=self.jumps_per_hour,
            jump_bps=self.jump_bps,
        )


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the settings file chosen by ``PERPBOT_CONFIG`` at load time."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Everything perpbot reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="PERPBOT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: SecretStr | None = None
    home: Path = Path("~/.perpbot")
    config: Path | None = None

    exchanges: dict[str, ExchangeSettings] = Field(default_factory=dict)
    # API keys of ccxt venues when not in the environment: TOML, [NAME] api_key/api_secret.
    secrets_file: Path | None = None

    # submission
    hedge_tolerance: Annotated[Decimal, Field(ge=0, lt=1)] = Decimal("0.001")
    client_order_prefix: str = "pb"
    max_metadata_bytes: Annotated[int, Field(gt=0, le=1_000_000)] = 4096
    max_legs: Annotated[int, Field(ge=2, le=16)] = 8
    max_attempts: Annotated[int, Field(ge=1, le=999)] = 3
    submit_batch_size: Annotated[int, Field(gt=0, le=50_000)] = 2000
    submit_writers: Annotated[int, Field(ge=1, le=16)] = 2  # unused: one transaction now
    # A job submitted without a deadline gets one this long after its insert (database clock).
    max_pending_s: Annotated[float, Field(gt=0, le=366 * 86_400)] = 300.0

    # market data
    # A snapshot observed further ahead of the database clock than this is refused.
    market_max_future_skew_s: Annotated[float, Field(ge=0, le=3600)] = 5.0

    # admission
    max_concurrent_jobs: Annotated[int, Field(gt=0, le=100_000)] = 50
    tick_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    tick_candidates: Annotated[int, Field(gt=0, le=100_000)] = 2000
    rescore_batch: Annotated[int, Field(ge=0, le=100_000)] = 1000
    rescore_after_s: Annotated[float, Field(ge=0, le=86_400)] = 5.0
    blacklist_cooldown_s: Annotated[int, Field(gt=0, le=86_400)] = 300
    safe_mode_cooldown_s: Annotated[int, Field(gt=0, le=86_400)] = 900
    safe_mode_drawdown: Annotated[Decimal, Field(gt=0, le=1)] = Decimal("0.05")
    safe_mode_failures: Annotated[int, Field(gt=0, le=1000)] = 3
    # Protections (domain/protections.py).  ``safe_mode_drawdown`` above is the drawdown
    # limit: realized loss since the start of the UTC day, as a fraction of equity.
    # Open exposure a failed unwind may leave on an exchange before it is locked
    # (0: any exposure locks it), and how long that lock lasts unless an operator
    # lets the exchange out first (`perpbot override leave-safe-mode`).
    unhedged_exposure_limit_usd: Annotated[Decimal, Field(ge=0, le=1_000_000_000)] = Decimal(0)
    unhedged_lock_s: Annotated[int, Field(gt=0, le=7 * 86_400)] = 86_400
    # A job's worst-case loss (fees on every leg, an unwind, slippage) as bps of its
    # notional: admission keeps today's losses plus in-flight worst cases under the limit.
    job_worst_loss_bps: Annotated[Decimal, Field(gt=0, le=10_000)] = Decimal(50)
    tier_for_strategy: dict[Strategy, CapitalTier] = Field(
        default_factory=lambda: dict(DEFAULT_TIER_FOR_STRATEGY)
    )

    # execution
    worker_concurrency: Annotated[int, Field(gt=0, le=10_000)] = 50
    lease_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    poll_interval_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    retry_backoff_s: Annotated[float, Field(ge=0, le=86_400)] = 5.0
    recovery_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # ``perpbot run`` on SIGTERM: how long workers may take to finish the batch in hand
    # before SIGKILL (safe either way: a lease that runs out goes to recovery).
    shutdown_grace_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # archive: finished jobs older than this leave the hot tables (services/archive.py)
    archive_after_s: Annotated[float, Field(ge=0, le=366 * 86_400)] = 60.0
    archive_batch: Annotated[int, Field(gt=0, le=100_000)] = 5000
    paper: PaperSettings = Field(default_factory=PaperSettings)
    strategies: StrategiesSettings = Field(default_factory=StrategiesSettings)
    feed: FeedSettings = Field(default_factory=FeedSettings)
    # the HTTP console (perpbot web; inside perpbot run).  Every change needs the token
    # (PERPBOT_API_TOKEN); without one the API is read-only.  A client that fails
    # ``web_auth_failures`` times within ``web_auth_window_s`` gets 429 until the window
    # has passed.
    api_token: SecretStr | None = None
    web_host: str = "127.0.0.1"
    web_port: Annotated[int, Field(ge=0, le=65_535)] = 8480  # 0: any free port (logged)
    web_auth_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    web_auth_window_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    # the monitoring state (GET /api/state, the dashboard): built at most once per interval
    # and shared by every client
    monitor_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # risk limits: ``[risk.MODE]`` tables, one setting per limit (names in
    # perpbot_db.domain.risk.LIMIT_NAMES); an unset limit keeps its default
    risk: dict[RiskMode, dict[str, Decimal]] = Field(default_factory=dict)

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else api_token_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("exchanges")
    @classmethod
    def _exchange_names(cls, value: dict[str, ExchangeSettings]) -> dict[str, ExchangeSettings]:
        for name in value:
            problem = exchange_name_problem(name)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("tier_for_strategy")
    @classmethod
    def _tiers(cls, value: dict[Strategy, CapitalTier]) -> dict[Strategy, CapitalTier]:
        missing = [s.value for s in Strategy if s not in value]
        if missing:
            raise ValueError(f"no tier for strategy {', '.join(missing)}")
        for strategy, tier in value.items():
            if tier is CapitalTier.RESERVE and strategy is not Strategy.HEDGE_REBALANCE:
                raise ValueError(
                    f"{strategy.value} may not use the reserve tier (only hedge_rebalance)"
                )
        return value

    @field_validator("risk")
    @classmethod
    def _risk_limits(
        cls, value: dict[RiskMode, dict[str, Decimal]]
    ) -> dict[RiskMode, dict[str, Decimal]]:
        for mode, changes in value.items():
            try:
                with_limits(LIMITS[mode], changes)
            except LimitError as exc:
                # The context names the limit: the message says risk.MODE.LIMIT.
                raise PydanticCustomError(
                    "risk_limit",
                    "{message}",
                    {"setting": f"{mode.value}.{exc.name}", "message": exc.message},
                ) from None
        return value

    def risk_limits(self) -> Mapping[RiskMode, ModeLimits]:
        """The limits of every mode: the defaults with the ``[risk.MODE]`` settings applied."""
        return {
            mode: with_limits(limits, self.risk.get(mode, {})) for mode, limits in LIMITS.items()
        }

    @field_validator("client_order_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        problem = client_order_prefix_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else database_url_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path, explicit = config_path(os.environ)
        data: dict[str, Any] = {}
        if explicit or path.exists():
            data = _read_toml(path)
            data.setdefault("config", str(path))
        return (init_settings, env_settings, _TomlSource(settings_cls, data))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"setting PERPBOT_CONFIG: file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {path}: not valid TOML: {exc}") from None


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "settings"


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``setting <dotted.name>: <message>``."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = tuple(err["loc"])
        setting = (err.get("ctx") or {}).get("setting")  # a validator naming the sub-setting
        if isinstance(setting, str):
            loc += tuple(setting.split("."))
        lines.append(f"setting {_loc(loc)}: {msg}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Load and validate settings, raising :class:`SettingsError` on any problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    except PydanticSettingsError as exc:
        # e.g. PERPBOT_EXCHANGES=binance: a nested setting that is not JSON.
        match = re.search(r'field "([^"]+)"', str(exc))
        name = match.group(1) if match else "settings"
        raise SettingsError(
            f"setting {name}: PERPBOT_{name.upper()} must be JSON (or use "
            f"PERPBOT_{name.upper()}__KEY variables)"
        ) from None
