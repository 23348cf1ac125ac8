"""The console's HTTP server: in the foreground (``perpbot web``) or in a thread of the
daemon (``perpbot run``).

uvicorn serves :func:`perpbot_db.web.app.create_app` on ``web_host:web_port``
(127.0.0.1 by default: reaching it from elsewhere is a decision the operator makes in
the settings).  Its access log is off: requests are audited where they change
something, and a URL never carries a credential anyway.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from sqlalchemy import Engine

from perpbot_db.settings import Settings
from perpbot_db.web.app import create_app

log = logging.getLogger("perpbot.web")


class WebServer:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.settings = settings
        config = uvicorn.Config(
            create_app(engine, settings),
            host=settings.web_host,
            port=settings.web_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the system chose for ``web_port`` 0, once
        :attr:`started`)."""
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.web_port

    @property
    def address(self) -> str:
        return f"http://{self.settings.web_host}:{self.port}"

    def run(self) -> None:
        """Serve until stopped (SIGINT/SIGTERM in the foreground)."""
        log.info("console on %s (read-only: %s)", self.address, self.settings.api_token is None)
        self.server.run()

    def start(self, wait_s: float = 30.0) -> None:
        """Serve in a thread (the daemon's); returns once it listens (or gave up: a port
        in use is logged by uvicorn, and the daemon runs on without its console)."""
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + wait_s
        while not self.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.started:
            log.warning("the console is not listening on %s yet", self.address)

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
