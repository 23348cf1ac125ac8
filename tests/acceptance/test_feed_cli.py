"""``perpbot feed``: one round as a table, a running feed until SIGTERM, bad options named."""

from __future__ import annotations

import signal

from sqlalchemy import Engine, text

from tests.builders import EXCHANGES, HANG_S, Cli, Spawn, wait_for

PAPER = {"PERPBOT_FEED__KIND": "paper"}
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")


def snapshots(engine: Engine) -> dict[tuple[str, str], object]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT exchange, symbol, observed_at FROM market_snapshots"))
        return {(r.exchange, r.symbol): r.observed_at for r in rows}


def test_feed_once_writes_every_exchange_and_symbol_and_prints_the_table(
    cli: Cli, engine: Engine
) -> None:
    result = cli("feed", "--once", "--seed", "5", env=PAPER)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("|")[0].strip() == "exchange" and "volatility" in lines[0]
    assert sum(1 for line in lines if "| calm" in line or "| fast" in line) == 9
    assert f"wrote {len(EXCHANGES) * len(SYMBOLS)} snapshot(s)" in result.stdout
    assert set(snapshots(engine)) == {(e, s) for e in EXCHANGES for s in SYMBOLS}


def test_feed_with_a_bad_interval_names_the_field_and_writes_nothing(
    cli: Cli, engine: Engine
) -> None:
    result = cli("feed", "--once", "--interval", "0", env=PAPER)
    assert result.returncode == 2
    assert "--interval (feed.interval_s)" in result.stderr and "greater than 0" in result.stderr
    assert snapshots(engine) == {}


def test_feed_kind_none_refuses_naming_the_setting(cli: Cli, engine: Engine) -> None:
    result = cli("feed", "--once")  # the tests' settings say kind = "none"
    assert result.returncode == 2
    assert "feed.kind" in result.stderr
    assert snapshots(engine) == {}


def test_a_running_feed_keeps_the_market_fresh_and_stops_on_sigterm(
    spawn: Spawn, engine: Engine
) -> None:
    proc = spawn("feed", "--interval", "0.2", **PAPER)
    assert wait_for(lambda: len(snapshots(engine)) == 9)
    first = snapshots(engine)
    assert wait_for(lambda: all(at > first[k] for k, at in snapshots(engine).items()))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, stderr
    assert "feed stopped after" in stderr


def test_perpbot_run_starts_the_feed_and_stops_it_cleanly(spawn: Spawn, engine: Engine) -> None:
    proc = spawn("run", "--workers", "1", **PAPER)
    assert wait_for(lambda: len(snapshots(engine)) == 9)
    first = snapshots(engine)
    assert wait_for(lambda: all(at > first[k] for k, at in snapshots(engine).items()))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, stderr
    assert "feed (paper): 3 symbol(s) every 1 s" in stderr
