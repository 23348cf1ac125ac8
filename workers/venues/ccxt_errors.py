"""What a ccxt exception means for the order that was being sent.

An order call can end in three ways that matter to the worker, and ccxt's
exception classes do not line up with them, so they are sorted here, in this
order (the first that matches decides):

1. **Maybe placed, duplicate id.**  The venue says it already knows the client
   order id (binance ``-4116``, okx ``51016``, bybit ``110072``).  ccxt raises
   ``InvalidOrder`` for these, which would read as "refused", yet the id *is*
   on the venue, perhaps from an earlier copy of this very request whose answer
   was lost.  The adapter answers ``None`` and the worker reconciles by id.
2. **Expired.**  The venue refused the request for arriving after its window
   (binance ``-1021``, bybit ``10002``, okx ``50102``), or the adapter found
   the window gone before signing: nothing was placed and the id is not used up.
3. **Not placed.**  ``InvalidOrder``, ``InsufficientFunds``, ``BadRequest``
   (``BadSymbol`` is one), ``AuthenticationError``: the venue looked at the
   request and refused it.  A refusal is an answer: ``rejected``.
4. **Maybe placed.**  Everything else, first of all ``RequestTimeout``,
   ``NetworkError``, ``ExchangeNotAvailable`` and ``BadResponse``: the request
   may have reached the matching engine.  The worker must ask before anything
   else, so the answer is ``None``.  An exception this module does not know is
   sorted here too: guessing "not placed" could send an order twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

import ccxt

#: The venue's code for "this client order id was used already", per ccxt id.
DUPLICATE_ID_CODES: dict[str, str] = {"binanceusdm": "-4116", "okx": "51016", "bybit": "110072"}
#: The venue's code for "this request arrived after its window".
EXPIRED_CODES: dict[str, str] = {"binanceusdm": "-1021", "okx": "50102", "bybit": "10002"}

NOT_PLACED: tuple[type[Exception], ...] = (
    ccxt.InvalidOrder,
    ccxt.InsufficientFunds,
    ccxt.BadRequest,
    ccxt.AuthenticationError,
)


class Placement(StrEnum):
    DUPLICATE = "duplicate"  # the id is on the venue: reconcile
    EXPIRED = "expired"  # refused for its window: nothing placed, id unused
    NOT_PLACED = "not_placed"  # refused: rejected
    MAYBE_PLACED = "maybe_placed"  # no answer: reconcile


class RequestExpired(ccxt.BadRequest):  # type: ignore[misc]
    """Raised by the adapter's signing when the request's window is already gone:
    nothing was sent."""


def _codes_in(message: str) -> set[str]:
    """Every number the venue's error body carries as a code (``"code":-4116``,
    ``"sCode":"51016"``, ``"retCode":110072``)."""
    found = re.findall(r'"(?:code|sCode|retCode|ret_code)"\s*:\s*"?(-?\d+)"?', message)
    return set(found)


def _has_code(exc: Exception, code: str | None) -> bool:
    return code is not None and code in _codes_in(str(exc))


def placement(ccxt_id: str, exc: Exception) -> Placement:
    """Sort an exception from an order call (see the module's note)."""
    if _has_code(exc, DUPLICATE_ID_CODES.get(ccxt_id)):
        return Placement.DUPLICATE
    if isinstance(exc, RequestExpired) or _has_code(exc, EXPIRED_CODES.get(ccxt_id)):
        return Placement.EXPIRED
    if isinstance(exc, NOT_PLACED):
        return Placement.NOT_PLACED
    return Placement.MAYBE_PLACED


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (of 4+ characters) replaced, for error texts and logs."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def describe(exc: Exception, secrets: Iterable[str], limit: int = 300) -> str:
    """A one-line, bounded, secret-free text of ``exc`` for ``OrderState.error``."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return redact(text, secrets)[:limit]
