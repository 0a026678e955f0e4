"""The ``tcc`` command: serve, recover, migrate, status, list, retry."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, get_args

import aiohttp
import pydantic

from coordinator.api.app import create_app
from coordinator.api.schemas import is_valid_gid
from coordinator.api.server import (
    ensure_port_free,
    log_connection_budget,
    plan_connections,
    serve_app,
)
from coordinator.core.apikeys import hash_key, parse_keys
from coordinator.core.errors import CoordinatorError
from coordinator.core.states import GlobalStatus
from coordinator.devtools.chaos import ChaosConfig, ChaosRun, report_json
from coordinator.devtools.demo import run_demo
from coordinator.devtools.stack import Ports, Stack
from coordinator.embedded import resolve_database_url
from coordinator.engine.driver import Engine
from coordinator.engine.recovery import Recovery
from coordinator.logs import configure_logging
from coordinator.outbound import ParticipantCaller
from coordinator.report import columns, format_detail, format_time
from coordinator.settings import Settings
from coordinator.txlog import migrator
from coordinator.txlog.postgres import ListFilter, Store, connect_pool
from coordinator.workers import Supervisor


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit 2."""


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
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        raise UsageError(
            f"{_flag(field) if field in Settings.model_fields else field}: {err['msg']}"
        ) from exc


DB_FLAGS = ["database_url", "data_dir", "log_level", "log_format"]

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
        "up", help="run everything locally: embedded Postgres, coordinator, three samples"
    )
    up.add_argument(
        "--samples-port",
        type=int,
        default=8101,
        help="wallet on this port, inventory and order on the next two",
    )
    add_settings_flags(up, ["data_dir", "port", "log_level", "log_format"])

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
    chaos.add_argument("--time-limit-s", type=float, default=600.0)
    chaos.add_argument("--seed", type=int)
    chaos.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings_flags(chaos, ["log_level", "log_format"])

    resolve = sub.add_parser(
        "resolve", help="mark a failed_to_* transaction done after finishing it by hand"
    )
    resolve.add_argument("gid")
    resolve.add_argument("--note", required=True, help="what was done by hand, and why")
    add_settings_flags(resolve, DB_FLAGS)

    key_hash = sub.add_parser(
        "key-hash", help="turn an API key (read from stdin) into a TCC_API_KEYS entry"
    )
    key_hash.add_argument("name", help="the service the key belongs to")
    key_hash.add_argument("--scope", choices=["service", "admin"], default="service")

    retry = sub.add_parser("retry", help="send a failed_to_* transaction back into phase two")
    retry.add_argument("gid")
    add_settings_flags(retry, DB_FLAGS)

    migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    add_settings_flags(migrate, DB_FLAGS)

    status = sub.add_parser("status", help="show one transaction with its timeline")
    status.add_argument("gid")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_settings_flags(status, DB_FLAGS)

    lister = sub.add_parser("list", help="list transactions, newest first")
    lister.add_argument("--status", dest="filter_status", choices=[s.value for s in GlobalStatus])
    lister.add_argument("--service", dest="filter_service")
    lister.add_argument("--limit", type=int, default=50)
    add_settings_flags(lister, DB_FLAGS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        # Admin commands print results; their logs only matter when something is wrong.
        quiet = args.command != "serve" and getattr(args, "log_level", None) is None
        configure_logging("warning" if quiet else settings.log_level, settings.log_format)
        commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
            "serve": serve,
            "migrate": lambda a, s: run(migrate_command(s)),
            "status": lambda a, s: run(status_command(a, s)),
            "list": lambda a, s: run(list_command(a, s)),
            "retry": lambda a, s: run(retry_command(a, s)),
            "resolve": lambda a, s: run(resolve_command(a, s)),
            "recover": lambda a, s: run(recover_command(a, s)),
            "chaos": lambda a, s: run(chaos_command(a)),
            "up": lambda a, s: run(up_command(a, s)),
            "key-hash": lambda a, s: key_hash_command(a),
            "demo": lambda a, s: run(demo_command()),
        }
        code = commands[args.command](args, settings)
    except UsageError as exc:
        print(f"tcc {args.command}: {exc}", file=sys.stderr)
        code = 2
    except CoordinatorError as exc:
        print(f"tcc {args.command}: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


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
    url = resolve_database_url(settings.database_url, settings.data_dir)
    if settings.workers > 1:
        if settings.migrate:
            run(_migrate_quietly(url))
        env = {
            f"TCC_{name.upper()}": str(value)
            for name, value in settings.model_dump().items()
            if value is not None
        }
        env["TCC_DATABASE_URL"] = url
        return Supervisor(settings.workers, env).run()
    app = create_app(settings, url)
    asyncio.run(serve_app(app, settings, budget.max_connections, reuse_port=args.reuse_port))
    return 0


async def _migrate_quietly(url: str) -> int:
    await migrator.migrate(url)
    return 0


async def migrate_command(settings: Settings) -> int:
    url = resolve_database_url(settings.database_url, settings.data_dir)
    applied = await migrator.migrate(url)
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("schema is current")
    return 0


async def retry_command(args: argparse.Namespace, settings: Settings) -> int:
    if not is_valid_gid(args.gid):
        raise UsageError("gid must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    store = await _with_store(settings)
    try:
        txn, _ = await store.retry_parked(
            args.gid, actor=f"cli:{getpass.getuser()}", owner=None, lease_ttl_s=0
        )
    finally:
        await store.pool.close()
    print(f"{txn.gid} is {txn.status.value} again; a running coordinator continues it now")
    return 0


async def resolve_command(args: argparse.Namespace, settings: Settings) -> int:
    if not is_valid_gid(args.gid):
        raise UsageError("gid must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    if not 1 <= len(args.note) <= 500:
        raise UsageError("--note must be 1-500 characters")
    store = await _with_store(settings)
    try:
        txn = await store.resolve_parked(args.gid, actor=f"cli:{getpass.getuser()}", note=args.note)
    finally:
        await store.pool.close()
    print(f"{txn.gid} is {txn.status.value}, resolved by hand")
    return 0


async def recover_command(args: argparse.Namespace, settings: Settings) -> int:
    url = resolve_database_url(settings.database_url, settings.data_dir)
    store = Store(await connect_pool(url, 1, settings.pool_max_size))
    try:
        async with aiohttp.ClientSession() as session:
            engine = Engine(
                store, ParticipantCaller(session, settings.max_response_bytes), settings
            )
            recovery = Recovery(engine)
            if not args.once:
                await _run_until_signalled(recovery)
                return 0
            leases = await recovery.run_once(wait=True)
            for lease in leases:
                txn = await store.get(lease.gid)
                print(f"{txn.gid}  {txn.status.value}")
            print(f"recovery pass done: {len(leases)} transaction(s) handled")
    finally:
        await store.pool.close()
    return 0


async def _run_until_signalled(recovery: Recovery) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, recovery.stop)
    await recovery.run_forever()
    await recovery.engine.shutdown(recovery.settings.shutdown_grace_s)


async def up_command(args: argparse.Namespace, settings: Settings) -> int:
    if not 1024 <= args.samples_port <= 65533:
        raise UsageError("--samples-port must be between 1024 and 65533")
    base = args.samples_port
    stack = Stack(settings.data_dir, Ports(settings.port, base, base + 1, base + 2))
    stack.check_ports()  # before Postgres or any child starts
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("tcc up: starting the embedded Postgres, the coordinator and the samples ...")
    print(
        "tcc up: WARNING: local development mode, no authentication (--insecure): keep it"
        " on 127.0.0.1"
    )
    try:
        await stack.start()
        print(up_banner(stack))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                break  # Ctrl-C reaches the children too: their exit is no crash
            for name in stack.dead():
                print(f"tcc up: {name} exited (log: {stack.services[name].log_path}); restarting")
                await stack.restart(name)
    finally:
        print("tcc up: stopping ...")
        await stack.stop()
    print("tcc up: stopped")
    return 0


def up_banner(stack: Stack) -> str:
    c, w, i, o = (stack.url(n) for n in ("coordinator", "wallet", "inventory", "order"))
    return f"""
  coordinator  {c}   GET /v1/transactions, GET /v1/transactions/GID
  wallet       {w}    GET /accounts
  inventory    {i}    GET /items
  order        {o}    POST /checkout, GET /orders
  database     embedded Postgres in {stack.data_dir}
  logs         {stack.log_dir}

Place an order (alice has 1000, a book costs 12):
  curl -s -X POST {o}/checkout -d '{{"customer": "alice", "sku": "book", "qty": 2}}'
Then look at it:
  curl -s '{c}/v1/transactions?limit=1'
  curl -s {w}/accounts
  tcc status ORDER_ID

Ctrl-C stops everything."""


def key_hash_command(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if len(key) < 16:
        raise UsageError("give the key on stdin; it must be at least 16 characters")
    entry = f"{args.name}:{args.scope}:{hash_key(key)}"
    parse_keys(entry)  # the name must be one the configuration accepts
    print(entry)
    return 0


async def demo_command() -> int:
    return 0 if await run_demo() else 1


async def chaos_command(args: argparse.Namespace) -> int:
    if not 1 <= args.transactions <= 1_000_000:
        raise UsageError("--transactions must be between 1 and 1000000")
    if not 1 <= args.concurrency <= 500 or not 1 <= args.coordinators <= 16:
        raise UsageError("--concurrency must be 1-500 and --coordinators 1-16")
    if not 0 <= args.fail_rate < 1:
        raise UsageError("--fail-rate must be at least 0 and below 1")
    config = ChaosConfig(
        transactions=args.transactions,
        concurrency=args.concurrency,
        coordinators=args.coordinators,
        kill_every_s=args.fault_every_s,
        kill_coordinators=not args.no_coordinator_kills,
        kill_participants=not args.no_participant_kills,
        database_outages=not args.no_outages,
        fail_rate=args.fail_rate,
        time_limit_s=args.time_limit_s,
        seed=args.seed,
    )
    report = await ChaosRun(config).run()
    print(report_json(report) if args.json else report.table())
    return 0 if report.ok else 1


async def _with_store(settings: Settings) -> Store:
    url = resolve_database_url(settings.database_url, settings.data_dir)
    return Store(await connect_pool(url, 1, 2))


async def status_command(args: argparse.Namespace, settings: Settings) -> int:
    if not is_valid_gid(args.gid):
        raise UsageError("gid must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    store = await _with_store(settings)
    try:
        detail = await store.detail(args.gid, events_limit=STATUS_EVENTS_LIMIT)
    finally:
        await store.pool.close()
    if args.json:
        from coordinator.api.v1 import render_detail

        print(render_detail(detail).model_dump_json(indent=2))
    else:
        print(format_detail(detail))
    return 0


async def list_command(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.limit <= 1000:
        raise UsageError("--limit must be between 1 and 1000")
    store = await _with_store(settings)
    try:
        rows = await store.list(
            ListFilter(
                statuses=(GlobalStatus(args.filter_status),) if args.filter_status else None,
                service=args.filter_service,
                limit=args.limit,
            )
        )
    finally:
        await store.pool.close()
    table = [["GID", "STATUS", "DIALECT", "SERVICE", "CREATED", "REASON"]]
    table += [
        [
            t.gid,
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
