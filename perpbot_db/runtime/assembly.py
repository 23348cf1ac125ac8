"""The daemon's parts, built the one way ``perpbot run`` and ``perpbot demo`` both use.

Each function builds a service without starting it and without printing: the
commands decide what to say and when to start.  Heavy imports stay inside the
functions, so importing this module costs nothing.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from perpbot_db.settings import Settings
from perpbot_db.store import reconnect

if TYPE_CHECKING:
    from perpbot_db.runtime.scheduler import SchedulerService
    from perpbot_db.services.feeds import FeedService
    from perpbot_db.services.producers import ProducerService
    from workers.recovery import Recovery
    from workers.venues.exchange import ExchangeAdapter


def conninfo(engine: Engine) -> str:
    """The engine's database as a libpq URL (the scheduler's LISTEN connection)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def scheduler_service(
    engine: Engine,
    settings: Settings,
    adapters: dict[str, ExchangeAdapter],
    outage: reconnect.Outage,
    stop: threading.Event,
) -> tuple[SchedulerService, Recovery]:
    """The scheduler with the leader's maintenance: recovery first, then protection
    expiry, then the archive (a failing archive delays nothing)."""
    from perpbot_db.runtime.scheduler import SchedulerService
    from perpbot_db.services import archive, protect
    from workers.recovery import Recovery

    recovery = Recovery(engine, settings, adapters, outage=outage, stop=stop)

    def maintenance() -> None:
        recovery.run_once()
        protect.expire_once(engine)
        archive.archive_finished(
            engine, after_s=settings.archive_after_s, batch=settings.archive_batch
        )

    service = SchedulerService(
        engine, settings, conninfo(engine), maintenance=maintenance, outage=outage
    )
    return service, recovery


def feed_service(
    engine: Engine, settings: Settings, outage: reconnect.Outage, stop: threading.Event
) -> FeedService | None:
    """The market feed of ``[feed]`` on the wall clock, or None when ``feed.kind`` is
    "none" (or ``stop`` was set while the database was away)."""
    if settings.feed.kind == "none":
        return None
    from perpbot_db.domain.clock import WallClock
    from perpbot_db.services import feeds

    try:
        return reconnect.Reconnect(outage, stop=stop).call(
            lambda: feeds.from_settings(engine, settings, clock=WallClock(), outage=outage)
        )
    except reconnect.Stopped:
        return None


def producer_service(
    engine: Engine, settings: Settings, outage: reconnect.Outage, identity: str
) -> ProducerService | None:
    """The strategies' producers on the wall clock, or None when no strategy is enabled.
    Their passes run only while this process (``identity``) holds the producers' lock:
    one process of the cluster produces (``perpbot run`` or ``perpbot produce``), a
    standby takes over at its next pass, and a stopped one gives the lock up."""
    if not settings.strategies.any_enabled:
        return None
    from perpbot_db.domain.clock import WallClock
    from perpbot_db.runtime.leader import Leader
    from perpbot_db.services.producers import ProducerService
    from perpbot_db.store import locks

    leader = Leader(engine, f"{identity}:producers", lock=locks.PRODUCERS_LOCK)
    return ProducerService(
        engine,
        settings,
        WallClock(),
        outage=outage,
        leads=leader.is_leader,
        resign=leader.resign,
    )
