"""Plain text for the read commands: aligned tables without rich (which costs an import).

A table is ``psql``'s aligned format: a header, a rule, one line per row, columns
separated by ``|``; numbers aligned right.  A cell never spans lines and never
carries a control character (a reason or a worker id read from the database is
shown, not interpreted by the terminal).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """One line of printable text: newlines become spaces, other control characters ``?``."""
    text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub("?", text)


def render(parts: Iterable[str | list[str]]) -> str:
    """Lines to print: a string is one line (cleaned), a list the lines of a :func:`table`."""
    return "\n".join(
        line for part in parts for line in ([clean(part)] if isinstance(part, str) else part)
    )


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    right: Iterable[int] = (),
) -> list[str]:
    """The lines of the rows under their headers; ``right`` lists the columns aligned right."""
    cells = [[clean(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    to_right = set(right)

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if i in to_right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return (" " + " | ".join(parts)).rstrip()

    lines = [] if title is None else [title]
    lines.append(line(headers))
    lines.append("-" + "-+-".join("-" * w for w in widths) + "-")
    lines.extend(line(row) for row in cells)
    if not cells:
        lines.append("(none)")
    return lines


def usd(value: str | None) -> str:
    """A money amount as ``1,234.50`` (``-`` when there is none)."""
    return "-" if value is None else f"{Decimal(value):,.2f}"


def quantity(value: str | None) -> str:
    """A quantity without trailing zeros (``-`` when there is none)."""
    return "-" if value is None else f"{Decimal(value).normalize():f}"


def when(value: str | None) -> str:
    """An ISO time to the second, ``2026-12-02 07:16:17`` (``-`` when there is none)."""
    return "-" if value is None else value[:19].replace("T", " ")
