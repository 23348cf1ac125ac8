"""A ccxt adapter from the settings: plan (checks and keys), exchange, symbol lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Engine

from perpbot_db.domain.clock import Clock
from perpbot_db.settings import Settings
from perpbot_db.store.legs import leg_symbols
from workers.venues.ccxt_adapter import CcxtAdapter
from workers.venues.ccxt_venues import make_exchange, plan_venue


def ccxt_adapter(
    name: str,
    engine: Engine,
    settings: Settings,
    *,
    clock: Clock,
    environ: Mapping[str, str] | None = None,
) -> CcxtAdapter:
    """The adapter for ``[exchanges.NAME]`` with ``venue = "ccxt"`` (markets load on first use)."""
    plan = plan_venue(name, settings.exchanges[name], settings, environ)

    def symbol_of(ids: Sequence[str]) -> dict[str, str]:
        with engine.connect() as conn:
            return leg_symbols(conn, ids)

    exchange = make_exchange(plan.ccxt_id, plan.mode, plan.keys)
    return CcxtAdapter(name, exchange, clock=clock, symbol_of=symbol_of, secrets=plan.keys.values())
