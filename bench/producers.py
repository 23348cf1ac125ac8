"""Benchmark one producers' pass: ``ProducerService.plan`` with the snapshots and the
state handed over, as ``perpbot simulate`` calls it every step.

    python bench/producers.py                        # 20 symbols x 4 venues, 2,000 passes
    python bench/producers.py --steps 5000 --label after
    python bench/producers.py --word-skips           # every skip's reason worded in the pass

The paper market of ``perpbot simulate`` (:func:`perpbot_db.services.simulate.paper_market`)
over the four exchanges of bench/simulate.py (equity 1,000,000 each) is stepped a virtual
second at a time; each step runs ``_inputs`` and ``_decide`` (``plan`` given the rows and
an empty :class:`~perpbot_db.services.producers.ProducerState`, nothing read from a
database).  Two markets: ``calm`` (no symbol ever turns fast: the usual case) and
``default`` (the feed's regime knobs: fast markets come and go).  Reported: median, p95
and mean milliseconds per pass, the split between ``_inputs`` and ``_decide``, and a
sha256 over every pass's bodies and skips (json-dumped): a change that only makes the
pass cheaper leaves it as it was.  A skip's reason is worded when it is first read (the
simulation never reads them; ``perpbot produce --once`` prints them): the digest reads
them after the timed pass, ``--word-skips`` reads them all inside it (what a caller that
shows every reason pays).  Times are the thread's CPU time (``time.thread_time``:
the machine is shared, and a loaded one stretches wall time), the wall time beside it.
Results are merged into bench/results/producers.json under ``--label``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine

from perpbot_db.domain.clock import VirtualClock
from perpbot_db.domain.strategies.base import Output
from perpbot_db.services.producers import ProducerService, ProducerState
from perpbot_db.services.simulate import DEFAULT_START, paper_market
from perpbot_db.settings import Settings, load_settings
from perpbot_db.store import producers as store

HERE = Path(__file__).resolve().parent
EXCHANGES = ("binance", "okx", "bybit", "gate")
CONFIG = "\n".join(f"[exchanges.{name}]\nequity_usd = 1000000\n" for name in EXCHANGES)


def _settings(calm: bool) -> Settings:
    home = Path(tempfile.mkdtemp(prefix="perpbot-bench-producers-"))
    config = home / "perpbot.toml"
    config.write_text(CONFIG + ("\n[feed]\nfast_per_hour = 0\n" if calm else ""))
    os.environ["PERPBOT_CONFIG"] = str(config)
    return load_settings()


def _state(settings: Settings, now: datetime) -> ProducerState:
    """No job yet: the accounts of the settings, nothing else (what a fresh run reads)."""
    accounts = [
        store.Account(name, e.equity_usd, e.single_job_cap, False)
        for name, e in sorted(settings.exchanges.items())
    ]
    return ProducerState(
        day=now.astimezone(UTC).date(),
        accounts=accounts,
        days=[],
        openings=[],
        in_flight=0,
        residuals=[],
        rounds=[],
        arbitrage=[],
    )


def _digest(h: Any, outputs: list[Output]) -> None:
    for out in outputs:
        h.update(out.strategy.value.encode())
        for body in out.bodies:
            h.update(json.dumps(body).encode())
        for skip in out.skips:
            h.update(f"{skip.symbol}\x1f{skip.reason}\n".encode())


def one(calm: bool, steps: int, symbols: int, seed: int, word: bool = False) -> dict[str, Any]:
    settings = _settings(calm)
    source = paper_market(settings, EXCHANGES, seed=seed, symbols=symbols)
    service = ProducerService(cast(Engine, None), settings, VirtualClock(DEFAULT_START))
    state = _state(settings, DEFAULT_START)
    latest: dict[tuple[str, str], Any] = {}
    inputs_ms: list[float] = []
    decide_ms: list[float] = []
    plan_ms: list[float] = []
    wall_ms: list[float] = []
    bodies = skips = 0
    h = hashlib.sha256()
    gc.collect()
    for i in range(steps):
        now = DEFAULT_START + timedelta(seconds=i)
        for snap in source.poll(now):
            latest[(snap.exchange, snap.symbol)] = snap
        rows = [latest[k] for k in sorted(latest)]  # HeldMarket.rows()
        w0, t0 = time.perf_counter(), time.thread_time()
        inputs = service._inputs(now, rows, state)
        t1 = time.thread_time()
        outputs = service._decide(inputs, now)
        if word:
            for out in outputs:
                for skip in out.skips:
                    skip.reason  # noqa: B018 - worded now, inside the timed pass
        t2, w2 = time.thread_time(), time.perf_counter()
        inputs_ms.append((t1 - t0) * 1000)
        decide_ms.append((t2 - t1) * 1000)
        plan_ms.append((t2 - t0) * 1000)
        wall_ms.append((w2 - w0) * 1000)
        bodies += sum(len(o.bodies) for o in outputs)
        skips += sum(len(o.skips) for o in outputs)
        _digest(h, outputs)
    plan_ms.sort()
    wall_ms.sort()
    return {
        "market": "calm" if calm else "default",
        "skips_worded_in_pass": word,
        "passes": steps,
        "snapshots_per_pass": symbols * len(EXCHANGES),
        "pass_ms_median": round(statistics.median(plan_ms), 4),
        "pass_ms_p95": round(plan_ms[int(0.95 * (len(plan_ms) - 1))], 4),
        "pass_ms_mean": round(statistics.fmean(plan_ms), 4),
        "pass_wall_ms_median": round(statistics.median(wall_ms), 4),
        "pass_wall_ms_p95": round(wall_ms[int(0.95 * (len(wall_ms) - 1))], 4),
        "inputs_ms_median": round(statistics.median(inputs_ms), 4),
        "decide_ms_median": round(statistics.median(decide_ms), 4),
        "bodies": bodies,
        "skips": skips,
        "outputs_sha256": h.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--label", default="current", help="Key of this run in the results.")
    parser.add_argument(
        "--word-skips", action="store_true", help="Word every skip's reason inside the pass."
    )
    args = parser.parse_args()
    runs = [
        one(calm, args.steps, args.symbols, args.seed, args.word_skips) for calm in (True, False)
    ]
    result = {"steps": args.steps, "symbols": args.symbols, "seed": args.seed, "runs": runs}
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "producers.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved[args.label] = result
    out.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
