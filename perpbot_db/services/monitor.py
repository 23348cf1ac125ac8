"""The monitoring state: one read model that the console, ``perpbot status`` and ``/metrics`` serve.

For the engineers who build on it.  :func:`build_state` reads the database in one
read-only snapshot (every statement under a ``statement_timeout``, none counting
over history: :mod:`perpbot_db.store.monitor`) and returns a
:class:`MonitoringState`, a frozen pydantic model; :class:`StateCache` builds it at
most once per interval and hands the same object to every caller, so twenty
browser tabs and a Prometheus scrape cost one build a second, not twenty-one.

Use: ``cache = StateCache(state_builder(pool.connection, MonitorConfig.from_settings(s)),
interval_s=1.0)`` once per process, then ``cache.get()`` from any thread (it raises
:class:`StateUnavailable` with the reason while the database cannot answer;
``cache.last_good()`` is the previous state, whose ``built_at`` says how old it
is).  A one-off reader (``perpbot status``) calls ``build_state(conn, config)``.
Running jobs beyond the first page: :func:`running_page` with ``jobs.running_next``.

Serialise with ``state.to_json()`` / ``state.to_dict()`` (or FastAPI's
``response_model=MonitoringState``: it serialises by alias): money is a decimal
*string* (``"1234.50000000"``, never a float), times are ISO 8601 in UTC, ages are
float seconds.  The JSON, ``"version": 1``::

    version     1 (a breaking change to the shape bumps it)
    built_at    the database clock the snapshot was read at; build_ms: how long it took
    global      status (running | paused | halted | manual_override), risk_mode, day (UTC),
                volume_usd, fees_usd, realized_pnl_usd, jobs_completed, jobs_failed (today),
                daily_loss_limit_usd, loss_used_usd, loss_used_ratio, halt_reason,
                override {active, by, at, reason}
    capital[]   per exchange: equity_usd, tiers[] {tier, share, budget_usd, used_usd,
                available_usd} for volume / arbitrage / reserve, reserve_usd (the reserve
                tier's budget), inflight_usd (all active reservations), inflight_limit_usd,
                single_job_limit_usd, max_inflight_notional_usd, active_jobs, breaches[]
    exchanges[] name, enabled, safe_mode, safe_mode_reason, safe_mode_until, latency_ms (worst
                snapshot), latency_hard_ms, funding_rates {symbol: rate}, open_positions (null:
                no adapter reports positions yet), concurrent_jobs (admitted + running holding
                capital there), running_jobs, max_concurrent_jobs, consecutive_failures,
                market_age_s (newest snapshot), stale_symbols[], today {volume_usd, fees_usd,
                realized_pnl_usd, loss_used_usd, jobs_completed, jobs_failed}
    jobs        pending, admitted, running (live counts), completed_today, failed_today,
                running_jobs[] (oldest start first: id, strategy, symbol, notional_usd,
                worker_id, attempt, started_at, age_s, lease_expires_at, override_by, legs[]),
                running_next (a cursor {started_at, id} for :func:`running_page`; null: the
                list holds every running job)
    risk        mode, halted, halt_reason, override, consecutive_failures,
                max_consecutive_failures, exchange_failures {name: n}, fast_markets[],
                delayed_exchanges[], locks[] (active protection locks: scope, target, code,
                reason, context, until, expires_in_s), holds[] (pending jobs by the code that
                holds them now), denials[] (rejections and expiries over the window, by code;
                an expiry also by the hold it had), failures[] (failed attempts by code),
                unhedged_ends, window_s (how much of the window the counts cover: whole
                minutes, from the minute an hour ago; less while a cache back-fills),
                events_problem, max_market_age_s, limits_problem
    market[]    exchange, symbol, bid, ask, last, funding_rate, volatility, latency_ms,
                observed_at, age_s, stale
    processes   leader (the scheduler holding the leader lock), last_tick_at, tick_age_s
                (the newest tick of any scheduler), schedulers[] {scheduler, last_tick_at,
                age_s, duration_ms, rescored, admitted, rejected, expired, skipped, ticks},
                live_workers, workers[] {id, host, pid, heartbeat_at, heartbeat_age_s,
                jobs_finished, ...}
    health      verdict (ok | degraded | down), reasons[] {code, severity, text}
                (:mod:`perpbot_db.domain.health`)

The last hour's denials and failures: every event of the hour would be read
again each second, so a cache's builder keeps whole past minutes
(:class:`EventTally`) and reads only the last few; a one-off build reads the
hour (about 2 s per million events of the hour on a loaded 2-core machine: past
the timeout, the state still builds and ``risk.events_problem`` says why).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from perpbot_db.services.monitor_build import (
    EventTally,
    MonitorConfig,
    build_state,
    running_page,
)
from perpbot_db.services.monitor_model import MonitoringState, RunningCursor
from perpbot_db.store.monitor import MonitorReadError, MonitorTimeout, ReadConnection

log = logging.getLogger("perpbot.monitor")

__all__ = [
    "EventTally",
    "MonitorConfig",
    "MonitorReadError",
    "MonitorTimeout",
    "MonitoringState",
    "RunningCursor",
    "StateCache",
    "StateUnavailable",
    "build_state",
    "running_page",
    "state_builder",
]


class StateUnavailable(Exception):
    """The state could not be built (the message says why: a timeout, the database)."""


@dataclass(frozen=True)
class _Built:
    at: float  # the cache's clock when the build started
    state: MonitoringState | None
    error: str | None


def state_builder(
    connect: Callable[[], AbstractContextManager[ReadConnection]], config: MonitorConfig
) -> Callable[[], MonitoringState]:
    """A build for :class:`StateCache`: a connection from ``connect`` (a pool's
    ``connection``, or :func:`perpbot_db.runtime.reader.reading`), one snapshot, and
    one :class:`EventTally` kept from build to build."""

    tally = EventTally(config.events_window)

    def build() -> MonitoringState:
        with connect() as conn:
            return build_state(conn, config, tally=tally)

    return build


class StateCache:
    """The state, built at most once per ``interval_s`` and shared by every caller.

    :meth:`get` returns the last state while it is younger than the interval (no
    lock, no query).  Once it is older, the next caller starts one rebuild in the
    background and every caller meanwhile gets the previous state at once (its
    ``built_at`` says how old it is): no request waits for a build, except before the
    first state exists (then N concurrent callers wait for one build), after a
    failed build, or when the last state is older than ``max_stale_s`` (nobody asked
    for a while: the first caller then waits for a fresh one rather than be shown a
    state from minutes ago; default five intervals).  A failed build is remembered
    for the interval (an unreachable database is asked once per interval, not once
    per caller): :meth:`get` raises
    :class:`StateUnavailable` with its reason, and :meth:`last_good` still offers the
    previous state.  Thread-safe; ``clock`` is injectable for tests, and
    ``background=False`` rebuilds in the caller's thread (every caller then waits).
    """

    def __init__(
        self,
        build: Callable[[], MonitoringState],
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
        max_stale_s: float | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: {interval_s!r} must be above 0")
        self._max_stale = 5 * interval_s if max_stale_s is None else max_stale_s
        if not self._max_stale >= interval_s:
            raise ValueError(f"max_stale_s: {max_stale_s!r} must be at least interval_s")
        self._build = build
        self._interval = interval_s
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._built: _Built | None = None
        self._good: MonitoringState | None = None
        self._refreshing = False
        self.builds = 0  # how many builds were started (tests and the console's own metrics)

    def _fresh(self) -> _Built | None:
        built = self._built  # one read of an immutable record: no lock needed
        if built is not None and self._clock() - built.at < self._interval:
            return built
        return None

    def get(self) -> MonitoringState:
        built = self._fresh()
        if built is None:
            built = self._stale_or_build()
        if built.state is None:
            raise StateUnavailable(built.error or "the monitoring state is unavailable")
        return built.state

    def peek(self) -> MonitoringState | None:
        """The newest state, fresh or not, without building (None: none yet)."""
        built = self._built
        return None if built is None else built.state

    def _stale_or_build(self) -> _Built:
        with self._lock:
            built = self._fresh()  # another caller may have built it while we waited
            if built is not None:
                return built
            last = self._built
            if (
                self._background
                and last is not None
                and last.state is not None
                and self._clock() - last.at < self._max_stale
            ):
                if not self._refreshing:  # one refresh at a time; callers keep the last state
                    self._refreshing = True
                    self.builds += 1
                    threading.Thread(
                        target=self._refresh, name="state-refresh", daemon=True
                    ).start()
                return last
            self.builds += 1
            return self._rebuild()

    def _refresh(self) -> None:
        try:
            self._rebuild()
        finally:
            with self._lock:
                self._refreshing = False

    def _rebuild(self) -> _Built:
        started = self._clock()
        try:
            state = self._build()
        except MonitorReadError as exc:
            log.warning("monitoring state: %s", exc)
            built = _Built(started, None, str(exc))
        except Exception as exc:
            log.exception("building the monitoring state failed")
            built = _Built(started, None, f"building the monitoring state failed: {exc}")
        else:
            built = _Built(started, state, None)
            self._good = state
        self._built = built
        return built

    def last_good(self) -> MonitoringState | None:
        """The newest state built successfully (None: none yet), without building."""
        return self._good
