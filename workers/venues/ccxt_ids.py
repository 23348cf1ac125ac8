"""The worker's client order ids as each venue's own client order id field.

The worker names every order itself (:func:`perpbot_db.domain.execution.client_order_id`:
``pb1234L0A1``, letters and digits, at most 32 characters) and stores the id
before sending, so the id a venue sees must follow from it and lead back to it
without a table that could be lost with the process.  Every worker id is
already valid on the three venues, so the mapping is the identity, checked:
an id a venue would refuse, or worse truncate or rewrite, is refused here
before anything is sent.  The identity is deterministic, trivially reversible
and injective, which a hash into a shorter alphabet could not promise.

Each venue's rule (its API documentation):

* binance USDⓈ-M ``newClientOrderId``: ``^[.A-Z:/a-z0-9_-]{1,36}$``;
* okx ``clOrdId``: case-sensitive letters and digits, 1-32 characters;
* bybit ``orderLinkId``: letters, digits, ``-`` and ``_``, 1-36 characters.

ccxt must never invent one: the adapter always passes the field, and ccxt
only generates an id (with its broker prefix) when the field is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientIdRule:
    """One venue's client order id field and what it accepts."""

    field: str
    pattern: re.Pattern[str]
    max_length: int

    def problem(self, client_order_id: str) -> str | None:
        if len(client_order_id) > self.max_length or not self.pattern.fullmatch(client_order_id):
            return (
                f"client order id {client_order_id!r} is not a valid {self.field} "
                f"(at most {self.max_length} of {self.pattern.pattern})"
            )
        return None


RULES: dict[str, ClientIdRule] = {
    "binanceusdm": ClientIdRule("newClientOrderId", re.compile(r"[.A-Z:/a-z0-9_-]{1,36}"), 36),
    "okx": ClientIdRule("clOrdId", re.compile(r"[A-Za-z0-9]{1,32}"), 32),
    "bybit": ClientIdRule("orderLinkId", re.compile(r"[A-Za-z0-9_-]{1,36}"), 36),
}


def rule_for(ccxt_id: str) -> ClientIdRule:
    try:
        return RULES[ccxt_id]
    except KeyError:
        raise ValueError(f"no client order id rule for ccxt exchange {ccxt_id!r}") from None


def venue_client_id(ccxt_id: str, client_order_id: str) -> str:
    """The id sent to the venue for the worker's ``client_order_id``; ``ValueError``
    (naming the venue's field) when that venue cannot carry it unchanged."""
    problem = rule_for(ccxt_id).problem(client_order_id)
    if problem is not None:
        raise ValueError(problem)
    return client_order_id


def worker_client_id(ccxt_id: str, venue_id: str) -> str:
    """The inverse of :func:`venue_client_id` (the worker's id for a venue's)."""
    return venue_client_id(ccxt_id, venue_id)
