"""The store: every SQL statement, grouped by what it reads and writes.

The only code that talks to PostgreSQL: the tables (``schema``), one module per entity
(``exchanges``, ``market``, ``system``, ``counters``, ``reservations``, ``blacklist``,
``jobs``, ``pending``, ``workers``, ``control_events``, ``archive``), whose statements take
typed parameters and return the frozen row types defined beside them (``rows`` derives
their column lists), a running attempt's lease, fence and unwinds (``attempts``), status changes
(``transitions``), LISTEN (``listen``) and what a lost connection means (``reconnect``).
"""
