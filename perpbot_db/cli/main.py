"""The ``perpbot`` command line: the entry point and the command modules.

Each module registers its commands on :data:`perpbot_db.cli.app.app` (or a
sub-app) when imported; the order of the imports in :func:`application` is the
order of ``--help``.  A new group of commands is one module and one line there.
The modules import their heavy dependencies inside the commands, so ``perpbot
--help`` starts at once.

The read commands (``status``, ``jobs [...]``, ``job ID [--json]``) start faster
still: :func:`main` runs them without importing typer when
:func:`perpbot_db.cli.reads.parse` understands the arguments; anything else
(``--help``, a mistake, every other command) goes through typer.
``bench/cli.py`` measures both.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def application() -> typer.Typer:
    """The typer application with every command registered."""
    from perpbot_db.cli.app import app

    # The order of these imports is the order of the commands in --help.
    # isort: off
    from perpbot_db.cli import db  # noqa: F401
    from perpbot_db.cli import jobs  # noqa: F401
    from perpbot_db.cli import daemons  # noqa: F401
    from perpbot_db.cli import market  # noqa: F401
    from perpbot_db.cli import producers  # noqa: F401
    from perpbot_db.cli import feeds  # noqa: F401
    from perpbot_db.cli import control  # noqa: F401
    from perpbot_db.cli import risk  # noqa: F401
    from perpbot_db.cli import simulate  # noqa: F401

    # isort: on
    return app


def main() -> None:
    from perpbot_db.cli import reads

    parsed = reads.parse(sys.argv[1:])
    if parsed is None:
        application()()
        return
    command, kwargs = parsed
    try:
        command.run(**kwargs)
        sys.stdout.flush()
    except BrokenPipeError:  # `perpbot jobs | head`: the reader left, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
