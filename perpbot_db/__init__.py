"""perpbot-db: cross-exchange perpetual-futures hedge jobs run safely from PostgreSQL."""

__version__ = "0.1.0"
