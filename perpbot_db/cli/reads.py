"""The read commands ``status``, ``jobs`` and ``job ID``: what they do, without typer.

They answer at once: no typer, pydantic, rich, SQLAlchemy or Alembic is imported on
their way.  The settings they need come from :mod:`perpbot_db.settings_light` (the
full validation runs only when that is not sure, and names what is wrong); they
read with the driver alone (:mod:`perpbot_db.runtime.reader`) and print plain text
(:mod:`perpbot_db.cli.text`) or JSON.

:data:`COMMANDS` declares their arguments and options.  ``perpbot_db.cli.jobs``
registers the same commands on the typer application from these declarations (for
``--help`` and for anything :func:`parse` leaves to it), and
``perpbot_db.cli.main`` runs an argument list :func:`parse` understands directly.
:func:`parse` takes only what it is sure typer would parse the same way (a test
runs both on the same lists); anything else (``--help``, a value out of range, an
unknown option) goes to typer, which answers or names the mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perpbot_db.cli import text
from perpbot_db.domain.lifecycle import JOB_STATUSES

if TYPE_CHECKING:
    from perpbot_db.settings_light import LightSettings
    from perpbot_db.store.overview import ReadConnection

#: A job id the database can hold (``bigint``); a larger one names no job.
MAX_JOB_ID = 2**63 - 1


def fail(message: str, code: int = 2) -> SystemExit:
    """Print one line on stderr (as is) and return the exit to raise."""
    sys.stdout.flush()
    sys.stderr.write(f"perpbot: {message}\n")
    sys.stderr.flush()
    return SystemExit(code)


def database_settings() -> LightSettings:
    """Where the database is, every setting validated (a wrong one: one line, exit 2)."""
    from perpbot_db.settings_light import LightSettings, load_light

    light = load_light()
    if light is not None:
        return light
    # Not sure at a glance: the full validation decides, and names what is wrong.
    from perpbot_db.settings import SettingsError, load_settings

    try:
        full = load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None
    url = None if full.database_url is None else full.database_url.get_secret_value()
    return LightSettings(database_url=url, home=full.home, config=full.config)


@contextlib.contextmanager
def reading() -> Iterator[ReadConnection]:
    """A read-only driver connection with the schema at head."""
    settings = database_settings()
    from perpbot_db.runtime import reader

    try:
        with reader.reading(settings.database_url, settings.home_dir) as conn:
            yield conn
    except reader.ReadError as exc:
        raise fail(str(exc)) from None


# -- the commands ---------------------------------------------------------------------


def status(*, as_json: bool = False) -> None:
    """System state, the scheduler leader, jobs by status, each exchange's equity,
    capital and jobs, and the protection locks in force."""
    from perpbot_db.services import overview

    with reading() as conn:
        snap = overview.status_snapshot(conn)
    if as_json:
        print(json.dumps(snap))
        return
    system = snap["system"]
    halted = f", halted: {system['halt_reason']}" if system["halt_reason"] else ""
    counts = text.table(
        ("status", "jobs"),
        snap["jobs"].items(),
        title=f"{snap['jobs_total']} job(s)",
        right=(1,),
    )
    exchanges = text.table(
        ("exchange", "equity $", "reserved $", "safe mode", "max jobs", "jobs by status"),
        (
            (
                row["name"] + ("" if row["enabled"] else " (disabled)"),
                text.usd(row["equity_usd"]),
                text.usd(row["reserved_usd"]),
                "yes" if row["safe_mode"] else "no",
                row["max_concurrent_jobs"],
                ", ".join(f"{k} {v}" for k, v in sorted(row["jobs"].items())) or "-",
            )
            for row in snap["exchanges"]
        ),
        title="exchanges",
        right=(1, 2, 4),
    )
    locks = (
        text.table(
            ("scope", "target", "code", "reason", "until"),
            (
                (
                    lock["scope"],
                    lock["target"],
                    lock["code"],
                    lock["reason"],
                    text.when(lock["until"]),
                )
                for lock in snap["locks"]
            ),
            title=f"{len(snap['locks'])} protection lock(s)",
        )
        if snap["locks"]
        else ["protection locks: none"]
    )
    print(
        text.render(
            [
                f"system {system['status']}, risk mode {system['risk_mode']}, "
                f"daily loss limit ${text.usd(system['daily_loss_limit_usd'])}{halted}",
                f"leader: {leader_text(snap['leader'])}",
                "",
                counts,
                "",
                exchanges,
                "",
                locks,
            ]
        )
    )


def leader_text(leader: dict[str, Any] | None) -> str:
    """``none``, or the leader session's ``application_name`` (its pid if it has none)."""
    if leader is None:
        return "none"
    return str(leader["application_name"] or f"pid {leader['pid']}")


JOBS_COLUMNS = (
    "id", "status", "strategy", "symbol", "notional", "score", "legs", "decision", "reason",
    "created",
)  # fmt: skip


def jobs(*, status: str | None = None, limit: int = 20, as_json: bool = False) -> None:
    """List the newest jobs, each with its last decision (why it waits or ended)."""
    from perpbot_db.services import overview

    with reading() as conn:
        rows = overview.job_rows(conn, status=status, limit=limit)
    if as_json:
        print("".join(json.dumps(row) + "\n" for row in rows), end="")
        return
    cells = (
        (
            row["id"],
            row["status"],
            row["strategy"],
            row["symbol"],
            text.usd(row["notional_usd"]),
            row["final_score"] or "-",
            row["legs"] or "",
            row["decision_code"] or "-",
            row["decision_reason"] or "",
            text.when(row["created_at"]),
        )
        for row in rows
    )
    print(text.render([text.table(JOBS_COLUMNS, cells, right=(0, 4, 5))]))


LEGS_COLUMNS = (
    "attempt", "leg", "exchange", "side", "qty", "status", "filled", "avg price",
    "client order id",
)  # fmt: skip


def job(*, job_id: int, as_json: bool = False) -> None:
    """One job: why it waits (or ended), its legs, capital reservations and event timeline."""
    from perpbot_db.services import overview

    with reading() as conn:
        view = overview.job_view(conn, job_id) if job_id <= MAX_JOB_ID else None
    if view is None:
        raise fail(f"job {job_id} not found", 1)
    data = view.as_dict()
    if as_json:
        print(json.dumps(data))
        return
    j = data["job"]
    scores = ", ".join(
        f"{name} {j[name + '_score'] or '-'}"
        for name in ("final", "risk", "latency", "vol", "funding", "liquidity")
    )
    facts = [
        ("scores", scores),
        ("decision", j["decision_code"] or "-"),
        ("deadline", text.when(j["deadline"])),
        ("attempts", f"{j['attempts']} of {j['max_attempts']}"),
        ("worker", j["worker_id"] or "-"),
        ("lease until", text.when(j["lease_expires_at"])),
        ("override by", j["override_by"] or "-"),
        ("created", text.when(j["created_at"])),
        ("admitted", text.when(j["admitted_at"])),
        ("finished", text.when(j["finished_at"])),
    ]
    legs = text.table(
        LEGS_COLUMNS,
        (
            (
                leg["attempt"],
                str(leg["leg_index"]) + (" (unwind)" if leg["unwinds_leg_id"] else ""),
                leg["exchange"],
                leg["side"],
                text.quantity(leg["quantity"]),
                leg["status"],
                text.quantity(leg["filled_quantity"]),
                text.quantity(leg["avg_price"]),
                leg["client_order_id"],
            )
            for leg in data["legs"]
        ),
        title="legs",
        right=(0, 4, 6, 7),
    )
    capital = text.table(
        ("exchange", "tier", "amount $", "status", "released"),
        (
            (
                r["exchange"],
                r["tier"],
                text.usd(r["amount_usd"]),
                r["status"],
                "-"
                if r["released_at"] is None
                else f"{text.when(r['released_at'])} {r['release_reason']}",
            )
            for r in data["reservations"]
        ),
        title="capital",
        right=(2,),
    )
    events = text.table(
        ("at", "from -> to", "actor", "code", "reason"),
        (
            (
                text.when(e["at"]),
                f"{e['from_status'] or '-'} -> {e['to_status']}",
                e["actor"],
                e["code"] or "-",
                e["reason"],
            )
            for e in data["events"]
        ),
        title="events",
    )
    archived = " (archived)" if j["archived"] else ""
    print(
        text.render(
            [
                f"job {j['id']} {j['status']}{archived}: {j['strategy']} {j['symbol']} "
                f"${text.usd(j['notional_usd'])}",
                f"why: {data['why']['text']}",
                *(f"  {name + ':':<13}{value}" for name, value in facts),
                "",
                legs,
                "",
                capital,
                "",
                events,
            ]
        )
    )


# -- their arguments and options --------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """An option (``--name``) or an argument, as typer declares it and :func:`parse` reads it.

    ``kind``: ``flag`` (a bool option, no value), ``int`` (within ``low``..``high``)
    or ``choice`` (one of ``choices``, as written).
    """

    dest: str
    kind: str
    help: str
    flag: str | None = None  # None: a positional argument
    default: Any = None
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    def convert(self, raw: str) -> Any:
        """The value, or None when typer must judge ``raw``."""
        if self.kind == "choice":
            return raw if raw in self.choices else None
        if self.kind == "int" and _PLAIN_INT.fullmatch(raw):
            value = int(raw)
            if (self.low is None or value >= self.low) and (
                self.high is None or value <= self.high
            ):
                return value
        return None


_PLAIN_INT = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[..., None]
    params: tuple[Param, ...]
    options: dict[str, Param] = field(init=False)
    arguments: tuple[Param, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", {p.flag: p for p in self.params if p.flag})
        object.__setattr__(self, "arguments", tuple(p for p in self.params if p.flag is None))


JSON_FLAG = Param("as_json", "flag", "JSON.", flag="--json", default=False)
STATUS = Param(
    "status", "choice", "Only jobs in this status.", flag="--status", choices=JOB_STATUSES
)
LIMIT = Param("limit", "int", "Newest N jobs.", flag="--limit", default=20, low=1, high=100_000)
JOB_ID = Param("job_id", "int", "The job's id (see `perpbot jobs`).", low=1)

COMMANDS: dict[str, Command] = {
    "status": Command("status", status, (JSON_FLAG,)),
    "jobs": Command(
        "jobs",
        jobs,
        (STATUS, LIMIT, Param("as_json", "flag", "JSON lines.", flag="--json", default=False)),
    ),
    "job": Command("job", job, (JOB_ID, JSON_FLAG)),
}


def parse(argv: Sequence[str]) -> tuple[Command, dict[str, Any]] | None:
    """``(command, keyword arguments)`` for a read command's argument list, or None when
    typer must parse it (anything but the plain forms: ``--opt V``, ``--opt=V``, flags,
    the positional arguments; each at most once, every value valid)."""
    if not argv or argv[0] not in COMMANDS or "_PERPBOT_COMPLETE" in os.environ:
        return None
    command = COMMANDS[argv[0]]
    values: dict[str, Any] = {}
    positional: list[str] = []
    tokens = list(argv[1:])
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("-"):
            positional.append(token)
            continue
        name, eq, inline = token.partition("=")
        option = command.options.get(name)
        if option is None or option.dest in values:
            return None
        if option.kind == "flag":
            if eq:
                return None
            values[option.dest] = True
            continue
        if eq:
            raw = inline
        elif tokens and not tokens[0].startswith("-"):
            raw = tokens.pop(0)
        else:
            return None
        value = option.convert(raw)
        if value is None:
            return None
        values[option.dest] = value
    if len(positional) != len(command.arguments):
        return None
    for argument, raw in zip(command.arguments, positional, strict=True):
        value = argument.convert(raw)
        if value is None:
            return None
        values[argument.dest] = value
    for param in command.params:
        values.setdefault(param.dest, param.default)
    return command, values
