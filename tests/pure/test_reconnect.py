"""The outage/backoff helpers (pure: injected clock and sleep) and the daemon's restart delay."""

from __future__ import annotations

import logging
import threading

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import exc as sa_exc

from perpbot_db.runtime import daemon
from perpbot_db.store.reconnect import (
    Backoff,
    Guard,
    Outage,
    Reconnect,
    Stopped,
    describe,
    is_connection_loss,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def wrapped(orig: Exception) -> sa_exc.DBAPIError:
    """How SQLAlchemy hands a driver error over, with the statement and its parameters."""
    return sa_exc.DBAPIError.instance(
        "UPDATE hedge_jobs SET x = %(secret)s", {"secret": "s3cret-pw"}, orig, psycopg.Error
    )


AT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed:'
REFUSED = psycopg.OperationalError(
    'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?"
)


def test_backoff_doubles_to_its_cap_and_starts_over_after_reset() -> None:
    backoff = Backoff()
    assert [backoff.next() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (REFUSED, True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CannotConnectNow("the database system is shutting down"), True),
        (psycopg.errors.TooManyConnections("sorry, too many clients already"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (wrapped(REFUSED), True),
        (sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"), True),
        (psycopg.errors.InvalidPassword("password authentication failed"), False),
        (psycopg.OperationalError(f"{AT} FATAL:  the database system is starting up"), True),
        (psycopg.OperationalError(f"{AT} FATAL:  sorry, too many clients already"), True),
        (psycopg.OperationalError(f"{AT} FATAL:  password authentication failed"), False),
        (psycopg.OperationalError(f'{AT} FATAL:  database "nope" does not exist'), False),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (wrapped(psycopg.errors.UniqueViolation("duplicate key")), False),
        (wrapped(psycopg.errors.InvalidCatalogName('database "nope" does not exist')), False),
        (ValueError("a bug"), False),
    ],
)
def test_connection_loss_is_told_apart_from_refused_statements_and_bugs(
    error: Exception, lost: bool
) -> None:
    assert is_connection_loss(error) is lost


def test_an_error_on_a_connection_sqlalchemy_invalidated_is_a_loss() -> None:
    error = wrapped(psycopg.errors.UniqueViolation("duplicate key"))
    error.connection_invalidated = True
    assert is_connection_loss(error)


def test_reason_is_the_drivers_first_line_without_statement_or_parameters() -> None:
    reason = describe(wrapped(REFUSED))
    assert reason.startswith("connection failed: connection to server at")
    assert "\n" not in reason and "s3cret-pw" not in reason and "UPDATE" not in reason
    assert len(describe(psycopg.OperationalError("x" * 1000))) == 200


def test_an_outage_seen_by_many_threads_logs_one_warning_and_one_line_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(logging.getLogger("t.outage"), clock=clock)
    caplog.set_level(logging.INFO, logger="t.outage")
    threads = [threading.Thread(target=outage.lost, args=(REFUSED,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outage.lost(wrapped(REFUSED))
    clock.now += 12.34
    outage.reachable()
    outage.reachable()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            "WARNING",
            'database unreachable (connection failed: connection to server at "127.0.0.1", '
            "port 1 failed: Connection refused); retrying",
        ),
        ("INFO", "database reachable again after 12.3 s"),
    ]
    assert all(r.exc_info is None for r in caplog.records)
    assert outage.count == 1 and not outage.down


def test_a_failure_of_an_attempt_begun_before_the_database_came_back_is_no_new_outage() -> None:
    clock = Clock()
    outage = Outage(clock=clock)
    assert outage.lost(REFUSED)
    begun = clock.now + 1  # a slow attempt that started during the outage ...
    clock.now += 5
    outage.reachable()
    clock.now += 1
    assert not outage.lost(REFUSED, since=begun)  # ... and failed after it ended
    assert not outage.down
    clock.now += outage.flap_s
    assert outage.lost(REFUSED, since=clock.now)  # one begun well afterwards opens a new one
    assert outage.count == 2


def test_a_loss_moments_after_the_database_came_back_continues_the_outage_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(logging.getLogger("t.flap"), clock=clock)
    caplog.set_level(logging.INFO, logger="t.flap")
    assert outage.lost(REFUSED)  # the server was SIGKILLed
    clock.now += 1
    outage.reachable()  # an orphaned backend still answered once
    clock.now += 1
    assert not outage.lost(REFUSED, since=clock.now)  # then it was gone too: same outage
    assert outage.down
    clock.now += 10
    outage.reachable()  # the server is back for real
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "INFO"] and outage.count == 1


def test_reconnect_retries_lost_connections_with_backoff_until_the_call_succeeds() -> None:
    clock = Clock()
    outage = Outage(clock=clock)
    failures = [REFUSED] * 6
    calls = 0

    def work() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop()
        return "done"

    retry = Reconnect(outage, sleep=clock.sleep)
    assert retry.call(work) == "done"
    assert calls == 7
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert not outage.down and outage.count == 1
    failures.append(REFUSED)
    retry.call(work)
    assert clock.slept[-1] == 0.5, "a success starts the backoff over"


def test_reconnect_lets_other_errors_through_at_once() -> None:
    clock = Clock()
    retry = Reconnect(Outage(clock=clock), sleep=clock.sleep)

    def bug() -> None:
        raise wrapped(psycopg.errors.UniqueViolation("duplicate key"))

    with pytest.raises(sa_exc.DBAPIError):
        retry.call(bug)
    assert clock.slept == []


def test_reconnect_gives_up_once_stopped_and_the_grace_period_is_over() -> None:
    clock = Clock()
    stop = threading.Event()
    stop.set()
    retry = Reconnect(Outage(clock=clock), stop=stop, grace_s=3.0, sleep=clock.sleep)

    def down() -> None:
        raise REFUSED

    with pytest.raises(Stopped):
        retry.call(down)
    assert clock.slept == [0.5, 1.0, 2.0]  # 3.5 s after the stop: given up
    with pytest.raises(Stopped):
        Reconnect(Outage(clock=clock), stop=stop, sleep=clock.sleep).call(down)


def test_guard_skips_runs_while_backing_off_and_keeps_tracebacks_for_real_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(logging.getLogger("t.guard"), clock=clock)
    guard = Guard(outage, "tick")
    caplog.set_level(logging.INFO, logger="t.guard")
    ran: list[str] = []

    def lost() -> None:
        ran.append("lost")
        raise REFUSED

    assert guard.run(lost) is None
    assert guard.run(lambda: ran.append("skipped")) is None  # 0.5 s not yet over
    clock.now += 0.5
    assert guard.run(lost) is None
    clock.now += 0.9
    assert guard.run(lambda: ran.append("skipped")) is None  # now 1 s to wait
    clock.now += 0.1
    assert guard.run(lambda: "ok") == "ok"
    assert ran == ["lost", "lost"]

    def bug() -> None:
        raise ZeroDivisionError

    assert guard.run(bug) is None
    assert guard.run(lambda: "again") == "again"  # a bug does not back off
    messages = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages[0][0].startswith("database unreachable") and not messages[0][1]
    assert messages[1] == ("database reachable again after 1.5 s", False)
    assert messages[2] == ("tick failed; the next run retries", True)
    assert len(messages) == 3


def test_a_worker_that_keeps_dying_is_restarted_later_each_time() -> None:
    backoff = Backoff(daemon.RESTART_INITIAL_S, daemon.RESTART_CAP_S)
    quick = [daemon.restart_delay(0.3, backoff) for _ in range(7)]
    assert quick == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert daemon.restart_delay(daemon.STABLE_AFTER_S, backoff) == 0.0  # ran fine: at once
    assert daemon.restart_delay(0.3, backoff) == 1.0
