"""Schema upgrades (Alembic) and bringing ``exchanges`` in line with the settings."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

import migrations
from perpbot_db import queries
from perpbot_db.settings import Settings

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def sync_exchanges(engine: Engine, settings: Settings) -> dict[str, int]:
    """Insert configured exchanges, update their limits, disable unconfigured ones.

    ``equity_usd`` is set from the settings when an exchange is new or when its
    configured starting equity changed; otherwise the tracked equity is kept.
    """
    rows: list[dict[str, object]] = [
        {
            "name": name,
            "equity_usd": ex.equity_usd,
            "volume_share": ex.volume_share,
            "arbitrage_share": ex.arbitrage_share,
            "reserve_share": ex.reserve_share,
            "single_job_cap": ex.single_job_cap,
            "inflight_cap": ex.inflight_cap,
            "max_concurrent_jobs": ex.max_concurrent_jobs,
            "max_inflight_notional_usd": ex.max_inflight_notional_usd,
        }
        for name, ex in sorted(settings.exchanges.items())
    ]
    with engine.begin() as conn:
        upserted = queries.exchange_upsert(conn, rows)
        disabled = queries.exchange_disable_unlisted(conn, sorted(settings.exchanges))
    return {"configured": upserted, "disabled": disabled}


def ensure_schema(engine: Engine, settings: Settings) -> None:
    """Upgrade to head when behind, then sync exchanges (what ``db upgrade`` does)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
    sync_exchanges(engine, settings)
