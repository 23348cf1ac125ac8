"""The venue behind each configured exchange: the paper exchange unless told otherwise."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine

from perpbot_db.settings import Settings
from workers.venues.exchange import ExchangeAdapter
from workers.venues.paper import PaperConfig, PaperExchange


def paper_config(settings: Settings, faults: Mapping[str, str] | None = None) -> PaperConfig:
    return PaperConfig(**settings.paper.model_dump(), faults=dict(faults or {}))


def build_adapters(
    engine: Engine, settings: Settings, *, faults: Mapping[str, str] | None = None
) -> dict[str, ExchangeAdapter]:
    """One adapter per configured exchange (ccxt adapters are a later, explicit opt-in)."""
    config = paper_config(settings, faults)
    return {name: PaperExchange(name, engine, config) for name in sorted(settings.exchanges)}
