"""LISTEN on a dedicated connection in a thread: NOTIFY is a wake-up hint, never the truth.

Polling stays the source of truth everywhere; a lost connection is retried
every second while the owner keeps polling.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger("perpbot.listen")


class Listener:
    def __init__(
        self, conninfo: str, channels: Sequence[str], on_notify: Callable[[str], None]
    ) -> None:
        self.conninfo = conninfo
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    for channel in self.channels:
                        conn.execute(f"LISTEN {channel}")
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=1):
                            self.on_notify(note.channel)
            except Exception:  # the database restarted: polling covers us meanwhile
                log.warning("LISTEN connection lost; retrying in 1 s", exc_info=True)
                self.stopping.wait(1.0)
