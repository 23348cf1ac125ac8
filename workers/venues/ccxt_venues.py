"""Which ccxt exchange an account trades on, in which mode, with which keys.

Design note.  Three things are decided here, once, at start-up, and a wrong
answer refuses to start with one line naming the setting (the CLI exits 2,
as for every settings error):

* **Mode.**  ``demo`` (default), ``testnet`` or ``live`` per exchange.  binance
  USDⓈ-M: demo trading (ccxt refuses its futures sandbox, so ``testnet`` is
  refused here); okx: its simulated trading (``x-simulated-trading: 1``, what
  ccxt's sandbox mode sends) for ``demo`` and ``testnet`` alike; bybit:
  ``testnet`` (api-testnet) or ``demo`` (api-demo).  Real money only with
  ``mode = "live"`` *and* ``live = true`` *and* keys present.
* **Keys.**  Only from the environment (``PERPBOT_<NAME>_API_KEY``,
  ``_API_SECRET``, ``_API_PASSWORD`` for okx) or the ``secrets_file`` (TOML,
  ``[NAME] api_key/api_secret/api_password``, refused unless mode 0600 or
  stricter).  They are held as ``SecretStr`` and handed to ccxt only; ccxt's
  own request logger (which prints headers, keys included) is switched off.
* **Expiry.**  The subclasses below sign each order with the request's
  expiry (``OrderRequest.expires_at``): binance ``recvWindow`` and bybit
  ``X-BAPI-RECV-WINDOW`` = expiry - the request's own timestamp (pinned, so
  the two agree to the millisecond), okx the ``expTime`` header.  A window
  already gone when signing raises :class:`RequestExpired`: nothing is sent.
  ccxt's own retries are off (``maxRetriesOnFailure = 0``): a retried order
  call could place an order the worker believes lost.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ccxt
from pydantic import SecretStr

from perpbot_db.settings import ExchangeSettings, Settings, SettingsError
from workers.venues.ccxt_errors import RequestExpired

#: The ccxt id an exchange name stands for when ``ccxt_id`` is not set.
DEFAULT_CCXT_IDS = {
    "binance": "binanceusdm",
    "binanceusdm": "binanceusdm",
    "okx": "okx",
    "bybit": "bybit",
}
SUPPORTED = ("binanceusdm", "okx", "bybit")
#: The private parameter the adapter passes down to ``sign`` (popped there, never sent).
EXPIRY_PARAM = "perpbotExpiresAtMs"
BINANCE_MAX_RECV_WINDOW_MS = 60_000
REQUEST_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class VenueKeys:
    api_key: SecretStr
    api_secret: SecretStr
    api_password: SecretStr | None = None

    def values(self) -> tuple[str, ...]:
        """The secrets as text, for redaction only."""
        found = [self.api_key, self.api_secret, self.api_password]
        return tuple(s.get_secret_value() for s in found if s is not None)


@dataclass(frozen=True)
class VenuePlan:
    """What :func:`plan_venue` decided for one exchange."""

    name: str
    ccxt_id: str
    mode: str
    keys: VenueKeys

    def __repr__(self) -> str:  # keys never printed, even as SecretStr
        return f"VenuePlan(name={self.name!r}, ccxt_id={self.ccxt_id!r}, mode={self.mode!r})"


def _env_keys(name: str, environ: Mapping[str, str]) -> dict[str, str]:
    stem = f"PERPBOT_{name.upper()}_API_"
    found = {}
    for part in ("KEY", "SECRET", "PASSWORD"):
        value = environ.get(stem + part)
        if value:
            found[f"api_{part.lower()}"] = value
    return found


def _file_keys(path: Path, name: str) -> dict[str, str]:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise SettingsError(f"setting secrets_file: cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise SettingsError(
            f"setting secrets_file: {path} is readable by others (mode {mode:o}); chmod 600 it"
        )
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        raise SettingsError(f"setting secrets_file: {path} is not a readable TOML file") from None
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise SettingsError(f"setting secrets_file: [{name}] in {path} must be a table")
    return {k: str(v) for k, v in table.items() if k in ("api_key", "api_secret", "api_password")}


def load_keys(
    name: str, settings: Settings, environ: Mapping[str, str] | None = None
) -> VenueKeys | None:
    """The exchange's keys: the environment first, else the secrets file; None if absent."""
    env = os.environ if environ is None else environ
    found = _env_keys(name, env)
    if not found and settings.secrets_file is not None:
        found = _file_keys(settings.secrets_file.expanduser(), name)
    if "api_key" not in found or "api_secret" not in found:
        return None
    password = found.get("api_password")
    return VenueKeys(
        SecretStr(found["api_key"]),
        SecretStr(found["api_secret"]),
        SecretStr(password) if password else None,
    )


def plan_venue(
    name: str,
    exchange: ExchangeSettings,
    settings: Settings,
    environ: Mapping[str, str] | None = None,
) -> VenuePlan:
    """Check one ``venue = "ccxt"`` exchange's settings; :class:`SettingsError` says why not."""
    where = f"exchanges.{name}"
    ccxt_id = exchange.ccxt_id or DEFAULT_CCXT_IDS.get(name)
    if ccxt_id is None:
        raise SettingsError(
            f"setting {where}.ccxt_id: required for exchange {name!r} "
            f"(one of {', '.join(SUPPORTED)})"
        )
    if exchange.mode == "live" and not exchange.live:
        raise SettingsError(
            f'setting {where}.live: mode = "live" trades real money and also needs live = true'
        )
    if exchange.live and exchange.mode != "live":
        raise SettingsError(
            f'setting {where}.mode: live = true needs mode = "live", not {exchange.mode!r}'
        )
    if ccxt_id == "binanceusdm" and exchange.mode == "testnet":
        raise SettingsError(
            f'setting {where}.mode: ccxt refuses the binance futures testnet; use "demo"'
        )
    keys = load_keys(name, settings, environ)
    needs = "_API_KEY, _API_SECRET" + (", _API_PASSWORD" if ccxt_id == "okx" else "")
    if keys is None or (ccxt_id == "okx" and keys.api_password is None):
        raise SettingsError(
            f"setting {where}: no API keys for {name} ({exchange.mode}): set PERPBOT_"
            f"{name.upper()}{{{needs}}} or [{name}] in secrets_file"
        )
    return VenuePlan(name, ccxt_id, exchange.mode, keys)


# -- ccxt exchanges that sign the request's expiry ------------------------------------


class _PinnedNonce:
    """Lets ``sign`` fix the request timestamp it computed the window from."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})  # type: ignore[call-arg]
        self._pinned = threading.local()
        self._sign_lock = threading.Lock()

    def nonce(self) -> float:
        pinned: int | None = getattr(self._pinned, "value", None)
        if pinned is not None:
            return pinned  # an int, as ccxt's own nonce: it is written into the request
        return super().nonce()  # type: ignore[misc,no-any-return]

    def _window(self, expires_ms: int) -> tuple[int, int]:
        timestamp = int(super().nonce())  # type: ignore[misc]
        window = expires_ms - timestamp
        if window <= 0:
            raise RequestExpired(f"request window gone {-window} ms before signing")
        return timestamp, window


class BinanceUsdm(_PinnedNonce, ccxt.binanceusdm):  # type: ignore[misc]
    def sign(self, path: str, api: Any = "public", method: str = "GET", params: Any = None) -> Any:
        params = {} if params is None else params
        expires = params.pop(EXPIRY_PARAM, None) if isinstance(params, dict) else None
        if expires is None:
            return super().sign(path, api, method, params)
        timestamp, window = self._window(int(expires))
        params["recvWindow"] = min(window, BINANCE_MAX_RECV_WINDOW_MS)
        self._pinned.value = timestamp
        try:
            return super().sign(path, api, method, params)
        finally:
            self._pinned.value = None


class Bybit(_PinnedNonce, ccxt.bybit):  # type: ignore[misc]
    def sign(self, path: str, api: Any = "public", method: str = "GET", params: Any = None) -> Any:
        params = {} if params is None else params
        expires = params.pop(EXPIRY_PARAM, None) if isinstance(params, dict) else None
        if expires is None:
            return super().sign(path, api, method, params)
        with self._sign_lock:  # bybit reads the window from options: one signer at a time
            timestamp, window = self._window(int(expires))
            default = self.options["recvWindow"]
            self.options["recvWindow"] = window
            self._pinned.value = timestamp
            try:
                return super().sign(path, api, method, params)
            finally:
                self.options["recvWindow"] = default
                self._pinned.value = None


class Okx(_PinnedNonce, ccxt.okx):  # type: ignore[misc]
    def sign(self, path: str, api: Any = "public", method: str = "GET", params: Any = None) -> Any:
        params = {} if params is None else params
        expires = params.pop(EXPIRY_PARAM, None) if isinstance(params, dict) else None
        if expires is None:
            return super().sign(path, api, method, params)
        self._window(int(expires))
        request = super().sign(path, api, method, params)
        request["headers"] = {**(request["headers"] or {}), "expTime": str(int(expires))}
        return request


CLASSES: dict[str, type[Any]] = {"binanceusdm": BinanceUsdm, "okx": Okx, "bybit": Bybit}


class _Silent(logging.Logger):
    """The logger our ccxt exchanges get: ccxt logs request headers (API keys) at debug
    level, so this one drops every record.  It is made directly, not by
    ``logging.getLogger``, so no logging configuration can reach it: ``dictConfig``
    (uvicorn's, at every console start) re-enables every registered logger it does
    not name."""

    def isEnabledFor(self, level: int) -> bool:
        return False

    def handle(self, record: logging.LogRecord) -> None:
        return None


_SILENT = _Silent("perpbot.ccxt.silenced")


def make_exchange(ccxt_id: str, mode: str, keys: VenueKeys | None) -> Any:
    """A configured ccxt exchange for ``ccxt_id`` in ``mode`` (markets not loaded)."""
    config: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": REQUEST_TIMEOUT_MS,
        "options": {
            "maxRetriesOnFailure": 0,
            "defaultType": "swap",
            "defaultSubType": "linear",
            "adjustForTimeDifference": False,
        },
    }
    if keys is not None:
        config["apiKey"] = keys.api_key.get_secret_value()
        config["secret"] = keys.api_secret.get_secret_value()
        if keys.api_password is not None:
            config["password"] = keys.api_password.get_secret_value()
    if ccxt_id == "okx":  # one order per request: its answer and its error are its own
        config["options"]["createOrder"] = "privatePostTradeOrder"
    exchange = CLASSES[ccxt_id](config)
    exchange.logger = _SILENT
    if mode != "live":
        if ccxt_id == "okx" or (ccxt_id == "bybit" and mode == "testnet"):
            exchange.set_sandbox_mode(True)
        else:  # binance demo, bybit demo
            exchange.enable_demo_trading(True)
    return exchange
