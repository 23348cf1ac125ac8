"""``python -m perpbot_db`` is the ``perpbot`` command."""

from perpbot_db.cli.main import main

main()
