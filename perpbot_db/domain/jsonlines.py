"""Untrusted JSON lines in: bounded lines, JSON that PostgreSQL can store, a bounded report.

Design note.  ``perpbot submit`` and ``perpbot market load`` read whatever a
file or a pipe holds, so three rules keep hostile input harmless:

* **Bounded lines.**  :func:`read_lines` reads a line with a byte limit; a
  longer line becomes one :class:`Oversized` marker and the rest of it is read
  and dropped in chunks, never held whole.
* **Refused, never raised.**  :func:`loads` turns every way ``json.loads`` can
  fail (bad syntax or encoding, nesting deep enough for ``RecursionError``) into
  a :class:`FieldProblem`; numbers are ``Decimal`` (no float touches a value).
  :func:`encode_for_postgres` writes free-form JSON (a job's ``metadata``) the way
  ``jsonb`` will hold it, and refuses with the value's path what PostgreSQL would
  refuse mid-write: NUL characters and lone surrogates in strings or keys,
  NaN/Infinity, numbers beyond ``numeric``'s range, nesting deeper than
  :data:`MAX_JSON_DEPTH`.
* **Bounded report.**  :class:`ProblemReport` keeps the first problems and
  counts the rest, so memory stays flat whatever the input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring
from typing import IO, Any

#: Deepest nesting accepted in free-form JSON (``{"a": {"b": 1}}`` is depth 2).
MAX_JSON_DEPTH = 32
#: Problems a report keeps word for word; the rest are counted.
REPORT_PROBLEMS = 100
#: The longest field name a problem prints before it is cut short.
_MAX_FIELD_CHARS = 80
#: PostgreSQL ``numeric``: at most 131072 digits before the point, 16383 after.
_NUMERIC_MAX_ADJUSTED = 131_071
_NUMERIC_MAX_SCALE = 16_383
#: Characters PostgreSQL text and jsonb cannot hold (NUL) or UTF-8 cannot encode.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_DISCARD_CHUNK = 1 << 16
_CONSTANT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_DIGITS = frozenset("0123456789")
#: A number written in at most this many characters is within ``numeric``'s range.
_PLAIN_NUMBER_CHARS = 1000


@dataclass(frozen=True)
class FieldProblem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class LineProblem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class ProblemReport:
    """The first ``keep`` problems word for word, and how many there were in all."""

    keep: int = REPORT_PROBLEMS
    shown: list[LineProblem] = field(default_factory=list)
    total: int = 0
    bad_lines: int = 0

    def add(self, line: int, problems: Sequence[FieldProblem]) -> None:
        """Record one bad line's problems (a line with none is not bad)."""
        if not problems:
            return
        self.bad_lines += 1
        self.total += len(problems)
        room = self.keep - len(self.shown)
        for problem in problems[: max(room, 0)]:
            self.shown.append(LineProblem(line, problem.field, problem.message))

    @property
    def omitted(self) -> int:
        return self.total - len(self.shown)


@dataclass(frozen=True)
class Oversized:
    """A line longer than the limit: only its size is kept."""

    size: int


def read_lines(
    source: Iterable[str | bytes] | IO[bytes], limit: int
) -> Iterator[str | bytes | Oversized]:
    """Lines of ``source``, each at most ``limit`` bytes (its newline not counted).

    A binary stream is read with ``readline(limit)``, so a longer line is never
    held whole: it comes out as :class:`Oversized`.  An iterable of lines (tests,
    the library) is passed through with the same limit on each item.
    """
    if not hasattr(source, "readline"):
        for item in source:
            yield Oversized(len(item)) if len(item) > limit + 1 else item
        return
    stream: IO[bytes] = source  # type: ignore[assignment]
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = stream.readline(_DISCARD_CHUNK)
            if not line:
                break
            size += len(line)
        yield Oversized(size)


def oversized_problem(size: int, limit: int, what: str) -> FieldProblem:
    return FieldProblem(what, f"line of {size} bytes is longer than the limit of {limit} bytes")


def loads(raw: str | bytes, what: str) -> Any | FieldProblem:
    """Parse one JSON value (numbers as ``Decimal``), or the problem naming ``what``."""
    try:
        return json.loads(raw, parse_float=Decimal, parse_int=Decimal)
    except RecursionError:
        return FieldProblem(what, f"not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        return FieldProblem(what, f"not valid JSON: {exc}")


def printable(name: str) -> str:
    """A field name safe to print: control characters escaped, long names cut short."""
    if not name.isprintable():
        name = ascii(name)[1:-1]
    if len(name) > _MAX_FIELD_CHARS:
        name = name[: _MAX_FIELD_CHARS - 3] + "..."
    return name


def field_name(loc: Sequence[int | str]) -> str:
    """``("legs", 1, "quantity")`` -> ``legs[1].quantity`` (printable)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return printable(out)


class Unstorable(ValueError):
    """A value PostgreSQL would refuse; ``path`` locates it inside the encoded value."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[int | str] = []


def encode_for_postgres(value: Any) -> str:
    """Compact JSON text of ``value`` as ``jsonb`` holds it, or :class:`Unstorable`.

    Numbers (``Decimal`` from :func:`loads`) are written in positional notation,
    digit for digit, so their size counts against any byte limit as stored.
    """
    out: list[str] = []
    _encode(value, 0, out)
    return "".join(out)


def _refuse_text(text: str, what: str) -> None:
    bad = _UNSTORABLE.search(text)
    if bad is None:
        return
    if bad.group() == "\x00":
        raise Unstorable(f"{what} holds a NUL character (\\u0000), which PostgreSQL cannot store")
    code = ord(bad.group())
    raise Unstorable(f"{what} holds a lone surrogate (\\u{code:04x}): not valid Unicode")


def _number(value: Decimal) -> str:
    text = str(value)
    if "E" not in text and text[-1] in _DIGITS and len(text) <= _PLAIN_NUMBER_CHARS:
        return text  # finite, positional and short: within numeric's range (the common case)
    if not value.is_finite():
        raise Unstorable(f"{value} is not a number PostgreSQL stores")
    if value and value.adjusted() > _NUMERIC_MAX_ADJUSTED:
        raise Unstorable("number too large (PostgreSQL numeric holds up to 131072 digits)")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > _NUMERIC_MAX_SCALE:
        raise Unstorable(
            "number has too many decimal places (PostgreSQL numeric holds up to 16383)"
        )
    return format(value, "f")


def _encode(value: Any, depth: int, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        if _UNSTORABLE.search(value) is not None:
            _refuse_text(value, "string")
        out.append(encode_basestring(value))
    elif kind is Decimal:
        out.append(_number(value))
    elif value is None or kind is bool:
        out.append("null" if value is None else "true" if value else "false")
    elif kind is int:
        out.append(str(value))
    elif kind is float:  # from :func:`loads` only NaN / Infinity: its numbers are Decimal
        if not math.isfinite(value):
            raise Unstorable(f"{_CONSTANT[str(value)]} is not a number PostgreSQL stores")
        out.append(repr(value))
    elif kind is dict or kind is list:
        if depth >= MAX_JSON_DEPTH:
            raise Unstorable(f"nested deeper than {MAX_JSON_DEPTH} levels")
        _encode_container(value, depth + 1, out)
    else:
        raise Unstorable(f"{kind.__name__} is not a JSON value")


def _encode_container(value: dict[Any, Any] | list[Any], depth: int, out: list[str]) -> None:
    if isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            try:
                _encode(item, depth, out)
            except Unstorable as exc:
                exc.path.insert(0, index)
                raise
        out.append("]")
        return
    out.append("{")
    for index, (key, item) in enumerate(value.items()):
        if index:
            out.append(",")
        try:
            if not isinstance(key, str):
                raise Unstorable("key is not a string")
            if _UNSTORABLE.search(key) is not None:
                _refuse_text(key, "key")
            out.append(encode_basestring(key))
            out.append(":")
            _encode(item, depth, out)
        except Unstorable as exc:
            exc.path.insert(0, key)
            raise
    out.append("}")
