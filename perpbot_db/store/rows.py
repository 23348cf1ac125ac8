"""Typed rows: the column list of a statement is the fields of its row type, spelled once.

A row type is a frozen dataclass defined beside its SQL.  :func:`columns` writes its
select list, :func:`arrays` turns a batch of rows into the parallel arrays an
``unnest`` reads (one round trip for the whole batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def names(row_type: type[DataclassInstance]) -> tuple[str, ...]:
    """The row type's columns, in order."""
    return tuple(f.name for f in fields(row_type))


def columns(row_type: type[DataclassInstance], alias: str = "") -> str:
    """The select list of ``row_type`` (``alias.col, ...``)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + name for name in names(row_type))


def arrays(row_type: type[R], rows: Sequence[R], prefix: str = "") -> dict[str, list[object]]:
    """One list per column of ``row_type``, aligned over ``rows`` (for ``unnest``), each
    named ``prefix`` + its column."""
    return {prefix + name: [getattr(row, name) for row in rows] for name in names(row_type)}


def values(row: DataclassInstance) -> dict[str, object]:
    """One row's columns by name (bind parameters of a single-row statement)."""
    return {f.name: getattr(row, f.name) for f in fields(row)}
