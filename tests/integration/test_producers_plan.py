"""The producers' read of what to close costs what is open, not the history (EXPLAIN).

100,000 finished jobs: 40,000 completed openings (volume, funding_arb, arb) each with
a completed close, 20,000 closes lost on the way, half of it all archived; then five
openings still open (two with a lost close, one with a close on its way).  The read
(:func:`perpbot_db.store.producers.openings_to_close`) must give what the full read it
replaced gives, reach every job, leg and close by index and examine a few rows per open
pair, never the finished ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from perpbot_db.store import producers

PAIRS = 40_000
LOST = 20_000

#: The statement before migration 0016: every opening and close of the history, grouped.
FULL_READ = """
    WITH closes AS (
        SELECT strategy, metadata->>'opens' AS opens,
               count(*) FILTER (
                   WHERE status IN ('failed', 'rejected', 'cancelled', 'expired')
               ) AS failed,
               bool_or(status IN ('pending', 'admitted', 'running', 'completed')) AS held
        FROM hedge_jobs_all
        WHERE metadata->>'phase' = 'close' AND strategy IN ('volume', 'funding_arb', 'arb')
        GROUP BY strategy, metadata->>'opens'
    )
    SELECT j.strategy, j.idempotency_key, j.symbol, l.exchange,
           sum(CASE l.side WHEN 'buy' THEN l.filled_quantity ELSE -l.filled_quantity END),
           j.metadata->>'close_after', coalesce(max(c.failed), 0)
    FROM hedge_jobs_all j
    JOIN legs_all l ON l.job_id = j.id
    LEFT JOIN closes c ON c.strategy = j.strategy AND c.opens = j.idempotency_key
    WHERE j.strategy IN ('volume', 'funding_arb', 'arb') AND j.status = 'completed'
      AND j.metadata->>'phase' = 'open' AND j.idempotency_key IS NOT NULL
      AND (j.strategy <> 'volume' OR j.idempotency_key LIKE 'vol:open:%')
      AND NOT coalesce(c.held, false)
    GROUP BY j.id, j.strategy, j.idempotency_key, j.symbol, l.exchange,
             j.metadata->>'close_after'
    ORDER BY j.id, l.exchange
"""

# an opening of strategy s with key k, n its number (for its legs' order ids)
_OPENINGS = """
    WITH j AS (
        INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd, status,
                                admitted_at, started_at, finished_at, attempts,
                                idempotency_key, metadata)
        SELECT s.strategy, 'BTC/USDT:USDT', 970, 1940, 'completed', now(), now(), now(), 1,
               s.key,
               jsonb_build_object('phase', 'open', 'close_after', '2026-12-01T00:00:00+00:00')
        FROM (SELECT g,
                     (ARRAY['volume', 'funding_arb', 'arb'])[1 + g % 3] AS strategy,
                     CASE g % 3 WHEN 0 THEN 'vol:open:' ELSE 'pair:' END || :tag || g AS key
              FROM generate_series(1, :n) g) s
        RETURNING id, idempotency_key
    )
    INSERT INTO legs (job_id, leg_index, exchange, symbol, side, quantity, client_order_id,
                      status, filled_quantity, avg_price)
    SELECT id, k, (ARRAY['binance', 'okx'])[k + 1], 'BTC/USDT:USDT',
           (ARRAY['buy', 'sell'])[k + 1], 0.01, 'pb' || id || 'L' || k || 'A1', 'filled', 0.01,
           97000
    FROM j CROSS JOIN generate_series(0, 1) k
"""

# a close of each opening whose key matches :like, with status :status and key suffix :suffix
_CLOSES = """
    INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd, status,
                            deadline, finished_at, idempotency_key, metadata)
    SELECT strategy, symbol, 970, 1940, :status, now() + interval '1 h',
           CASE WHEN :status = 'pending' THEN NULL ELSE now() END,
           idempotency_key || :suffix,
           jsonb_build_object('phase', 'close', 'opens', idempotency_key)
    FROM hedge_jobs
    WHERE metadata->>'phase' = 'open' AND idempotency_key LIKE :like
    ORDER BY id LIMIT :n
"""


def _plan(conn: Connection, sql: str) -> dict[str, Any]:
    (document,) = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalars()
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _examined(nodes: list[dict[str, Any]]) -> int:
    return sum(
        n["Actual Rows"] * n.get("Actual Loops", 1)
        + n.get("Rows Removed by Filter", 0) * n.get("Actual Loops", 1)
        + n.get("Rows Removed by Index Recheck", 0)
        for n in nodes
    )


HISTORY = {"hedge_jobs", "hedge_jobs_archive", "legs", "legs_archive"}


@pytest.fixture
def history(engine: Engine) -> Engine:
    with engine.begin() as conn:
        # the history: every opening closed, the first LOST of them after a lost close
        conn.execute(text(_OPENINGS), {"n": PAIRS, "tag": "H"})
        conn.execute(
            text(_CLOSES), {"status": "failed", "suffix": ":close", "like": "%:H%", "n": LOST}
        )
        conn.execute(
            text(_CLOSES),
            {"status": "completed", "suffix": ":close:ok", "like": "%:H%", "n": PAIRS},
        )
        # half of it archived, as the archive moves finished jobs (no trigger fires)
        conn.execute(
            text(
                """
                WITH moved AS (SELECT id FROM hedge_jobs ORDER BY id LIMIT 50000),
                jobs AS (
                    INSERT INTO hedge_jobs_archive
                    SELECT * FROM hedge_jobs WHERE id IN (SELECT id FROM moved)
                )
                INSERT INTO legs_archive SELECT * FROM legs
                WHERE job_id IN (SELECT id FROM moved)
                """
            )
        )
        conn.execute(text("DELETE FROM legs WHERE job_id IN (SELECT id FROM hedge_jobs_archive)"))
        conn.execute(text("DELETE FROM hedge_jobs WHERE id IN (SELECT id FROM hedge_jobs_archive)"))
        # five still open: #1 and #2 lost a close, #3 (a volume pair) has one on its way
        conn.execute(text(_OPENINGS), {"n": 5, "tag": "X"})
        for like, status in (("%:X1", "expired"), ("%:X2", "rejected"), ("%:X3", "pending")):
            conn.execute(
                text(_CLOSES), {"status": status, "suffix": ":close", "like": like, "n": 1}
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("hedge_jobs", "hedge_jobs_archive", "legs", "legs_archive", "open_pairs"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    return engine


def test_openings_to_close_reads_the_open_pairs_not_the_finished_history(
    history: Engine,
) -> None:
    with history.connect() as conn:
        finished = conn.execute(
            text("SELECT count(*) FROM hedge_jobs_all WHERE finished_at IS NOT NULL")
        ).scalar_one()
        assert finished >= 100_000
        assert conn.execute(text("SELECT count(*) FROM open_pairs")).scalar_one() == 5

        rows = producers.openings_to_close(conn)
        assert [tuple(r) for r in conn.execute(text(FULL_READ))] == [
            (r.strategy, r.idempotency_key, r.symbol, r.exchange, r.net_quantity,
             r.close_after, r.failed_closes)
            for r in rows
        ]  # fmt: skip
        # #3 has a close on its way: left out; #1 and #2 lost one; #4 and #5 never closed
        failed = {r.idempotency_key: r.failed_closes for r in rows}
        assert failed == {"pair:X1": 1, "pair:X2": 1, "pair:X4": 0, "pair:X5": 0}, failed
        assert len(rows) == 8  # two legs each

        plan = _plan(conn, producers._OPENINGS_TO_CLOSE.text)
        nodes = [n for n in _nodes(plan) if n.get("Relation Name") in HISTORY]
        assert nodes and "Seq Scan" not in {n["Node Type"] for n in nodes}, nodes
        # a few rows per open pair (the opening, its legs, its closes), in both tables
        assert _examined(nodes) <= 100, _examined(nodes)

        old = [n for n in _nodes(_plan(conn, FULL_READ)) if n.get("Relation Name") in HISTORY]
        assert _examined(old) > finished  # what the full read examined: the history


def _insert_job(conn: Connection, key: str, status: str, metadata: str, **more: str) -> int:
    strategy = more.get("strategy", "funding_arb")
    return int(
        conn.execute(
            text(
                "INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd, "
                "status, deadline, finished_at, idempotency_key, metadata) VALUES (:strategy, "
                "'BTC/USDT:USDT', 100, 200, :status, now() + interval '1 h', "
                "CASE WHEN :status IN ('completed', 'failed') THEN now() END, :key, "
                "CAST(:metadata AS jsonb)) RETURNING id"
            ),
            {"strategy": strategy, "status": status, "key": key, "metadata": metadata},
        ).scalar_one()
    )


def _complete(conn: Connection, job_id: int) -> None:
    conn.execute(
        text("UPDATE hedge_jobs SET status = 'completed', finished_at = now() WHERE id = :j"),
        {"j": job_id},
    )


def _open_pairs(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT idempotency_key FROM open_pairs")).scalars())


def test_open_pairs_are_filled_from_history_then_follow_every_completion(
    empty_db_url: Any,
) -> None:
    from perpbot_db.runtime import migrate
    from perpbot_db.runtime.db import engine_for

    opening = '{"phase": "open"}'

    def close_of(key: str) -> str:
        return f'{{"phase": "close", "opens": "{key}"}}'

    engine = engine_for(empty_db_url)
    try:
        migrate.upgrade(engine, "0015")
        with engine.begin() as conn:
            _insert_job(conn, "a", "completed", opening)  # closed: not open
            _insert_job(conn, "a:close", "completed", close_of("a"))
            _insert_job(conn, "b", "completed", opening)  # its close was lost: open
            _insert_job(conn, "b:close", "failed", close_of("b"))
            c = _insert_job(conn, "c", "pending", opening)  # not completed yet
            _insert_job(conn, "d", "completed", '{"source": "cli"}')  # not a producer pair
            _insert_job(conn, "vol:x", "completed", opening, strategy="volume")  # not one
            _insert_job(conn, "vol:open:e", "completed", opening, strategy="volume")
        migrate.upgrade(engine)
        assert _open_pairs(engine) == {"b", "vol:open:e"}
        with engine.begin() as conn:
            _complete(conn, c)  # an opening completes: added
            close = _insert_job(conn, "b:close:1", "pending", close_of("b"))
        assert _open_pairs(engine) == {"b", "c", "vol:open:e"}
        with engine.begin() as conn:
            _complete(conn, close)  # its close completes: removed
            # a close of another strategy's pair with the same key removes nothing
            _insert_job(conn, "e:close", "completed", close_of("vol:open:e"), strategy="arb")
        assert _open_pairs(engine) == {"c", "vol:open:e"}
        with engine.begin() as conn:  # a close inserted completed (as a test or import would)
            _insert_job(
                conn, "vol:open:e:close", "completed", close_of("vol:open:e"), strategy="volume"
            )
        assert _open_pairs(engine) == {"c"}
    finally:
        engine.dispose()


#: The counts before migration 0017: every job of the history, grouped.
FULL_COUNTS = """
    SELECT strategy, symbol,
           count(*) FILTER (WHERE status IN ('pending', 'admitted', 'running')) AS in_flight
    FROM hedge_jobs_all WHERE strategy IN ('arb', 'funding_arb')
    GROUP BY strategy, symbol
    HAVING count(*) FILTER (WHERE status IN ('pending', 'admitted', 'running')) > 0
    ORDER BY strategy, symbol
"""


def test_the_producers_counts_read_what_is_in_flight_not_the_history(history: Engine) -> None:
    with history.begin() as conn:
        for key, status, strategy in (
            ("arb:1", "pending", "arb"),
            ("arb:2", "pending", "arb"),
            ("rebal:BTC:0", "failed", "hedge_rebalance"),
            ("rebal:BTC:1", "pending", "hedge_rebalance"),
        ):
            _insert_job(conn, key, status, '{"phase": "open"}', strategy=strategy)
    with history.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE hedge_jobs"))
    with history.connect() as conn:
        arbitrage = producers.arbitrage_by_symbol(conn)
        assert sorted((a.strategy, a.symbol, a.in_flight) for a in arbitrage) == [
            tuple(r) for r in conn.execute(text(FULL_COUNTS))
        ]
        assert {(a.strategy, a.in_flight) for a in arbitrage} == {("arb", 2)}
        assert producers.volume_openings_in_flight(conn) == 0  # #3's close is not an opening
        rounds = producers.rebalance_rounds(conn)
        assert [(r.symbol, r.jobs, r.in_flight) for r in rounds] == [("BTC/USDT:USDT", 2, 1)]
        for statement in (
            producers._ARBITRAGE_BY_SYMBOL,
            producers._VOLUME_OPENINGS_IN_FLIGHT,
            producers._REBALANCE_ROUNDS,
        ):
            nodes = [
                n for n in _nodes(_plan(conn, statement.text)) if n.get("Relation Name") in HISTORY
            ]
            assert nodes and "Seq Scan" not in {n["Node Type"] for n in nodes}, nodes
            assert _examined(nodes) <= 20, (statement.text, _examined(nodes))


def test_what_to_close_is_read_from_open_pairs_before_any_pair_opened(engine: Engine) -> None:
    """No pair has opened yet (``open_pairs`` empty, never changed) while the history
    grows: the read starts from ``open_pairs``, not from a scan of every job."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hedge_jobs (strategy, symbol, notional_usd, expected_volume_usd, "
                "status, deadline, finished_at, idempotency_key, metadata) "
                "SELECT 'volume', 'BTC/USDT:USDT', 100, 200, 'completed', now(), now(), "
                "'vol:open:' || g, jsonb_build_object('phase', 'close', 'opens', 'x' || g) "
                "FROM generate_series(1, 20000) g"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE hedge_jobs"))  # what autovacuum does to the history
    with engine.connect() as conn:
        assert producers.openings_to_close(conn) == []
        nodes = [
            n
            for n in _nodes(_plan(conn, producers._OPENINGS_TO_CLOSE.text))
            if n.get("Relation Name") in HISTORY
        ]
        assert "Seq Scan" not in {n["Node Type"] for n in nodes}, nodes
        assert _examined(nodes) == 0
