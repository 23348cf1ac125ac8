"""The store: every SQL statement, grouped by what it reads and writes.

The only code that talks to PostgreSQL: the tables (``schema``), the statements
(``queries``), status changes (``transitions``), LISTEN (``listen``) and what a lost
connection means (``reconnect``).
"""
