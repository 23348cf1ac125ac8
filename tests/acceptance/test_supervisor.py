"""The daemon's supervisor with stand-in workers (a sleeping Python process each)."""

from __future__ import annotations

import os
import signal
import sys

from perpbot_db.runtime import daemon
from tests.builders import wait_for


class Sleepers(daemon.Supervisor):
    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(600)"]


def test_a_worker_that_died_before_the_stop_does_not_count_as_a_failed_stop() -> None:
    """The kill test's flake: a worker SIGKILLed and waiting for its restart when SIGTERM
    came made `perpbot run` exit 1 with its old -9."""
    sup = Sleepers(2, dict(os.environ), stop_timeout_s=60)
    sup.start()
    try:
        sup.children[0].process.send_signal(signal.SIGKILL)
        assert wait_for(lambda: sup.children[0].process.poll() is not None)
        codes = sup.stop()
    finally:
        for child in sup.children.values():
            if child.process.poll() is None:
                child.process.kill()
    assert codes == {0: None, 1: 0}  # 1 met SIGTERM before any handler: a clean stop
