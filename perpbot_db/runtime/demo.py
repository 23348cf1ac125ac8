"""``perpbot demo``: the whole system on paper exchanges, in one process tree.

Design note.  The demo is ``perpbot run`` with a script around it: the same parts
(:mod:`perpbot_db.runtime.assembly`: the scheduler with recovery, the paper feed,
the producers; the worker processes under the daemon's
:class:`~perpbot_db.runtime.daemon.Supervisor`; the console), on settings written for
it (:func:`demo_toml`), plus three things that make the risk manager act where a
newcomer can see it within a minute:

* **a fast market** — :class:`RegimeScript` wraps the paper source and holds one
  symbol in its fast regime for a window of the run (the feed's thread does it,
  between two steps of the seeded market), so the tick blacklists it and holds its
  jobs with the volatility code;
* **a leg failure unwound** — the demo settings give the paper exchange a small
  reject and timeout rate (reduce-only orders are spared, so an unwind goes
  through): a job whose one leg filled and the other failed unwinds the filled one;
* **the daily loss limit** (``--scenario stress``) — a low limit
  (:data:`LOSS_LIMIT_USD`), a stressed market (thin books: fills far from the
  quotes) and a worst-case estimate per job that the stress proves optimistic
  (:data:`STRESS_ENV`): realized losses pass the limit and the protections halt
  the system.

Nothing here prints: :mod:`perpbot_db.cli.demo` shows the live view and the summary.
The summary is read back from the database (:mod:`perpbot_db.store.demo`), which
stays for SQL exploration.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import SecretStr
from sqlalchemy import Engine

from perpbot_db.runtime import assembly, daemon
from perpbot_db.services import control
from perpbot_db.services.feeds import PaperSource
from perpbot_db.settings import Settings
from perpbot_db.store import demo as store
from perpbot_db.store import reconnect, system
from perpbot_db.store.market import MarketSnapshot

if TYPE_CHECKING:
    from perpbot_db.runtime.scheduler import SchedulerService
    from perpbot_db.runtime.web import WebServer
    from perpbot_db.services.feeds import FeedService
    from perpbot_db.services.producers import ProducerService
    from workers.recovery import Recovery
    from workers.venues.exchange import ExchangeAdapter

Scenario = Literal["calm", "stress"]
SCENARIOS: Final[tuple[str, ...]] = ("calm", "stress")
ACTOR: Final = "perpbot demo"

#: The daily loss limit each scenario runs under (set in ``system_state``, audited).
LOSS_LIMIT_USD: Final[dict[str, Decimal]] = {"calm": Decimal(1000), "stress": Decimal(10)}

#: ``--scenario stress`` on top of the demo settings, as environment variables so the
#: worker processes see them too: the books are thin (the paper venues' price impact
#: is 400 bps per $100k, 20 bps on a $5k leg, which neither the strategies nor the risk
#: manager price in) and admission budgets each job's worst case at 1 bps of its
#: notional (an estimate the thin books beat), so the first jobs' losses pass the limit.
STRESS_ENV: Final[dict[str, str]] = {
    "PERPBOT_JOB_WORST_LOSS_BPS": "1",
    "PERPBOT_PAPER__IMPACT_BPS_PER_100K_USD": "400",
}


def demo_toml() -> str:
    """The settings file the demo writes when the user has none: three paper exchanges
    with equity, paper failures on, every strategy enabled, the paper feed."""
    return """\
# Written by `perpbot demo` (no settings file was found): three paper exchanges.
# Edit it, or point PERPBOT_CONFIG at your own file; the demo keeps what is here.

# a run of failed legs puts an exchange in safe mode (15 min): the demo's failures
# are on purpose, so it takes a longer run of them here
safe_mode_failures = 10

[exchanges.binance]
equity_usd = 100000

[exchanges.okx]
equity_usd = 80000

[exchanges.bybit]
equity_usd = 60000

[paper]
# a small failure rate, so a job whose one leg filled unwinds it (unwinds are spared)
reject_rate = 0.03
timeout_rate = 0.01
fail_reduce_only = false
taker_fee_bps = 1
maker_fee_bps = 0.5

[feed]
kind = "paper"
interval_s = 1
calm_gap_bps_max = 8
# a fast market slows its own symbol's quotes a little, not the whole venue's API
fast_latency_x_min = 1
fast_latency_x_max = 1.5

[risk.balanced]
min_score = 35

[strategies]
interval_s = 1

[strategies.funding_arb]
hold_h = 168
window_s = 20  # a fresh opportunity every 20 s (5 min by default): a minute shows a few

[strategies.arb]
notional_usd = 3000

[strategies.volume]
# not SOL: the demo holds SOL in a fast market for a while, and volume pairs wait for it
symbols = ["BTC/USDT:USDT", "ETH/USDT:USDT"]
min_hold_s = 2
max_hold_s = 6
max_open_pairs = 4
"""


@dataclass(frozen=True)
class DemoPlan:
    """What a run does.  ``until_*`` keep it running past ``duration_s`` until the
    condition holds (the acceptance tests' way not to depend on machine speed), never
    past ``max_s``."""

    duration_s: float = 60.0
    scenario: Scenario = "calm"
    workers: int = 3
    web: bool = True
    fast_symbol: str | None = None  # None: the feed's last symbol (SOL in the demo settings)
    fast_from: float = 0.15  # the fast market's window, as fractions of the duration
    fast_until: float = 0.6
    until_strategies: int = 0
    until_unwound: bool = False
    until_halted: bool = False
    max_s: float = 600.0


class RegimeScript:
    """A paper source whose ``symbol`` is held in its fast market between ``start`` and
    ``end`` (then calmed once); polled by the feed's thread, like the source it wraps."""

    def __init__(self, source: PaperSource, symbol: str, start: datetime, end: datetime) -> None:
        self.source = source
        self.name = source.name
        self.symbol = symbol
        self.start = start
        self.end = end
        self.calmed = False

    def poll(self, now: datetime) -> Sequence[MarketSnapshot]:
        market = self.source.market
        if self.start <= now < self.end:
            market.force_regime(self.symbol, fast=True)
        elif now >= self.end and not self.calmed:
            market.force_regime(self.symbol, fast=False)
            self.calmed = True
        return self.source.poll(now)


def session_settings(settings: Settings, *, web: bool) -> tuple[Settings, str | None]:
    """The console's settings for this run: a fresh API token (returned, to be shown
    once and never logged) and a free port if the configured one is taken."""
    if not web:
        return settings, None
    token = secrets.token_urlsafe(24)
    update: dict[str, object] = {"api_token": SecretStr(token)}
    if settings.web_port != 0 and not _port_free(settings.web_host, settings.web_port):
        update["web_port"] = 0
    return settings.model_copy(update=update), token


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def prepare(engine: Engine, plan: DemoPlan) -> datetime:
    """Set the scenario's daily loss limit, and bring a system an earlier run left
    halted (or paused) back to running: clear the halt, then pause and resume, the
    operator's way out of ``manual_override`` (each step audited).  Returns the run's
    start on the database clock."""
    reason = f"perpbot demo --scenario {plan.scenario}"
    again = f"{reason}: a new run"
    with engine.connect() as conn:
        state = system.get(conn)
    status = state.status
    if status == "halted":
        control.clear_halt(engine, actor=ACTOR, reason=again)
        status = "manual_override"
    if status == "manual_override":
        control.pause(engine, actor=ACTOR, reason=again)
        status = "paused"
    if status == "paused":
        control.resume(engine, actor=ACTOR, reason=again)
    limit = LOSS_LIMIT_USD[plan.scenario]
    if state.daily_loss_limit_usd != limit:
        control.set_daily_loss_limit(engine, limit, actor=ACTOR, reason=reason)
    with engine.connect() as conn:
        return system.db_now(conn)


@dataclass
class Progress:
    """What the run has shown so far (for ``until_*`` and the live view's header)."""

    elapsed_s: float
    strategies: list[str]
    unwound_jobs: int
    halted: bool


class Demo:
    """The running system: :meth:`start`, then :meth:`progress` each second, then
    :meth:`stop`."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        plan: DemoPlan,
        adapters: dict[str, ExchangeAdapter],
        *,
        since: datetime,
        stop: threading.Event,
        log_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.plan = plan
        self.adapters = adapters
        self.since = since
        self.stop_event = stop
        self.outage = reconnect.Outage()
        self.supervisor = daemon.Supervisor(
            plan.workers,
            daemon.child_env(engine.url.render_as_string(hide_password=False)),
            stop_timeout_s=settings.shutdown_grace_s,
            log_dir=log_dir,
        )
        self.scheduler: SchedulerService | None = None
        self.recovery: Recovery | None = None
        self.feed: FeedService | None = None
        self.producers: ProducerService | None = None
        self.console: WebServer | None = None
        self.fast_symbol: str | None = None
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Scheduler, feed (with the fast-market script), producers, workers, console."""
        self.scheduler, self.recovery = assembly.scheduler_service(
            self.engine, self.settings, self.adapters, self.outage, self.stop_event
        )
        self.scheduler.start()
        self.feed = assembly.feed_service(self.engine, self.settings, self.outage, self.stop_event)
        if self.feed is not None:
            self._script_fast_market(self.feed)
            self.feed.start()
        self.producers = assembly.producer_service(
            self.engine, self.settings, self.outage, self.scheduler.identity
        )
        if self.producers is not None:
            self.producers.start()
        self.supervisor.start()
        self._watcher = threading.Thread(target=self.supervisor.watch, name="workers", daemon=True)
        self._watcher.start()
        if self.plan.web:
            from perpbot_db.runtime.web import WebServer

            self.console = WebServer(self.engine, self.settings)
            self.console.start()

    def _script_fast_market(self, feed: FeedService) -> None:
        source = feed.sources[0]
        if not isinstance(source, PaperSource):
            return
        symbol = self.plan.fast_symbol or source.market.symbols[-1]
        start = self.since + timedelta(seconds=self.plan.duration_s * self.plan.fast_from)
        end = self.since + timedelta(seconds=self.plan.duration_s * self.plan.fast_until)
        feed.sources[0] = RegimeScript(source, symbol, start, end)
        self.fast_symbol = symbol

    def progress(self) -> Progress:
        with self.engine.connect() as conn:
            now = system.db_now(conn)
            summary = store.run_summary(conn, since=self.since)
        return Progress(
            elapsed_s=(now - self.since).total_seconds(),
            strategies=sorted(summary.completed_by_strategy),
            unwound_jobs=summary.unwound_jobs,
            halted=summary.halt_reason is not None,
        )

    def finished(self, progress: Progress) -> bool:
        """The duration has passed and every ``until_*`` condition holds."""
        plan = self.plan
        return (
            progress.elapsed_s >= plan.duration_s
            and len(progress.strategies) >= plan.until_strategies
            and (progress.unwound_jobs > 0 or not plan.until_unwound)
            and (progress.halted or not plan.until_halted)
        )

    def summary(self) -> store.RunSummary:
        with self.engine.connect() as conn:
            return store.run_summary(conn, since=self.since)

    def stop(self) -> dict[int, int | None]:
        """Stop the producers, then the workers (they finish the batch in hand), then the
        rest in the reverse order of :meth:`start`; returns the workers' exit codes."""
        if self.producers is not None:  # no new job first; the running ones finish
            self.producers.stop()
        codes = self.supervisor.stop()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self.console is not None:
            self.console.stop()
        if self.feed is not None:
            self.feed.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.recovery is not None:
            self.recovery.close()
        return codes
