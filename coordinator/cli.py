"""The ``tcc`` command: serve, recover, migrate, status, list, retry."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import ModuleType
from typing import Any, get_args

import asyncpg
import pydantic
import uvloop

from coordinator.api.app import create_app
from coordinator.api.schemas import ParticipantListOut, is_valid_gid, render_detail
from coordinator.api.server import (
    ensure_port_free,
    log_connection_budget,
    plan_connections,
    serve_app,
)
from coordinator.core.apikeys import INSECURE, hash_key, parse_keys
from coordinator.core.errors import CoordinatorError, UsageError
from coordinator.core.kinds import StepPlan, branch_word, status_word
from coordinator.core.records import ListFilter, NewParticipant, TransactionDetail
from coordinator.core.states import GlobalStatus, TransactionKind
from coordinator.core.urlpolicy import check_url_form
from coordinator.embedded import resolve_database_url
from coordinator.engine.runtime import Runtime, running
from coordinator.engine.service import USAGE_WINDOW_S
from coordinator.logs import configure_logging
from coordinator.report import (
    columns,
    format_detail,
    format_participant,
    format_participants,
    format_time,
)
from coordinator.settings import Settings
from coordinator.tlsfiles import ParticipantTls
from coordinator.txlog import migrator
from coordinator.txlog.connecting import connect_at_start
from coordinator.workers import Supervisor


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per setting (or the named ones), defaulting to the TCC_* environment."""
    for name, field in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        help_text = field.description or ""
        env = f"TCC_{name.upper()}"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (env {env})",
            )
            continue
        choices = get_args(field.annotation) or None
        if choices and not all(isinstance(c, str) for c in choices):
            choices = None
        parser.add_argument(
            _flag(name),
            dest=name,
            default=None,
            choices=choices,
            metavar=None if choices else name.upper(),
            help=f"{help_text} (env {env})",
        )


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in Settings.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        return Settings(**overrides)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if not field:  # a rule across settings: its message names them
            raise UsageError(message) from exc
        raise UsageError(
            f"{_flag(field) if field in Settings.model_fields else field}: {message}"
        ) from exc


# What every command that reads the log takes: where it is, and how to reach it over TLS.
DB_FLAGS = [
    "database_url",
    "database_sslmode",
    "database_sslrootcert",
    "database_sslcert",
    "database_sslkey",
    "database_sslpassword",
    "data_dir",
    "log_level",
    "log_format",
]

# Settings `tcc up` decides itself, and why; every other coordinator setting given to it
# (a flag or a TCC_* variable) goes on to the coordinator it starts.
UP_DECIDES = {
    "database_url": "tcc up runs its own embedded Postgres (in --data-dir)",
    "host": "tcc up listens on 127.0.0.1 only",
    "insecure": "tcc up always runs without authentication",
    "api_keys": "tcc up runs without authentication",
    "session_secret": "tcc up runs without authentication",
    "migrate": "tcc up migrates before it starts anything",
    "participant_allow": "the samples run on loopback, which tcc up allows",
    "log_format": "tcc up's coordinator logs JSON lines into its log file",
}

# `tcc status` shows the whole timeline (identical failures are collapsed, so it stays short).
STATUS_EVENTS_LIMIT = 10_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcc", description="TCC (Try-Confirm-Cancel) transaction coordinator"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the coordinator's HTTP API and recovery")
    add_settings_flags(serve)
    # Set by the --workers supervisor for its children only.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    recover = sub.add_parser(
        "recover", help="run recovery without the HTTP API (--once: one pass, then exit)"
    )
    recover.add_argument("--once", action="store_true", help="one pass, wait for it, exit")
    add_settings_flags(recover)

    up = sub.add_parser(
        "up",
        help="run everything locally: embedded Postgres, coordinator, four samples, a mail sink",
    )
    up.add_argument(
        "--samples-port",
        type=int,
        default=8101,
        help="wallet on this port; inventory, order, notify and the SMTP sink on the next four",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="the samples serve HTTPS and require the coordinator's client certificate, all"
        " issued by a CA made locally in --data-dir (docs/security.md#tls)",
    )
    # Every coordinator setting but those tcc up decides itself goes on to its coordinator.
    # (--log-format too: it shapes tcc up's own lines; its coordinator logs JSON to a file.)
    up_flags = [n for n in Settings.model_fields if n not in UP_DECIDES or n == "log_format"]
    add_settings_flags(up, up_flags)

    demo = sub.add_parser("demo", help="scripted scenarios on a private stack, with a trace")
    add_settings_flags(demo, ["log_level", "log_format"])

    chaos = sub.add_parser(
        "chaos", help="soak run under faults on a private embedded Postgres; checks invariants"
    )
    chaos.add_argument("--transactions", type=int, default=1000)
    chaos.add_argument("--concurrency", type=int, default=16)
    chaos.add_argument("--coordinators", type=int, default=2)
    chaos.add_argument(
        "--fault-every-s", type=float, default=2.0, help="mean seconds between faults; 0 for none"
    )
    chaos.add_argument("--no-coordinator-kills", action="store_true")
    chaos.add_argument("--no-participant-kills", action="store_true")
    chaos.add_argument("--no-outages", action="store_true")
    chaos.add_argument("--fail-rate", type=float, default=0.05)
    chaos.add_argument(
        "--kinds", default="tcc,saga,msg", help="the kinds of transaction to mix (all three)"
    )
    chaos.add_argument("--time-limit-s", type=float, default=600.0)
    chaos.add_argument("--seed", type=int)
    chaos.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings_flags(chaos, ["log_level", "log_format"])

    conformance = sub.add_parser(
        "conformance",
        help="check a live participant against the protocol's anomalies; says what to fix",
        # No usage block: a mistake is then one line (the forms are in the description).
        usage=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
  tcc conformance --try URL --confirm URL --cancel URL [options]    a TCC participant
  tcc conformance --action URL --compensate URL [options]           a saga step
  tcc conformance --participant NAME [--try URL | --saga] [options]  from the registry

Runs the protocol's anomalies (repeats, an empty cancel, a late try, ...) against a live
participant, each on a fresh gid, and prints what it saw and what to fix. Exit status 0 when
no scenario failed. See docs/participants.md, "Checking a participant".""",
    )
    # Values are checked by the command itself, so that each mistake is one line.
    conformance.add_argument("--try", dest="try_url", metavar="URL", help="the try URL (TCC)")
    conformance.add_argument("--confirm", dest="confirm_url", metavar="URL")
    conformance.add_argument("--cancel", dest="cancel_url", metavar="URL")
    conformance.add_argument(
        "--action", dest="action_url", metavar="URL", help="a saga step's action URL (saga mode)"
    )
    conformance.add_argument("--compensate", dest="compensate_url", metavar="URL")
    conformance.add_argument(
        "--participant", metavar="NAME", help="take the URLs from the coordinator's registry"
    )
    conformance.add_argument(
        "--saga",
        action="store_true",
        help="with --participant: a saga step (its confirm URL acts, its cancel URL compensates)",
    )
    conformance.add_argument(
        "--url",
        dest="coordinator_url",
        metavar="URL",
        help="the coordinator, for --participant (env TCC_URL; default http://127.0.0.1:36789)",
    )
    conformance.add_argument(
        "--api-key", metavar="KEY", help="its API key, for --participant (env TCC_API_KEY)"
    )
    conformance.add_argument("--payload", metavar="JSON", help="the payload every call carries")
    conformance.add_argument(
        "--dialect", metavar="v1|dtm", help="how calls are made and read (default v1)"
    )
    conformance.add_argument(
        "--check-url",
        metavar="URL",
        help="GET ?gid=&branch_id= answers what the branch holds (docs/participants.md)",
    )
    conformance.add_argument(
        "--timeout", metavar="S", help="seconds each call may take (default: the registry's, or 10)"
    )
    conformance.add_argument(
        "--only", metavar="NAMES", help="only these scenarios (comma-separated)"
    )
    conformance.add_argument("--json", action="store_true", help="print the report as JSON")
    # https participants: called with the coordinator's own CA bundle and client certificate.
    add_settings_flags(
        conformance,
        [
            "participant_tls_ca",
            "participant_tls_system_ca",
            "participant_tls_cert",
            "participant_tls_key",
            "participant_tls_key_password",
        ],
    )

    bench = sub.add_parser(
        "bench",
        help="benchmark each mode beside the database ceiling and the participant floor",
    )
    bench.add_argument(
        "--database-url", help="use this Postgres (it must allow CREATE DATABASE) not our own"
    )
    bench.add_argument("--workers", type=int, default=1, help="tcc serve --workers N")
    bench.add_argument("--concurrency", help="clients per point, comma-separated (1,16,64)")
    bench.add_argument("--modes", help="comma-separated: auto,interactive,dtm,saga,msg (all)")
    bench.add_argument("--seconds", type=int, help="measured seconds per point (10)")
    bench.add_argument("--warmup-s", type=float, help="unmeasured seconds before each point (2)")
    bench.add_argument("--out", help="folder for bench.json and bench.png (a new temp folder)")
    bench.add_argument(
        "--short", action="store_true", help="about 1 s per point, 1 and 4 clients (for tests)"
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument(
        "--profile",
        action="store_true",
        help="sample each coordinator with py-spy over its points: CPU per transaction by part",
    )
    bench.add_argument(
        "--reads",
        type=int,
        metavar="N",
        help="instead: fill a log with N transactions and time the console's and API's reads",
    )
    bench.add_argument(
        "--soak",
        type=int,
        metavar="N",
        help="instead: N transactions with the largest metadata; the coordinator's memory as"
        " they go",
    )
    bench.add_argument(
        "--prune",
        type=int,
        metavar="N",
        help="instead: time `tcc prune` deleting N old transactions, and the load meanwhile",
    )
    bench.add_argument(
        "--storm",
        action="store_true",
        help="instead: kill a participant under load, bring it back, and count the calls it"
        " gets, with its circuit breaker and without",
    )
    bench.add_argument(
        "--tls",
        type=int,
        metavar="N",
        help="instead: what TLS and mutual TLS cost a participant call, N calls per point",
    )
    bench.add_argument(
        "--outage-s",
        type=float,
        metavar="S",
        help="--storm: how long the participant stays down (60)",
    )

    resolve = sub.add_parser(
        "resolve", help="mark a failed_to_* transaction done after finishing it by hand"
    )
    resolve.add_argument("gid")
    resolve.add_argument("--note", required=True, help="what was done by hand, and why")
    resolve.add_argument(
        "--branch", help="only this branch (the others can then be retried); default: all"
    )
    add_settings_flags(resolve, DB_FLAGS)

    key_hash = sub.add_parser(
        "key-hash", help="turn an API key (read from stdin) into a TCC_API_KEYS entry"
    )
    key_hash.add_argument("name", help="the service the key belongs to")
    key_hash.add_argument("--scope", choices=["service", "viewer", "admin"], default="service")

    retry = sub.add_parser("retry", help="send a failed_to_* transaction back into phase two")
    retry.add_argument("gid")
    retry.add_argument("--reason", help="why, kept in the timeline")
    add_settings_flags(retry, DB_FLAGS)

    prune = sub.add_parser(
        "prune",
        help="delete finished transactions older than an age, with their branches and timeline",
    )
    prune.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 36h, 90m, 2w")
    prune.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    add_settings_flags(prune, DB_FLAGS)

    sessions = sub.add_parser(
        "sessions", help="list console sessions, or end them (a lost laptop, a leaver)"
    )
    sessions_sub = sessions.add_subparsers(dest="sessions_command", required=True, metavar="WHAT")
    sessions_list = sessions_sub.add_parser("list", help="live sessions, newest first")
    sessions_list.add_argument("--all", action="store_true", help="ended ones too (a day back)")
    add_settings_flags(sessions_list, DB_FLAGS)
    revoke = sessions_sub.add_parser(
        "revoke", help="end sessions on every coordinator at once (they must log in again)"
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", metavar="NAME", help="every session of this key name")
    which.add_argument("--session", metavar="ID", help="one session (its ID from the list)")
    which.add_argument("--all", action="store_true", help="every session")
    add_settings_flags(revoke, DB_FLAGS)

    participants = sub.add_parser(
        "participants",
        help="the participant registry: register, list, show, remove; close a breaker",
    )
    participants_sub = participants.add_subparsers(
        dest="participants_command", required=True, metavar="WHAT"
    )
    register = participants_sub.add_parser(
        "register", help="register a participant (or replace its registration)"
    )
    register.add_argument("name")
    register.add_argument("--base-url", help="its phase URLs are <base>/try, /confirm, /cancel")
    register.add_argument("--try-url", help="instead of <base>/try")
    register.add_argument("--confirm-url", help="instead of <base>/confirm")
    register.add_argument("--cancel-url", help="instead of <base>/cancel")
    register.add_argument("--health-url", help="GET answers 2xx when it is up (the probe)")
    register.add_argument(
        # (its own dest: call_timeout_s is the server's setting, which settings_from reads)
        "--call-timeout-s",
        dest="participant_timeout_s",
        help="timeout of each call to it, in seconds",
    )
    register.add_argument(
        "--tls-profile",
        help="the TLS profile its https calls use (a directory under"
        " TCC_PARTICIPANT_TLS_PROFILES_DIR: its CA bundle and client certificate)",
    )
    register.add_argument("--owner-service", help="the service that owns it")
    add_settings_flags(register, DB_FLAGS)
    participants_list = participants_sub.add_parser(
        "list", help="every participant, its breaker and its last 15 minutes"
    )
    participants_list.add_argument("--json", action="store_true", help="print JSON")
    add_settings_flags(participants_list, DB_FLAGS)
    for verb, text in (
        ("show", "one participant"),
        ("remove", "take one out of the registry (branches keep their URLs)"),
        ("reset", "close its breaker: calls resume at once, ramping up"),
    ):
        one = participants_sub.add_parser(verb, help=text)
        one.add_argument("name")
        add_settings_flags(one, DB_FLAGS)

    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    add_settings_flags(migrate, DB_FLAGS)

    status = sub.add_parser("status", help="show one transaction with its timeline")
    status.add_argument("gid")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_settings_flags(status, DB_FLAGS)

    lister = sub.add_parser("list", help="list transactions, newest first")
    lister.add_argument("--status", dest="filter_status", choices=[s.value for s in GlobalStatus])
    lister.add_argument("--service", dest="filter_service")
    lister.add_argument("--dialect", dest="filter_dialect", help="tcc or dtm")
    lister.add_argument("--kind", dest="filter_kind", help="tcc, saga or msg")
    lister.add_argument("--gid-prefix", dest="filter_gid_prefix", help="gids that begin so")
    lister.add_argument("--limit", type=int, default=50)
    add_settings_flags(lister, DB_FLAGS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        # Admin commands print what they did in a line of their own (and the log keeps it
        # in the timeline): their log lines only matter when something breaks.
        quiet = args.command != "serve" and getattr(args, "log_level", None) is None
        configure_logging("error" if quiet else settings.log_level, settings.log_format)
        commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
            "serve": serve,
            "migrate": lambda a, s: run(migrate_command(s)),
            "status": lambda a, s: run(status_command(a, s)),
            "list": lambda a, s: run(list_command(a, s)),
            "retry": lambda a, s: run(retry_command(a, s)),
            "resolve": lambda a, s: run(resolve_command(a, s)),
            "prune": lambda a, s: run(prune_command(a, s)),
            "sessions": lambda a, s: run(sessions_command(a, s)),
            "participants": lambda a, s: run(participants_command(a, s)),
            "recover": lambda a, s: run(recover_command(a, s)),
            "chaos": lambda a, s: run(_devtools().chaos_command(a)),
            "up": lambda a, s: run(_devtools().up_command(a, s, UP_DECIDES)),
            "key-hash": lambda a, s: key_hash_command(a),
            "demo": lambda a, s: run(_devtools().demo_command()),
            "bench": lambda a, s: run(_devtools().bench_command(a)),
            "conformance": lambda a, s: run(_conformance().conformance_command(a, s)),
        }
        code = commands[args.command](args, settings)
        sys.stdout.flush()  # here, so that a reader gone early is caught below
    except BrokenPipeError:
        # `tcc status GID | head -3`: the reader has what it wanted; nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    except UsageError as exc:
        print(f"tcc {args.command}: {exc}", file=sys.stderr)
        code = 2
    except CoordinatorError as exc:
        print(f"tcc {args.command}: {exc}", file=sys.stderr)
        code = 1
    except asyncpg.PostgresError as exc:
        # The database refused what a command asked (a missing table, a missing right): one
        # line saying so, not a traceback.
        print(f"tcc {args.command}: {database_refusal(exc)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def database_refusal(exc: asyncpg.PostgresError) -> str:
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    said = f"the database refused it: {first_line} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return f"{said}: the log's tables are missing; run tcc migrate (or tcc serve) first"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return (
            f"{said}: the database user lacks a right this needs (tcc migrate: CREATE on the"
            " schema; the coordinator: reading and writing the log's tables)"
        )
    return said


def _devtools() -> ModuleType:
    """Developer tooling (tcc up, demo, chaos, bench), imported only when one of them runs: the
    service itself never loads it."""
    from coordinator.devtools import commands

    return commands


def _conformance() -> ModuleType:
    """`tcc conformance`, imported only when it runs, like the other developer tooling."""
    from coordinator.devtools import conformance

    return conformance


def run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.api_keys and not settings.insecure:
        raise UsageError(
            "no API keys configured: set TCC_API_KEYS (see tcc key-hash), or pass --insecure"
            " for local development"
        )
    # Before the database: a coordinator that cannot serve says so at once, in one line.
    ensure_port_free(settings.host, settings.port, reuse_port=args.reuse_port)
    budget = plan_connections(settings)
    log_connection_budget(budget)
    if settings.workers > 1:
        # The supervisor checks what each worker would refuse to start on, so that a
        # refusal is one line here rather than workers restarted every second.
        ParticipantTls.from_settings(settings).load_all()
    url = resolve_database_url(settings, share=False)
    if settings.workers > 1:
        run(_migrate_quietly(url) if settings.migrate else _reach_database(url))
        env = settings.as_environment()
        env["TCC_DATABASE_URL"] = url
        return Supervisor(settings.workers, env).run()
    app = create_app(settings, url)
    # uvloop: the same asyncio, with a faster loop under every socket the coordinator owns.
    uvloop.run(serve_app(app, settings, budget.max_connections, reuse_port=args.reuse_port))
    return 0


async def _migrate_quietly(url: str) -> int:
    await migrator.migrate(url)
    return 0


async def _reach_database(url: str) -> int:
    connection = await connect_at_start(url)
    await connection.close()
    return 0


async def migrate_command(settings: Settings) -> int:
    url = resolve_database_url(settings)
    applied = await migrator.migrate(url)
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("schema is current")
    return 0


@contextlib.asynccontextmanager
async def admin_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A coordinator for one admin command: no recovery, no migrations, a small pool."""
    url = resolve_database_url(settings)
    quiet = settings.model_copy(update={"migrate": False, "pool_min_size": 1, "pool_max_size": 2})
    async with running(quiet, url, recovery=False) as runtime:
        yield runtime


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _gid(value: str, what: str = "gid") -> str:
    """A gid (or a branch id or gid prefix: the same characters), checked before any
    database is asked."""
    if not is_valid_gid(value):
        raise UsageError(f"{what} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


async def retry_command(args: argparse.Namespace, settings: Settings) -> int:
    gid = _gid(args.gid)
    reason = _words(args.reason, "--reason") if args.reason is not None else None
    async with admin_runtime(settings) as runtime:
        detail = await runtime.coordinator.retry(
            gid, INSECURE, actor=_cli_actor(), reason=reason, run_now=False
        )
    status = detail.transaction.status.value
    print(f"{gid} is {status} again; a running coordinator continues it now")
    return 0


async def resolve_command(args: argparse.Namespace, settings: Settings) -> int:
    gid = _gid(args.gid)
    note = _words(args.note, "--note")
    async with admin_runtime(settings) as runtime:
        if args.branch is None:
            detail = await runtime.coordinator.resolve(gid, INSECURE, actor=_cli_actor(), note=note)
        else:
            detail = await runtime.coordinator.resolve_branch(
                gid, _gid(args.branch, "--branch"), INSECURE, actor=_cli_actor(), note=note
            )
    status = detail.transaction.status.value
    if args.branch is None:
        print(f"{gid} is {status}, resolved by hand")
    else:
        print(f"branch {args.branch} resolved by hand; {gid} is {status}")
    return 0


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_AGE = re.compile(r"([0-9]{1,9})([smhdw])")
# Far enough back for anything; beyond it the database's intervals would overflow.
_MAX_AGE_S = 100 * 365 * 86_400


def parse_age(text: str) -> float:
    """``30d``, ``36h``, ``90m``, ``2w``, ``45s`` in seconds; a clear error otherwise."""
    found = _AGE.fullmatch(text)
    if found is None or int(found[1]) == 0:
        raise UsageError(
            f"--older-than: {text!r} is not an age: a whole number and a unit, s m h d or w"
            " (e.g. 30d)"
        )
    seconds = int(found[1]) * _AGE_UNITS[found[2]]
    if seconds > _MAX_AGE_S:
        raise UsageError(f"--older-than: {text!r} is more than 100 years")
    return float(seconds)


async def prune_command(args: argparse.Namespace, settings: Settings) -> int:
    older_than_s = parse_age(args.older_than)
    async with admin_runtime(settings) as runtime:
        if args.dry_run:
            count = await runtime.log.count_prunable(older_than_s)
            print(f"would delete {count} finished transactions older than {args.older_than}")
            return 0
        deleted = await runtime.upkeep.prune(older_than_s)
    print(f"deleted {deleted} finished transactions older than {args.older_than}")
    return 0


async def participants_command(args: argparse.Namespace, settings: Settings) -> int:
    name = _gid(args.name, "a participant's name") if hasattr(args, "name") else None
    async with admin_runtime(settings) as runtime:
        service = runtime.coordinator
        if args.participants_command == "register":
            assert name is not None
            new = NewParticipant.of(
                name,
                base_url=args.base_url,
                try_url=args.try_url,
                confirm_url=args.confirm_url,
                cancel_url=args.cancel_url,
                health_url=args.health_url,
                call_timeout_s=_seconds(args.participant_timeout_s, "--call-timeout-s"),
                tls_profile=args.tls_profile,
                owner_service=args.owner_service,
                registered_by=None,
            )
            for field, url in new.urls.items():
                _participant_url(url, field)
            registered, created = await service.register_participant(new, INSECURE)
            print(f"{'registered' if created else 'registered again'}: {registered.name}")
            print(format_participant(registered))
        elif args.participants_command == "list":
            rows = await service.participants(INSECURE)
            if args.json:
                print(ParticipantListOut.of(rows, USAGE_WINDOW_S).model_dump_json(indent=2))
            else:
                print(format_participants(rows))
        elif args.participants_command == "show":
            assert name is not None
            print(format_participant(await service.participant(name, INSECURE)))
        elif args.participants_command == "remove":
            assert name is not None
            await service.remove_participant(name, INSECURE)
            print(f"removed {name}; branches that named it keep their URLs")
        else:
            assert name is not None
            reset = await service.reset_breaker(name, INSECURE, actor=_cli_actor())
            print(f"breaker of {name} closed: calls resume, ramping up")
            print(format_participant(reset))
    return 0


def _seconds(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{flag}: a number of seconds, not {value!r}") from None


def _participant_url(url: str, field: str) -> None:
    try:
        check_url_form(url)
    except ValueError as exc:
        raise UsageError(f"--{field.replace('_', '-')}: {exc}") from exc


# How much of a session's id `tcc sessions list` shows (and `revoke --session` needs).
SESSION_ID_SHOWN = 12
_SESSION_ID = re.compile(r"[0-9a-f]{8,64}")


async def sessions_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.sessions_command == "list":
        return await _list_sessions(args, settings)
    key_name = session_id = None
    if args.key is not None:
        try:
            parse_keys(f"{args.key}:admin:{'0' * 64}")  # the same names a key may have
        except ValueError as exc:
            raise UsageError(f"--key: {exc}") from exc
        key_name = args.key
    elif args.session is not None:
        if not _SESSION_ID.fullmatch(args.session):
            raise UsageError("--session: the ID as `tcc sessions list` shows it (hex)")
        session_id = args.session
    async with admin_runtime(settings) as runtime:
        ended = await runtime.sessions.revoke(_cli_actor(), id_prefix=session_id, key_name=key_name)
    what = f"of key {key_name}" if key_name else f"{session_id}" if session_id else "of every key"
    print(f"ended {ended} console session(s) {what}; they must log in again")
    return 0


async def _list_sessions(args: argparse.Namespace, settings: Settings) -> int:
    async with admin_runtime(settings) as runtime:
        found = await runtime.sessions.list(include_ended=args.all)
    table = [["ID", "KEY", "SCOPE", "FROM", "OPENED", "LAST SEEN", "EXPIRES", "ENDED"]]
    table += [
        [
            s.id[:SESSION_ID_SHOWN],
            s.key_name,
            s.scope.value,
            s.remote or "-",
            format_time(s.created_at),
            format_time(s.last_seen_at),
            format_time(s.expires_at),
            f"{format_time(s.revoked_at)} by {s.revoked_by}" if s.revoked_at else "",
        ]
        for s in found
    ]
    print(columns(table))
    return 0


def _words(text: str, flag: str) -> str:
    """An operator's note or reason: kept in the timeline, so bounded like the API's."""
    if not 1 <= len(text) <= 500:
        raise UsageError(f"{flag} must be 1-500 characters")
    return text


async def recover_command(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings)
    async with running(settings, url, recovery=not args.once) as runtime:
        if not args.once:
            await _until_signalled(runtime)
            return 0
        leases = await runtime.recovery.run_once(wait=True)
        for lease in leases:
            txn = await runtime.log.get(lease.gid)
            print(f"{txn.gid}  {txn.status.value}")
        print(f"recovery pass done: {len(leases)} transaction(s) handled")
    return 0


async def _until_signalled(runtime: Runtime) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    runtime.recovery.stop()


def key_hash_command(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if len(key) < 16:
        raise UsageError("give the key on stdin; it must be at least 16 characters")
    entry = f"{args.name}:{args.scope}:{hash_key(key)}"
    parse_keys(entry)  # the name must be one the configuration accepts
    print(entry)
    return 0


async def status_command(args: argparse.Namespace, settings: Settings) -> int:
    gid = _gid(args.gid)
    async with admin_runtime(settings) as runtime:
        detail = await runtime.coordinator.detail(gid, INSECURE, STATUS_EVENTS_LIMIT)
    if args.json:
        print(render_detail(detail).model_dump_json(indent=2))
    else:
        print(with_kind_words(detail, format_detail(detail)))
    return 0


def with_kind_words(detail: TransactionDetail, text: str) -> str:
    """``tcc status`` in the kind's words: its type (and how a saga's or message's steps
    run) under its status, the kind's word for the status and for each step's."""
    t = detail.transaction
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("  status "):
            word = status_word(t.kind, t.status)
            if word:
                lines[i] = line.replace(t.status.value, f"{t.status.value}: {word}", 1)
            kind = t.kind.value
            if t.kind is not TransactionKind.TCC:
                plan = StepPlan.of([b.branch_id for b in detail.branches], t.options)
                order = (
                    "as a graph" if plan.after else "all at once" if plan.concurrent else "in order"
                )
                kind += f" (steps {order})"
            lines.insert(i + 1, f"  type           {kind}")
            break
    if t.kind is not TransactionKind.TCC and detail.branches:
        for i, line in enumerate(lines):
            if line.startswith("BRANCH "):
                table = [["STEP", "NAME", "STATUS", "CALLS", "LAST HTTP", "LAST ERROR"]]
                for b in detail.branches:
                    word = branch_word(t.kind, b.status)
                    table.append(
                        [
                            b.branch_id,
                            b.name,
                            f"{b.status.value}: {word}" if word else b.status.value,
                            str(b.attempts),
                            str(b.last_http_status or "-"),
                            (b.last_error or "")[:60],
                        ]
                    )
                lines[i : i + len(table)] = columns(table).split("\n")
                break
    return "\n".join(lines)


async def list_command(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.limit <= 1000:
        raise UsageError("--limit must be between 1 and 1000")
    kinds = [k.value for k in TransactionKind]
    if args.filter_kind is not None and args.filter_kind not in kinds:
        raise UsageError(f"--kind must be one of {', '.join(kinds)}, not {args.filter_kind!r}")
    flt = ListFilter(
        statuses=(GlobalStatus(args.filter_status),) if args.filter_status else None,
        service=args.filter_service,
        limit=args.limit,
        dialect=args.filter_dialect,
        kind=TransactionKind(args.filter_kind) if args.filter_kind else None,
        gid_prefix=_gid(args.filter_gid_prefix, "--gid-prefix") if args.filter_gid_prefix else None,
    )
    async with admin_runtime(settings) as runtime:
        rows, _ = await runtime.coordinator.list_transactions(flt, INSECURE)
    table = [["GID", "TYPE", "STATUS", "DIALECT", "SERVICE", "CREATED", "REASON"]]
    table += [
        [
            t.gid,
            t.kind.value,
            t.status.value,
            t.dialect,
            t.service or "-",
            format_time(t.created_at),
            t.cancel_reason or "",
        ]
        for t in rows
    ]
    print(columns(table))
    return 0


if __name__ == "__main__":
    main()
