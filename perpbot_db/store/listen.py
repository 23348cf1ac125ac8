"""LISTEN on a dedicated connection in a thread: NOTIFY is a wake-up hint, never the truth.

Polling stays the source of truth everywhere.  A lost connection is retried
with backoff (:mod:`perpbot_db.store.reconnect`: one log line per outage, no
traceback) while the owner keeps polling.  Each time LISTEN is (re)established
the owner is woken on every channel: what was notified before, at start or
during an outage, is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from perpbot_db.store.reconnect import Backoff, Outage, is_connection_loss

log = logging.getLogger("perpbot.listen")


class Listener:
    def __init__(
        self,
        conninfo: str,
        channels: Sequence[str],
        on_notify: Callable[[str], None],
        *,
        outage: Outage | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.outage = outage or Outage()
        self.backoff = Backoff()
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
            started = self.outage.clock()
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    for channel in self.channels:
                        conn.execute(f"LISTEN {channel}")
                    self.backoff.reset()
                    self.outage.reachable()
                    # What was notified before we listened (at start, or during an outage)
                    # is lost: the owner looks now.
                    for channel in self.channels:
                        self.on_notify(channel)
                    while not self.stopping.is_set():
                        started = self.outage.clock()
                        for note in conn.notifies(timeout=0.5, stop_after=1):
                            self.on_notify(note.channel)
            except Exception as exc:  # polling covers us meanwhile
                if is_connection_loss(exc):
                    self.outage.lost(exc, since=started)
                else:
                    log.warning("LISTEN failed; retrying", exc_info=True)
                self.stopping.wait(self.backoff.next())
