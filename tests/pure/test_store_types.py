"""The typed store: what crosses its boundary is typed, column by column.

Every public statement of the entity modules takes typed parameters and returns typed
rows: no ``Any``, no SQLAlchemy ``Row``/``RowMapping`` and no column bag in a signature,
and every row type is a frozen dataclass with slots.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping
from types import ModuleType

import pytest
from sqlalchemy import Connection, Row, RowMapping

from perpbot_db.store import (
    archive,
    attempts,
    blacklist,
    control_events,
    counters,
    exchanges,
    jobs,
    locks,
    market,
    pending,
    reservations,
    risk_limits,
    system,
    ticks,
    transitions,
    workers,
)

ENTITY_MODULES = (
    archive,
    attempts,
    blacklist,
    control_events,
    counters,
    exchanges,
    jobs,
    locks,
    market,
    pending,
    reservations,
    risk_limits,
    system,
    ticks,
    transitions,
    workers,
)

UNTYPED = (typing.Any, Row, RowMapping, object)

#: A JSON object (an event's details, a decision's context) is the one ``Any`` allowed: its
#: keys are data, not columns.
JSON_OBJECTS = (dict[str, typing.Any], Mapping[str, typing.Any])


def _parts(hint: object) -> typing.Iterator[object]:
    if hint in JSON_OBJECTS:
        return
    yield hint
    for arg in typing.get_args(hint):
        yield from _parts(arg)


def _statements(module: ModuleType) -> list[tuple[str, typing.Callable[..., object]]]:
    return [
        (name, fn)
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if fn.__module__ == module.__name__ and not name.startswith("_")
    ]


def _row_types(module: ModuleType) -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls)
    ]


@pytest.mark.parametrize("module", ENTITY_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_statement_signature_is_typed_column_by_column(module: ModuleType) -> None:
    """A statement (a public function taking the connection first) is typed in and out;
    a public helper (no connection: it reads a result row into a row type, names an
    owner, renders a decision) is fully annotated and never hands back an untyped row."""
    statements = _statements(module)
    assert statements, f"{module.__name__} has no statement"
    for name, fn in statements:
        hints = typing.get_type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        assert set(params) | {"return"} == set(hints), f"{module.__name__}.{name}: unannotated"
        if hints.get(params[0]) is not Connection:  # a helper
            for part in _parts(hints["return"]):
                assert part not in UNTYPED, f"{module.__name__}.{name} returns {hints['return']}"
            continue
        for where, hint in hints.items():
            for part in _parts(hint):
                assert part not in UNTYPED, f"{module.__name__}.{name}({where}): {hint}"
            if typing.get_origin(hint) is dict and where != "return":
                raise AssertionError(f"{module.__name__}.{name}({where}): a column bag {hint}")


@pytest.mark.parametrize("module", ENTITY_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_row_types_are_frozen_with_slots_and_typed(module: ModuleType) -> None:
    for cls in _row_types(module):
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, f"{cls.__name__} is not frozen"
        assert "__slots__" in cls.__dict__, f"{cls.__name__} has no slots"
        for name, hint in typing.get_type_hints(cls).items():
            for part in _parts(hint):
                assert part not in UNTYPED, f"{cls.__name__}.{name}: {hint}"


def test_the_exchange_limits_are_spelled_once() -> None:
    """The settings sync writes and compares exactly the columns of ``ExchangeLimits``."""
    assert (
        tuple(f.name for f in dataclasses.fields(exchanges.ExchangeLimits))
        == exchanges.LIMIT_COLUMNS
    )
    upsert = exchanges._UPSERT.text
    configs = exchanges._CONFIGS.text
    for column in exchanges.LIMIT_COLUMNS:
        assert f"{column} = EXCLUDED.{column}" in upsert
        assert column in configs
