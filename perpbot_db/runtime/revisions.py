"""The schema revision this perpbot needs, read without Alembic.

Alembic costs a read command most of a second to import; the head is simply the
revision in ``migrations/versions`` that no other revises.  A test proves this
agrees with Alembic's own answer.
"""

from __future__ import annotations

import re
from pathlib import Path

import migrations

VERSIONS_DIR = Path(migrations.__file__).parent / "versions"

_REVISION = re.compile(r'^revision(?:\s*:\s*[^=]+)?\s*=\s*["\']([^"\']+)["\']', re.MULTILINE)
_DOWN = re.compile(r"^down_revision(?:\s*:\s*[^=]+)?\s*=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r'["\']([^"\']+)["\']')


def head_revision(versions: Path = VERSIONS_DIR) -> str:
    """The one revision nothing revises (ValueError if there is not exactly one)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found is None:
            continue
        revisions.add(found.group(1))
        down = _DOWN.search(text)
        if down is not None:
            revised.update(_QUOTED.findall(down.group(1)))
    heads = sorted(revisions - revised)
    if len(heads) != 1:
        raise ValueError(f"migrations under {versions} have {len(heads)} heads: {heads}")
    return heads[0]


def behind_message(current: str | None, head: str) -> str | None:
    """None when the schema is at head, else the one-line hint to upgrade it."""
    if current == head:
        return None
    return (
        f"database schema is at revision {current or 'none'}, this perpbot needs {head}: "
        "run `perpbot db upgrade`"
    )
