"""The store: every SQL statement, grouped by what it reads and writes.

The only code that talks to PostgreSQL (the paper exchange's own tables aside:
``workers.venues.paper_sql``).  Statements take typed parameters and return the frozen
row types defined beside them (``rows`` derives their column lists):

* the tables: ``schema`` (the models; Alembic revisions change them);
* one module per entity: ``exchanges``, ``market``, ``system``, ``counters``,
  ``reservations``, ``blacklist``, ``jobs``, ``pending``, ``workers``,
  ``control_events``, ``archive``, ``locks`` (protection locks, the leader),
  ``risk_limits``, ``ticks`` (each scheduler's last tick);
* the worker path: ``attempts`` (a running attempt's rows, lease, fence, hand-back,
  unwinds) and ``transitions`` (every status change, from the lifecycle's edges);
* the read side, on the driver alone: ``overview`` and ``job_detail`` (the read
  commands), ``monitor`` (the monitoring state), ``metrics`` (a Prometheus scrape);
* LISTEN (``listen``) and what a lost connection means (``reconnect``).
"""
