"""Schema upgrades (Alembic) and bringing ``exchanges`` and ``risk_limits`` in line
with the settings.

Only ``perpbot db upgrade`` and a daemon's start (``perpbot run``) call
:func:`sync_exchanges` and :func:`sync_risk_limits`; commands that read never
write.  Every change they make is a ``control_events`` row naming the settings
file it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

import migrations
from perpbot_db.runtime import revisions
from perpbot_db.services import risk_limits
from perpbot_db.settings import ExchangeSettings, Settings
from perpbot_db.store import control_events, exchanges
from perpbot_db.store.exchanges import LIMIT_COLUMNS, ExchangeConfig, ExchangeLimits

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


@dataclass(frozen=True)
class ExchangeChange:
    """What a sync does to one exchange; each is one ``control_events`` row."""

    exchange: str
    action: str  # exchange_added | exchange_enabled | exchange_disabled | exchange_updated
    changes: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def reason(self, source: str) -> str:
        if self.action == "exchange_added":
            return f"{self.exchange} added: configured in {source}"
        if self.action == "exchange_disabled":
            return f"{self.exchange} disabled: not configured in {source}"
        diff = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in self.changes.items())
        if self.action == "exchange_enabled":
            return f"{self.exchange} enabled again: configured in {source}" + (
                f" ({diff})" if diff else ""
            )
        equity = " (tracked equity reset)" if "starting_equity_usd" in self.changes else ""
        return f"{self.exchange} settings changed in {source}: {diff}{equity}"

    def summary(self) -> str:
        word = self.action.removeprefix("exchange_")
        return f"{self.exchange} {word}" + (
            f" ({', '.join(self.changes)})" if self.changes and word != "added" else ""
        )


@dataclass(frozen=True)
class SyncReport:
    source: str  # the settings file, or "environment only"
    changes: tuple[ExchangeChange, ...] = ()
    skipped: str | None = None  # why the table was left as it is


def settings_source(settings: Settings) -> str:
    """Where the exchanges came from, for the audit trail."""
    if settings.config is None:
        return "environment only (no settings file)"
    return str(Path(settings.config).expanduser().resolve())


def no_exchange_reason(settings: Settings) -> str:
    """One line saying which settings were read and that they name no exchange."""
    if settings.config is not None:
        return f"settings file {settings_source(settings)} names no exchange ([exchanges.NAME])"
    return (
        "no settings file found (PERPBOT_CONFIG is unset and there is no perpbot.toml in "
        f"{Path.cwd()}) and no PERPBOT_EXCHANGES__* variable: no exchange configured"
    )


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def limits_of(ex: ExchangeSettings) -> ExchangeLimits:
    """An exchange's settings as the columns the sync writes."""
    return ExchangeLimits(
        starting_equity_usd=ex.equity_usd,
        volume_share=ex.volume_share,
        arbitrage_share=ex.arbitrage_share,
        reserve_share=ex.reserve_share,
        single_job_cap=ex.single_job_cap,
        inflight_cap=ex.inflight_cap,
        max_concurrent_jobs=ex.max_concurrent_jobs,
        max_inflight_notional_usd=ex.max_inflight_notional_usd,
    )


def plan_sync(
    rows: Mapping[str, ExchangeConfig], configured: Mapping[str, ExchangeSettings]
) -> list[ExchangeChange]:
    """The changes that bring ``rows`` (name -> stored exchange) in line with ``configured``."""
    plan: list[ExchangeChange] = []
    for name, ex in sorted(configured.items()):
        row = rows.get(name)
        if row is None:
            plan.append(ExchangeChange(name, "exchange_added"))
            continue
        wanted = limits_of(ex).rounded()
        diff: dict[str, tuple[str | None, str | None]] = {}
        for key in LIMIT_COLUMNS:
            have, want = getattr(row.limits, key), getattr(wanted, key)
            if have is None or want is None:
                same = have is None and want is None
            else:
                same = Decimal(str(have)) == Decimal(str(want))
            if not same:
                diff[key] = (_text(have), _text(want))
        if not row.enabled:
            plan.append(ExchangeChange(name, "exchange_enabled", diff))
        elif diff:
            plan.append(ExchangeChange(name, "exchange_updated", diff))
    plan += [
        ExchangeChange(name, "exchange_disabled")
        for name, row in sorted(rows.items())
        if row.enabled and name not in configured
    ]
    return plan


def sync_exchanges(
    engine: Engine, settings: Settings, *, actor: str = "perpbot", command: str = "db upgrade"
) -> SyncReport:
    """Bring ``exchanges`` in line with the settings, one audited control event per change.

    New exchanges are inserted, changed limits updated, unlisted ones disabled (never
    deleted).  ``equity_usd`` is set from the settings when an exchange is new or when
    its configured starting equity changed; otherwise the tracked equity is kept.  With
    no exchange configured at all nothing is touched: an empty or missing settings file
    is a mistake, not an order to disable every exchange.
    """
    source = settings_source(settings)
    if not settings.exchanges:
        return SyncReport(source, skipped=no_exchange_reason(settings))
    with engine.begin() as conn:
        exchanges.sync_lock(conn)
        rows = {row.name: row for row in exchanges.configs(conn)}
        plan = plan_sync(rows, settings.exchanges)
        touched = {c.exchange for c in plan if c.action != "exchange_disabled"}
        exchanges.upsert_enabled(
            conn,
            [
                (name, limits_of(ex))
                for name, ex in sorted(settings.exchanges.items())
                if name in touched
            ],
        )
        exchanges.disable_unlisted(conn, sorted(settings.exchanges))
        for change in plan:
            control_events.insert(
                conn,
                actor=actor,
                action=change.action,
                reason=change.reason(source),
                details=json.dumps(
                    {
                        "exchange": change.exchange,
                        "source": source,
                        "command": command,
                        "changes": {k: list(v) for k, v in change.changes.items()},
                    }
                ),
            )
    return SyncReport(source, tuple(plan))


def schema_behind(engine: Engine) -> str | None:
    """None when the schema is at head, else the one-line hint to upgrade it."""
    return revisions.behind_message(current_revision(engine), head_revision())


def sync_risk_limits(
    engine: Engine, settings: Settings, *, actor: str = "perpbot", command: str = "db upgrade"
) -> risk_limits.SyncReport:
    """Bring ``risk_limits`` in line with the settings' ``[risk.MODE]`` tables (audited)."""
    return risk_limits.sync(
        engine, settings, source=settings_source(settings), actor=actor, command=command
    )


def ensure_schema(engine: Engine, settings: Settings) -> SyncReport:
    """Upgrade to head when behind, then sync exchanges and risk limits (what ``db
    upgrade`` does)."""
    if current_revision(engine) != head_revision():
        upgrade(engine)
    report = sync_exchanges(engine, settings)
    sync_risk_limits(engine, settings)
    return report
