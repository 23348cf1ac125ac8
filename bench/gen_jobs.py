"""Write N valid two-leg hedge jobs as JSON lines (seeded, reproducible).

python bench/gen_jobs.py 100000 > /tmp/jobs.jsonl
"""

from __future__ import annotations

import json
import random
import sys

EXCHANGES = ("binance", "okx", "bybit")
SYMBOLS = {"BTC/USDT:USDT": 97_000.0, "ETH/USDT:USDT": 3_100.0, "SOL/USDT:USDT": 160.0}
STRATEGIES = ("volume", "arb", "funding_arb")


def job(i: int, rng: random.Random, run: str) -> dict[str, object]:
    symbol, price = rng.choice(list(SYMBOLS.items()))
    buy, sell = rng.sample(EXCHANGES, 2)
    notional = round(rng.uniform(500, 5_000), 2)
    qty = round(notional / price, 6) or 0.000001
    edge = round(rng.uniform(0.2, 25), 2)
    return {
        "strategy": rng.choice(STRATEGIES),
        "symbol": symbol,
        "notional_usd": notional,
        "expected_edge_bps": edge,
        "expected_pnl_usd": round(notional * edge / 10_000, 4),
        "legs": [
            {"exchange": buy, "side": "buy", "quantity": qty},
            {"exchange": sell, "side": "sell", "quantity": qty},
        ],
        "idempotency_key": f"{run}-{i}",
        "metadata": {"source": "bench", "seq": i},
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    run = sys.argv[3] if len(sys.argv) > 3 else f"bench{seed}"
    rng = random.Random(seed)
    out = sys.stdout
    for i in range(count):
        out.write(json.dumps(job(i, rng, run)) + "\n")


if __name__ == "__main__":
    main()
