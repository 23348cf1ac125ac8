"""Reads that end by COMMIT keep their connection's prepared statements
(``perpbot_db.store.reading``); a read that rolls back loses them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import URL, Connection, Engine, create_engine, text

from perpbot_db.store import producers
from perpbot_db.store.reading import reading

PREPARED = text("SELECT count(*) FROM pg_prepared_statements")


@pytest.fixture
def one_connection(db_url: URL) -> Iterator[Engine]:
    """One pooled connection, so every block below runs on the same session."""
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _prepared(conn: Connection) -> int:
    return int(conn.execute(PREPARED).scalar_one())


def _warm(engine: Engine) -> None:
    """Run one of the producers' reads until psycopg prepares it (its threshold is 5)."""
    for _ in range(7):
        with reading(engine) as conn:
            producers.rebalance_rounds(conn)


def test_a_read_through_reading_keeps_the_prepared_statements(one_connection: Engine) -> None:
    _warm(one_connection)
    with reading(one_connection) as conn:
        assert _prepared(conn) >= 1
    with reading(one_connection) as conn:  # the commit above kept them
        assert _prepared(conn) >= 1


def test_a_read_that_rolls_back_drops_them(one_connection: Engine) -> None:
    """Why ``reading`` commits: the same read ended the SQLAlchemy way, by rollback."""
    _warm(one_connection)
    with one_connection.connect() as conn:
        producers.rebalance_rounds(conn)
    with reading(one_connection) as conn:
        assert _prepared(conn) == 0


def test_a_read_that_raises_is_rolled_back(one_connection: Engine) -> None:
    with pytest.raises(RuntimeError), reading(one_connection) as conn:
        conn.execute(text("CREATE TABLE reading_probe (x int)"))
        raise RuntimeError("the block failed")
    with reading(one_connection) as conn:
        assert conn.execute(text("SELECT to_regclass('reading_probe')")).scalar_one() is None
