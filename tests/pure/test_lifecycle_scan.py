"""No status changes anywhere else: only perpbot_db/store/transitions.py writes a job's or
the system's status, or a job event.

Scans the SQL text of the whole code base (every string in ``perpbot_db`` and
``workers``, f-strings and concatenations included) for statements that set
``hedge_jobs.status`` or ``system_state.status``, create a job, or write a
``job_events`` row, and fails naming the file and line of each.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("perpbot_db", "workers")
THE_ONE_MODULE = Path("perpbot_db/store/transitions.py")

_TABLES = r"(?:hedge_jobs|system_state)\b"
_UPDATE = re.compile(
    rf"\bUPDATE\s+{_TABLES}(?:\s+(?:AS\s+)?\w+)?\s+SET\b(?P<set>.*?)(?:\bFROM\b|\bWHERE\b|\bRETURNING\b|$)",
    re.IGNORECASE | re.DOTALL,
)
_SETS_STATUS = re.compile(r"(?<![\w.])status\s*=", re.IGNORECASE)
_INSERT = re.compile(rf"\bINSERT\s+INTO\s+(?:{_TABLES}|job_events\b)", re.IGNORECASE)
_CORE = re.compile(r"\b(?:update|insert)\(\s*(?:HedgeJob|SystemState|JobEvent)\b")


def _text(node: ast.AST) -> str | None:
    """The text of a string expression: a literal, an f-string (values as ``{}``) or a
    concatenation of those; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) or "{}" for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return "{}"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None or right is not None:
            return (left or "{}") + (right or "{}")
    return None


def status_writes(source: str) -> Iterator[tuple[int, str]]:
    """``(line, statement start)`` of every status write in a module's source."""
    tree = ast.parse(source)
    seen: set[int] = set()
    for node in ast.walk(tree):
        sql = _text(node)
        if sql is None or id(node) in seen:
            continue
        for child in ast.walk(node):  # a concatenation is checked whole, not its parts again
            seen.add(id(child))
        for match in _UPDATE.finditer(sql):
            if _SETS_STATUS.search(match.group("set")):
                yield node.lineno, " ".join(match.group(0).split())[:80]
        for match in _INSERT.finditer(sql):
            yield node.lineno, " ".join(match.group(0).split())
    for n, line in enumerate(source.splitlines(), 1):
        if _CORE.search(line):
            yield n, line.strip()


def test_no_status_changes_outside_the_transitions_module() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == THE_ONE_MODULE:
                continue
            found += [f"{relative}:{n}: {what}" for n, what in status_writes(path.read_text())]
    assert not found, (
        "a status changes outside perpbot_db/store/transitions.py (build it there, from "
        "the edge tables of perpbot_db/domain/lifecycle.py):\n" + "\n".join(found)
    )


def test_the_one_module_does_write_every_status() -> None:
    """The scan sees the statements it is meant to find (so an empty result means something)."""
    writes = [what for _, what in status_writes((ROOT / THE_ONE_MODULE).read_text())]
    assert any(w.lower().startswith("insert into hedge_jobs") for w in writes)
    assert any(w.lower().startswith("insert into job_events") for w in writes)
    assert sum(w.lower().startswith("update hedge_jobs") for w in writes) >= 4  # expire, move,
    assert any(w.lower().startswith("update system_state") for w in writes)  # claim, finish


def test_the_scan_finds_every_shape_of_a_status_write() -> None:
    source = '''
from sqlalchemy import text
A = text("UPDATE hedge_jobs SET updated_at = now(), status = 'failed' WHERE id = :id")
B = text(f"UPDATE hedge_jobs j SET status = {X} FROM u WHERE j.id = u.id")
C = "UPDATE system_state " + "SET halt_reason = NULL, status = :s"
D = text("""
    WITH x AS (SELECT 1)
    INSERT INTO job_events (job_id, to_status) SELECT 1, 'pending'
""")
E = text("INSERT INTO hedge_jobs (strategy) VALUES ('arb')")
F = update(HedgeJob).values(status="pending")
'''
    assert sorted(n for n, _ in status_writes(source)) == [3, 4, 5, 6, 10, 11]


def test_the_scan_leaves_other_statements_alone() -> None:
    source = """
A = "UPDATE legs l SET status = 'sent' WHERE l.status = 'pending'"
B = "UPDATE capital_reservations SET status = 'released' WHERE status = 'active'"
C = "UPDATE hedge_jobs SET final_score = 1, decision_code = 'x' WHERE status = 'pending'"
D = "UPDATE hedge_jobs j SET worker_id = :w FROM p WHERE j.status = 'running'"
E = "INSERT INTO hedge_jobs_archive SELECT * FROM hedge_jobs WHERE status = 'completed'"
F = "UPDATE hedge_jobs SET run_after = CASE WHEN u.to_status = 'pending' THEN now() END"
"""
    assert list(status_writes(source)) == []
