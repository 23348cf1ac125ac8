"""ccxt leaves the thread's decimal context changed: every call into it runs in a copy.

ccxt's number formatting (``ccxt.base.decimal_to_precision``, behind
``amount_to_precision``, ``price_to_precision`` and the order calls) sets the
calling thread's decimal context, an ``Underflow`` trap and ``ROUND_HALF_UP``
rounding, and never puts it back.  In a worker or a feed that trades through
ccxt, every Decimal computed afterwards in that thread (fills, fees, PnL, the
strategies' edges) would round differently from the engine's everywhere else,
and an underflow would raise.  :func:`keeps_decimal_context` runs a method in a
copy of the context (``decimal.localcontext``) that is dropped on return.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import localcontext
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def keeps_decimal_context(method: Callable[P, R]) -> Callable[P, R]:
    """``method`` run in a copy of the caller's decimal context."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with localcontext():
            return method(*args, **kwargs)

    return call
