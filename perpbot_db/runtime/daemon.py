"""``perpbot run``: the scheduler in this process, N worker processes beside it.

A worker that dies (killed, crashed) is started again; its jobs are not lost:
their leases run out and the scheduler's recovery reconciles them.  One that
keeps dying soon after its start waits longer each time (1 s doubling to 30 s),
so a broken setup does not spin; after a minute of running it starts over.
Workers ride out database outages themselves and do not die of them; they
do die with the daemon (a parent-death SIGTERM), so a daemon killed outright
leaves no worker behind waiting for a database forever.

SIGTERM or SIGINT stops the daemon cleanly: the workers get SIGTERM (stop
claiming, finish the batch in hand, exit 0), then the scheduler stops.  A
worker that does not exit within `shutdown_grace_s` gets SIGKILL — which is still
safe, for the same reason a crash is.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from perpbot_db.store.reconnect import Backoff

log = logging.getLogger("perpbot.run")

RESTART_INITIAL_S = 1.0
RESTART_CAP_S = 30.0
STABLE_AFTER_S = 60.0
PR_SET_PDEATHSIG = 1


def restart_delay(lived_s: float, backoff: Backoff) -> float:
    """Seconds before a worker that ran ``lived_s`` is started again: at once after a
    stable run (the backoff starts over), else the backoff's next delay."""
    if lived_s >= STABLE_AFTER_S:
        backoff.reset()
        return 0.0
    return backoff.next()


@dataclass
class Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self,
        workers: int,
        env: dict[str, str],
        *,
        worker_args: tuple[str, ...] = (),
        stop_timeout_s: float = 30.0,
        log_dir: Path | None = None,
    ) -> None:
        self.count = workers
        self.log_dir = log_dir  # None: the workers write to this process's stdout/stderr
        self.env = env
        self.worker_args = worker_args
        self.stop_timeout_s = stop_timeout_s
        self.children: dict[int, Child] = {}
        self.backoffs = {i: Backoff(RESTART_INITIAL_S, RESTART_CAP_S) for i in range(workers)}
        self.restarts = 0
        self.stopping = threading.Event()
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here, not after fork

    def command(self) -> list[str]:
        return [sys.executable, "-m", "perpbot_db", "worker", *self.worker_args]

    def spawn(self, index: int) -> Child:
        output = None
        if self.log_dir is not None:  # the demo's terminal view is not for worker logs
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"worker-{index}.log").open("ab")
        try:
            process = subprocess.Popen(
                self.command(),
                env=self.env,
                preexec_fn=self._die_with_us,
                stdout=output,
                stderr=output,
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy
        log.info("worker %d started (pid %d)", index, process.pid)
        child = Child(index, process)
        self.children[index] = child
        return child

    def _die_with_us(self) -> None:
        """In the child before exec: SIGTERM (stop cleanly) when this process dies.  The
        daemon forks from its main thread, which lives as long as the process."""
        self._libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def start(self) -> None:
        for index in range(self.count):
            self.spawn(index)

    def watch(self, on_restart: Callable[[int, int], None] | None = None) -> None:
        """Restart workers that exit (with backoff) until :meth:`stop` is asked for."""
        due: dict[int, float] = {}
        while not self.stopping.wait(0.2):
            for index, child in list(self.children.items()):
                if self.stopping.is_set():
                    break
                now = time.monotonic()
                if index in due:
                    if now < due[index]:
                        continue
                    del due[index]
                    self.restarts += 1
                    new = self.spawn(index)
                    if on_restart is not None:
                        on_restart(index, new.process.pid)
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                lived = now - child.started
                delay = restart_delay(lived, self.backoffs[index])
                log.warning(
                    "worker %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                    index,
                    child.process.pid,
                    code,
                    lived,
                    delay,
                )
                due[index] = now + delay

    def stop(self) -> dict[int, int | None]:
        """SIGTERM every worker, wait, SIGKILL stragglers; returns how each stopped, by
        index: its exit code, or None for one that was not running when the stop came
        (it had died and was waiting for its restart: that death was logged then, and
        is not how it stopped)."""
        self.stopping.set()
        codes: dict[int, int | None] = {}
        for index, child in self.children.items():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
            else:
                codes[index] = None
        deadline = time.monotonic() + self.stop_timeout_s
        for index, child in self.children.items():
            if index in codes:
                continue
            try:
                code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in time: SIGKILL", index)
                child.process.kill()
                code = child.process.wait()
            if code == -signal.SIGTERM:
                # Our SIGTERM met a worker still starting, before it set its handler (which
                # stops it with 0): it had claimed nothing yet, so this is a clean stop.
                log.info("worker %d stopped while it was starting", index)
                code = 0
            codes[index] = code
        return dict(sorted(codes.items()))


def child_env(database_url: str) -> dict[str, str]:
    """The workers' environment: this one, pointed at the database this daemon uses."""
    env = dict(os.environ)
    env["PERPBOT_DATABASE_URL"] = database_url
    return env
