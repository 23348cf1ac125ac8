"""The ``perpbot`` command line: the application and its command modules.

Each module registers its commands on :data:`perpbot_db.cli.app.app` (or a
sub-app) when imported; the order of the imports is the order of ``--help``.
A new group of commands is one module and one line here.  The modules import
their heavy dependencies inside the commands, so ``perpbot --help`` and the read
commands start at once (``bench/cli.py`` measures it).
"""

from __future__ import annotations

from perpbot_db.cli.app import app

# The order of these imports is the order of the commands in --help.
# isort: off
from perpbot_db.cli import db
from perpbot_db.cli import jobs
from perpbot_db.cli import daemons
from perpbot_db.cli import market
from perpbot_db.cli import control
from perpbot_db.cli import risk

# isort: on

COMMAND_MODULES = (db, jobs, daemons, market, control, risk)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
