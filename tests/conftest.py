"""Test databases: one PostgreSQL per run, a migrated template, a fresh clone per test.

``PERPBOT_TEST_DATABASE_URL`` (a role that may CREATE DATABASE) selects an
external server, e.g. Debian's PostgreSQL 15 in CI; otherwise each pytest
process (xdist worker) starts its own embedded PostgreSQL 18 in a temporary
directory with durability off.  Each worker migrates its own template
database once; every test that writes gets ``CREATE DATABASE ... TEMPLATE``,
so tests never see each other's rows and run safely under ``pytest -n``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy import URL, Engine, create_engine, make_url, text

from perpbot_db.runtime import embedded, migrate
from perpbot_db.runtime.db import engine_for
from perpbot_db.services import tick
from perpbot_db.settings import Settings, load_settings
from tests.builders import HANG_S, PERPBOT, Cli, MarketFeed, Spawn, config, job, put_market, submit

TEST_TOML = """
[exchanges.binance]
equity_usd = 50000
[exchanges.okx]
equity_usd = 40000
max_concurrent_jobs = 3
[exchanges.bybit]
equity_usd = 30000
# The tests write the market they need (tests/builders.py): `perpbot run` starts no feed.
[feed]
kind = "none"
"""


# No test depends on the machine's speed, hypothesis included: no per-example
# deadline, and no "input generation is slow" health check (a loaded 2-core
# machine generates slowly; that says nothing about the code).
hypothesis_settings.register_profile(
    "any-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("any-machine")

#: The tiers are folders.  A pure test touches no database, an integration test
#: starts no process of ours; acceptance tests run real processes and are ``slow``.
DATABASE_FIXTURES = frozenset(
    {"admin_url", "template_db", "db_url", "empty_db_url", "engine", "settings", "fast"}
    | {"cli_env", "cli", "spawn", "market_feed", "admitted_job"}
)
PROCESS_FIXTURES = frozenset({"cli", "spawn"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier not in {"pure", "integration", "acceptance"}:
            misplaced.append(f"{item.nodeid}: not in a tier (tests/pure, integration, acceptance)")
            continue
        item.add_marker(tier)
        if tier == "acceptance":
            item.add_marker(pytest.mark.slow)
        params = set(getattr(getattr(item, "callspec", None), "params", {}))
        uses = set(getattr(item, "fixturenames", ())) - params
        if tier == "pure" and uses & DATABASE_FIXTURES:
            misplaced.append(f"{item.nodeid}: a pure test uses {sorted(uses & DATABASE_FIXTURES)}")
        if tier == "integration" and uses & PROCESS_FIXTURES:
            misplaced.append(
                f"{item.nodeid}: an integration test runs {sorted(uses & PROCESS_FIXTURES)}"
            )
    if misplaced:
        raise pytest.UsageError("tests in the wrong tier:\n" + "\n".join(misplaced))


def pytest_configure(config: pytest.Config) -> None:
    # A developer's own PERPBOT_* settings must not leak into the tests.
    for name in list(os.environ):
        if name.startswith("PERPBOT_") and name != "PERPBOT_TEST_DATABASE_URL":
            del os.environ[name]


@pytest.fixture(scope="session")
def worker_name(request: pytest.FixtureRequest) -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("config") / "perpbot.toml"
    path.write_text(TEST_TOML)
    os.environ["PERPBOT_CONFIG"] = str(path)
    yield path
    os.environ.pop("PERPBOT_CONFIG", None)


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    external = os.environ.get("PERPBOT_TEST_DATABASE_URL")
    if external:
        yield make_url(external).set(drivername="postgresql+psycopg")
        return
    # Not under pytest's basetemp: a concurrent pytest run prunes old basetemps,
    # which would delete the data directory under a running server.
    home = Path(tempfile.mkdtemp(prefix="perpbot-test-pg-"))
    server = embedded.start(
        embedded.Cluster(home),
        extra_options={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    yield server.url
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


def _admin_engine(admin_url: URL) -> Engine:
    return create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)


@pytest.fixture(scope="session")
def template_db(admin_url: URL, worker_name: str, config_file: Path) -> Iterator[str]:
    name = f"perpbot_tpl_{worker_name}"
    admin = _admin_engine(admin_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = engine_for(admin_url.set(database=name))
    migrate.upgrade(engine)
    migrate.sync_exchanges(engine, load_settings())
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_counter = itertools.count()


def _fresh_database(admin_url: URL, name: str, template: str | None) -> None:
    admin = _admin_engine(admin_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        suffix = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
    admin.dispose()


def _drop_database(admin_url: URL, name: str) -> None:
    admin = _admin_engine(admin_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db_url(admin_url: URL, template_db: str, worker_name: str) -> Iterator[URL]:
    """A migrated database with the test exchanges, private to this test."""
    name = f"perpbot_t_{worker_name}_{next(_counter)}"
    _fresh_database(admin_url, name, template_db)
    yield admin_url.set(database=name)
    _drop_database(admin_url, name)


@pytest.fixture
def empty_db_url(admin_url: URL, worker_name: str) -> Iterator[URL]:
    """An empty database (no schema), for migration tests."""
    name = f"perpbot_e_{worker_name}_{next(_counter)}"
    _fresh_database(admin_url, name, None)
    yield admin_url.set(database=name)
    _drop_database(admin_url, name)


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    eng = engine_for(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(db_url: URL, config_file: Path) -> Settings:
    return load_settings(database_url=db_url.render_as_string(hide_password=False))


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """The settings with a zero-latency paper exchange."""
    return settings.model_copy(
        update={"paper": settings.paper.model_copy(update={"latency_ms": 0})}
    )


@pytest.fixture
def cli_env(db_url: URL, config_file: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPBOT_")}
    env.update(
        PERPBOT_DATABASE_URL=db_url.render_as_string(hide_password=False),
        PERPBOT_CONFIG=str(config_file),
        PERPBOT_HOME=str(tmp_path / "home"),
        PERPBOT_WEB_PORT="0",  # `perpbot run` serves its console: any free port
    )
    return env


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Cli:
    """Run the real ``perpbot`` console script against this test's database.

    ``cli("submit", "-", stdin=...)``; ``env={...}`` adds or overrides variables.
    """

    def run(
        *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PERPBOT, *args],
            env={**cli_env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=HANG_S,
            cwd=tmp_path,
        )

    return run


@pytest.fixture
def spawn(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Spawn]:
    """Start real ``perpbot`` processes (``spawn("worker", PERPBOT_X="1")``); killed at the end.

    Output goes to pipes: for short tests that read it; a long run should log to a file.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [PERPBOT, *args],
            env={**cli_env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def market_feed(engine: Engine) -> Iterator[MarketFeed]:
    """Calm market data kept fresh for the whole test (a feed thread, every 0.5 s)."""
    feed = MarketFeed(engine).start()
    yield feed
    feed.stop()


@pytest.fixture
def admitted_job(engine: Engine, settings: Settings) -> int:
    put_market(engine)
    ids = submit(engine, settings, [job(1), job(2)])
    report = tick.run_tick(engine, config())
    assert report.admitted == ids
    return ids[0]
