"""The layout is the architecture: the domain is pure and every layer is a package.

import-linter (``lint-imports``, run in CI) enforces which layer may import which;
these tests check what it cannot see: that no domain module reads a clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import perpbot_db

PACKAGE = Path(perpbot_db.__file__).parent
# domain/clock.py is the one module whose job is the clock: its WallClock is what the
# processes inject; the domain's decisions take ``now`` and never call it.  Subpackages
# (domain/strategies/) are held to the same rule.
DOMAIN = sorted(p for p in (PACKAGE / "domain").rglob("*.py") if p.name != "clock.py")
CLOCKS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}


def clock_reads(source: str) -> list[str]:
    """Calls like ``datetime.now()``, ``date.today()`` or ``time.monotonic()``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            if node.func.attr in CLOCKS and name in {"datetime", "date", "time"}:
                found.append(f"line {node.lineno}: {name}.{node.func.attr}()")
    return found


def test_the_clock_check_finds_a_clock_read() -> None:
    assert clock_reads("import time\nx = time.monotonic()\n") == ["line 2: time.monotonic()"]
    assert clock_reads("from datetime import datetime\nd = datetime.now(UTC)\n") == [
        "line 2: datetime.now()"
    ]
    assert clock_reads("def f(now):\n    return now\n") == []


@pytest.mark.parametrize("module", DOMAIN, ids=lambda p: p.stem)
def test_domain_module_never_reads_the_clock(module: Path) -> None:
    assert clock_reads(module.read_text()) == [], f"{module.name} reads the clock: pass `now` in"


def test_every_layer_is_a_package_with_its_role_written_down() -> None:
    for layer in ("domain", "store", "services", "runtime", "cli"):
        init = PACKAGE / layer / "__init__.py"
        assert init.exists(), layer
        assert ast.get_docstring(ast.parse(init.read_text())), f"{layer} has no docstring"
    assert {p.stem for p in DOMAIN} >= {"lifecycle", "decisions", "risk", "capital", "admission"}
