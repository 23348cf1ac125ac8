"""Getting through a database that goes away: connection loss, backoff and one log line.

Design note.  Every long-running piece of perpbot meets a lost connection the
same way: the scheduler's tick and maintenance, a worker's start, claim loop,
heartbeat and the finish of the batch in hand, and the LISTEN threads.

* :func:`is_connection_loss` says whether an exception means "the database
  cannot be reached right now" (refused, reset, terminated by an administrator,
  shutting down or starting up, out of connection slots, a pool timeout) rather
  than a refused statement or a bug.  Only those are retried quietly; anything
  else keeps its traceback.
* A process keeps one :class:`Outage`, shared by all its threads: the first
  loss logs ONE warning (``database unreachable (<reason>); retrying``) and the
  first success after it ONE info line (``database reachable again after
  12.3 s``), however many threads noticed and however often they retried.  A
  failure of an attempt that began before the database came back belongs to the
  outage that just ended and is not a new one; so does a loss within
  ``flap_s`` (30 s) of the recovery: a server that was SIGKILLed leaves
  orphaned backends that still answer for a moment, and a flapping link comes
  and goes: one warning, not one per flap.
* Each caller waits with its own :class:`Backoff` (0.5 s doubling to 5 s):
  :class:`Reconnect` for work that must get through (``call`` retries until it
  succeeds or the process is told to stop), :class:`Guard` for periodic jobs
  (a run that lost its connection makes the next runs skip until the delay
  has passed).

The clock (the outage's) and the sleep are injected, so all of it is tested
without waiting.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import exc as sa_exc

T = TypeVar("T")

#: SQLSTATEs that mean "no usable connection now": administrator or crash shutdown
#: (``pg_terminate_backend`` included), cannot connect now (starting or shutting
#: down), too many connections.  Class 08 (connection exception) counts as well.
LOSS_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: A server that refuses a new connection answers ``FATAL:`` without a SQLSTATE the
#: driver can see; these refusals pass, the others (a wrong password, no such
#: database or role, no pg_hba.conf entry) are configuration errors, not outages.
PASSING_REFUSALS = (
    "the database system is",  # starting up, shutting down, in recovery, not accepting
    "too many clients",
    "remaining connection slots",
    "terminating connection",
)

MAX_REASON = 200


def is_connection_loss(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable (worth waiting for)."""
    if isinstance(exc, sa_exc.TimeoutError):  # the pool waited in vain for a connection
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or _driver_loss(exc.orig)
    return _driver_loss(exc)


def _driver_loss(exc: BaseException | None) -> bool:
    import psycopg

    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        if state is None:
            text = str(exc)
            return "FATAL:" not in text or any(t in text for t in PASSING_REFUSALS)
        return state.startswith("08") or state in LOSS_SQLSTATES
    if isinstance(exc, psycopg.InterfaceError):
        return "closed" in str(exc)
    return False


def is_database_error(exc: BaseException) -> bool:
    """True for any error from SQLAlchemy or the driver (a command reports it in one line)."""
    import psycopg

    return isinstance(exc, sa_exc.SQLAlchemyError | psycopg.Error)


def is_conflict(exc: BaseException) -> bool:
    """True for a deadlock or a serialization failure: the statement may simply run again."""
    import psycopg.errors

    inner = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    return isinstance(inner, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure)


def describe(exc: BaseException) -> str:
    """The driver's first line of the error: no statement, no parameters, no password."""
    inner = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else type(inner).__name__
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


@dataclass
class Backoff:
    """Exponential delays: ``initial_s``, doubled each time, at most ``cap_s``."""

    initial_s: float = 0.5
    cap_s: float = 5.0
    factor: float = 2.0
    current_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.current_s = self.initial_s

    def next(self) -> float:
        delay = self.current_s
        self.current_s = min(self.cap_s, delay * self.factor)
        return delay

    def reset(self) -> None:
        self.current_s = self.initial_s


class Outage:
    """This process's view of the database: one warning when it goes, one line when back."""

    def __init__(
        self,
        log: logging.Logger | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        flap_s: float = 30.0,
    ) -> None:
        self.log = log or logging.getLogger("perpbot.db")
        self.clock = clock
        self.flap_s = flap_s
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.back_at = -math.inf
        self.count = 0
        self._quiet = False  # the current outage re-opened the last one: say nothing

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def lost(self, exc: BaseException, *, since: float | None = None) -> bool:
        """A connection loss met by an attempt that began at ``since`` (default: now).

        Returns True (and logs the one warning) when this opens a new outage."""
        with self._lock:
            if self.down_since is not None:
                return False
            if since is not None and since < self.back_at:
                return False  # began before the database came back: the last outage's
            self.down_since = self.clock()
            self._quiet = self.down_since - self.back_at < self.flap_s
            if self._quiet:
                return False  # the last outage again, moments after it seemed over
            self.count += 1
        self.log.warning("database unreachable (%s); retrying", describe(exc))
        return True

    def reachable(self) -> None:
        """Something just worked: ends the outage (one info line) if there was one."""
        if self.down_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self.down_since is None:
                return
            now = self.clock()
            took, self.down_since, self.back_at = now - self.down_since, None, now
            quiet = self._quiet
        if not quiet:
            self.log.info("database reachable again after %.1f s", took)


class Stopped(Exception):
    """The process was told to stop while waiting for the database."""


class Reconnect:
    """Work that must get through: ``call(fn)`` retries lost connections with backoff.

    Waiting stops early when ``stop`` is set; after that, retries go on for
    ``grace_s`` more seconds (plain sleeps), then :class:`Stopped` is raised.
    """

    def __init__(
        self,
        outage: Outage,
        *,
        stop: threading.Event | None = None,
        grace_s: float = 0.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.outage = outage
        self.stop = stop
        self.grace_s = grace_s
        self.backoff = backoff or Backoff()
        self.clock = outage.clock
        self.sleep = sleep

    def call(self, fn: Callable[[], T]) -> T:
        stopped_at: float | None = None
        while True:
            started = self.clock()
            try:
                result = fn()
            except Exception as exc:
                if not is_connection_loss(exc):
                    raise
                self.outage.lost(exc, since=started)
                delay = self.backoff.next()
                if self.stop is not None and self.stop.is_set():
                    stopped_at = self.clock() if stopped_at is None else stopped_at
                    if self.clock() - stopped_at >= self.grace_s:
                        raise Stopped(describe(exc)) from exc
                    self.sleep(delay)
                elif self.stop is not None:
                    self.stop.wait(delay)
                else:
                    self.sleep(delay)
                continue
            self.backoff.reset()
            self.outage.reachable()
            return result


class Guard:
    """A periodic job's way through outages.

    ``run(fn)`` returns fn's result, or None when the run was skipped (still
    backing off) or failed: a lost connection is reported to the outage and
    delays the next runs; any other exception is logged with its traceback and
    the next run simply retries.
    """

    def __init__(
        self,
        outage: Outage,
        what: str,
        *,
        log: logging.Logger | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.outage = outage
        self.what = what
        self.log = log or outage.log
        self.backoff = backoff or Backoff()
        self.clock = outage.clock
        self.next_at = -math.inf

    def run(self, fn: Callable[[], T]) -> T | None:
        started = self.clock()
        if started < self.next_at:
            return None
        try:
            result = fn()
        except Stopped:
            return None
        except Exception as exc:
            if is_connection_loss(exc):
                self.outage.lost(exc, since=started)
                self.next_at = self.clock() + self.backoff.next()
            else:
                self.log.exception("%s failed; the next run retries", self.what)
            return None
        self.backoff.reset()
        self.next_at = -math.inf
        self.outage.reachable()
        return result
