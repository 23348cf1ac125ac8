"""The pending jobs as the simulation holds them: read whole, filtered in Python as the
tick's candidate query filters them, and decisions stored each at its own time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import permutations

from sqlalchemy import Engine, text

from perpbot_db.domain.decisions import HELD_UNTIL_RESCORED, DecisionCode
from perpbot_db.settings import Settings
from perpbot_db.store import pending
from tests.builders import EXCHANGES, PRICES, job, submit

NOW = datetime.now(UTC)
MARKETS = [f"{e} {s}" for e in EXCHANGES for s in PRICES]
CODES = [None, *sorted(c.value for c in HELD_UNTIL_RESCORED), DecisionCode.LATENCY_HARD_LIMIT.value]
STRATEGIES = ("arb", "funding_arb", "hedge_rebalance", "volume")


def _jobs(engine: Engine, settings: Settings, rng: random.Random, n: int) -> list[int]:
    lines = []
    for i in range(n):
        buy, sell = rng.choice(list(permutations(EXCHANGES, 2)))
        strategy = rng.choice(STRATEGIES)
        lines.append(
            job(
                i,
                strategy=strategy,
                symbol=rng.choice(sorted(PRICES)),
                legs=[
                    {"exchange": buy, "side": "buy", "quantity": "0.01"},
                    {"exchange": sell, "side": "sell", "quantity": "0.01"},
                ],
            )
        )
    return submit(engine, settings, lines)


def _scramble(engine: Engine, ids: list[int], rng: random.Random) -> None:
    """Give each job a stored state the tick could have left: scored or not, held by a
    job-level code or another, forced by an operator, due now or later."""
    with engine.begin() as conn:
        for job_id in ids:
            conn.execute(
                text(
                    "UPDATE hedge_jobs SET final_score = :score, decision_code = :code, "
                    "override_by = :override, run_after = :run_after, scored_at = :scored "
                    "WHERE id = :id"
                ),
                {
                    "id": job_id,
                    "score": None if rng.random() < 0.2 else Decimal(rng.randint(0, 40)) / 4,
                    "code": rng.choice(CODES),
                    "override": "ops" if rng.random() < 0.15 else None,
                    "run_after": NOW + timedelta(seconds=rng.choice([-60, -1, 0, 1, 60])),
                    "scored": NOW - timedelta(seconds=rng.randint(0, 30)),
                },
            )


def _window(rng: random.Random) -> pending.CandidateWindow:
    markets = [m for m in MARKETS if rng.random() < 0.7]
    return pending.CandidateWindow(
        markets=markets,
        reducing_markets=[m for m in MARKETS if m not in markets and rng.random() < 0.5],
        reducing_strategies=["hedge_rebalance"],
        held_codes=sorted(c.value for c in HELD_UNTIL_RESCORED) if rng.random() < 0.8 else [],
    )


def test_is_candidate_when_windows_and_stored_states_vary_then_the_candidate_querys_answers(
    engine: Engine, settings: Settings
) -> None:
    """Held to the SQL it copies: the same jobs, in the same order once sorted as the
    query sorts, over 60 random windows and stored states."""
    rng = random.Random(13)
    ids = _jobs(engine, settings, rng, 40)
    for round_ in range(6):
        _scramble(engine, ids, rng)
        with engine.connect() as conn:
            facts = pending.pending_facts(conn)
            for _ in range(10):
                window = _window(rng)
                by_sql = pending.select_candidates(conn, now=NOW, limit=1000, window=window)
                by_python = sorted(
                    (f.job for f in facts if pending.is_candidate(f, now=NOW, window=window)),
                    key=lambda j: (-(j.final_score or 0), j.id),
                )
                assert [j.id for j in by_python] == [j.id for j in by_sql], round_
            conn.rollback()
    assert {f.job.id for f in facts} == set(ids)


def test_pending_facts_when_read_then_legs_deadline_and_never_scored_as_none(
    engine: Engine, settings: Settings
) -> None:
    (job_id,) = submit(engine, settings, [job(1)])
    with engine.connect() as conn:
        (facts,) = pending.pending_facts(conn)
    assert facts.job.id == job_id
    assert facts.job.exchanges == ["binance", "okx"] and facts.job.sides == ["buy", "sell"]
    assert facts.scored_at is None  # '-infinity' in the table: never scored
    assert facts.deadline > facts.run_after


def test_store_decisions_when_each_has_its_time_then_each_is_scored_at_it(
    engine: Engine, settings: Settings
) -> None:
    first, second = submit(engine, settings, [job(1), job(2)])
    earlier = NOW - timedelta(seconds=7)
    with engine.begin() as conn:
        written = pending.store_decisions(
            conn,
            now=NOW,
            decisions=[
                pending.StoredDecision(first, Decimal("1.5"), "latency_hard_limit", "{}", earlier),
                pending.StoredDecision(second, None, "spread_hard_limit", '{"a": 1}'),
            ],
        )
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                text("SELECT id, scored_at, final_score, decision_code FROM hedge_jobs")
            )
        }
    assert written == 2
    assert rows[first] == (earlier, Decimal("1.5"), "latency_hard_limit")
    assert rows[second][1:] == (None, "spread_hard_limit")  # no score: none stored before
    assert rows[second][0] > earlier  # the statement's now
