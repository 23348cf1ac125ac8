"""Who may change things: the bearer token, compared in constant time, and a limit on
failed attempts per client.

* No token configured (``PERPBOT_API_TOKEN`` unset): the API is read-only; a change is
  refused with 403 and says so.
* A change without the right token: 401, counted against the client; after
  ``max_failures`` failures within ``window_s`` the client gets 429 with
  ``Retry-After`` until the window has passed, even with the right token (so a token
  cannot be guessed at speed).  Every failure is audited by the caller (a control
  event naming the client and the path, never what was sent).

:class:`FailureLimiter` takes the clock as a parameter: it is tested directly.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import SecretStr


class Verdict(StrEnum):
    ALLOWED = "allowed"
    READ_ONLY = "read_only"  # no token configured
    MISSING = "missing"  # no credentials sent
    WRONG = "wrong"  # credentials that do not match
    LIMITED = "limited"  # too many failures from this client


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    retry_after_s: int = 0  # with LIMITED

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


class FailureLimiter:
    """Failed attempts per client in a sliding window (thread-safe)."""

    def __init__(self, *, max_failures: int, window_s: float, max_clients: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        seen = self._failures.get(client)
        if seen is None:
            if len(self._failures) >= self.max_clients:  # bounded memory: forget the idlest
                oldest = min(self._failures, key=lambda c: self._failures[c][-1])
                del self._failures[oldest]
            seen = self._failures[client] = deque()
        while seen and seen[0] <= now - self.window_s:
            seen.popleft()
        return seen

    def retry_after(self, client: str, now: float) -> int:
        """Seconds until ``client`` may try again (0: it may now)."""
        with self._lock:
            if client not in self._failures:
                return 0
            seen = self._recent(client, now)
            if len(seen) < self.max_failures:
                return 0
            return max(1, math.ceil(seen[-self.max_failures] + self.window_s - now))

    def fail(self, client: str, now: float) -> None:
        with self._lock:
            self._recent(client, now).append(now)


class TokenGuard:
    """The one place a presented credential is judged."""

    def __init__(self, token: SecretStr | None, limiter: FailureLimiter) -> None:
        self._token = None if token is None else token.get_secret_value().encode()
        self.limiter = limiter

    @property
    def read_only(self) -> bool:
        return self._token is None

    def check(self, client: str, presented: str | None, now: float) -> Check:
        if self._token is None:
            return Check(Verdict.READ_ONLY)
        wait = self.limiter.retry_after(client, now)
        if wait:
            return Check(Verdict.LIMITED, wait)
        if not presented:
            self.limiter.fail(client, now)
            return Check(Verdict.MISSING)
        if not hmac.compare_digest(presented.encode(), self._token):
            self.limiter.fail(client, now)
            return Check(Verdict.WRONG)
        return Check(Verdict.ALLOWED)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: none sent)."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class SessionStore:
    """The browser's sessions: a random id (the cookie) for a token presented once.

    In memory, per process, each with an expiry; the cookie never holds the token and
    the store never sees it.  Bounded: past ``max_sessions`` the oldest is dropped.
    Thread-safe; the clock is a parameter (tested directly).
    """

    def __init__(self, *, ttl_s: float, max_sessions: int = 1000) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s: {ttl_s!r} must be above 0")
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self, now: float) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            for sid in [s for s, until in self._expiry.items() if until <= now]:
                del self._expiry[sid]
            while len(self._expiry) >= self.max_sessions:
                del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
            self._expiry[session] = now + self.ttl_s
        return session

    def valid(self, session: str | None, now: float) -> bool:
        if not session:
            return False
        with self._lock:
            until = self._expiry.get(session)
            if until is None:
                return False
            if until <= now:
                del self._expiry[session]
                return False
            return True

    def close(self, session: str | None) -> None:
        if session:
            with self._lock:
                self._expiry.pop(session, None)


def same_origin(host: str | None, origin: str | None, referer: str | None) -> bool:
    """A cookie's request came from our own page: the Origin (or else the Referer) names
    the host the request was sent to.  Neither sent (a same-origin GET, some clients):
    allowed, since SameSite=Strict already kept the cookie off cross-site requests."""
    source = origin if origin and origin != "null" else referer
    if not source:
        return origin != "null"
    return bool(host) and urlsplit(source).netloc.lower() == (host or "").lower()
