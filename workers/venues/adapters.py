"""The venue behind each configured exchange: the paper exchange unless told otherwise.

``venue = "ccxt"`` on an exchange puts a real venue (demo, testnet or live)
behind it; its settings and keys are checked before anything starts
(:func:`workers.venues.ccxt_venues.plan_venue`), so a wrong one refuses to
start with a line naming the setting.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine

from perpbot_db.domain.clock import Clock, WallClock
from perpbot_db.settings import Settings
from workers.venues.exchange import ExchangeAdapter
from workers.venues.paper import PaperConfig, PaperExchange


def paper_config(settings: Settings, faults: Mapping[str, str] | None = None) -> PaperConfig:
    return PaperConfig(**settings.paper.model_dump(), faults=dict(faults or {}))


def build_adapters(
    engine: Engine,
    settings: Settings,
    *,
    faults: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
) -> dict[str, ExchangeAdapter]:
    """One adapter per configured exchange: paper, or ccxt where ``venue = "ccxt"``.

    Raises :class:`perpbot_db.settings.SettingsError` when a ccxt exchange may not start."""
    config = paper_config(settings, faults)
    adapters: dict[str, ExchangeAdapter] = {}
    for name in sorted(settings.exchanges):
        if settings.exchanges[name].venue == "ccxt":
            from workers.venues.ccxt_build import ccxt_adapter  # ccxt loads only when used

            adapters[name] = ccxt_adapter(
                name, engine, settings, environ=environ, clock=clock or WallClock()
            )
        else:
            adapters[name] = PaperExchange(name, engine, config)
    return adapters
