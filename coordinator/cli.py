"""The ``tcc`` command: serve, migrate, status, list."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, get_args

import pydantic
from aiohttp import web

from coordinator import migrator
from coordinator.app import create_app
from coordinator.embedded import resolve_database_url
from coordinator.exceptions import CoordinatorError
from coordinator.logs import configure_logging
from coordinator.models import TransactionDetail
from coordinator.schemas import is_valid_gid
from coordinator.settings import Settings
from coordinator.states import GlobalStatus
from coordinator.store import ListFilter, Store, connect_pool


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcc", description="TCC (Try-Confirm-Cancel) transaction coordinator"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the coordinator's HTTP API and recovery")
    add_settings_flags(serve)

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
        quiet = args.command != "serve" and args.log_level is None
        configure_logging("warning" if quiet else settings.log_level, settings.log_format)
        commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
            "serve": serve,
            "migrate": lambda a, s: run(migrate_command(s)),
            "status": lambda a, s: run(status_command(a, s)),
            "list": lambda a, s: run(list_command(a, s)),
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
    url = resolve_database_url(settings.database_url, settings.data_dir)
    app = create_app(settings, url)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda *_: None,
        access_log=None,
        shutdown_timeout=10.0,
    )
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


async def _with_store(settings: Settings) -> Store:
    url = resolve_database_url(settings.database_url, settings.data_dir)
    return Store(await connect_pool(url, 1, 2))


async def status_command(args: argparse.Namespace, settings: Settings) -> int:
    if not is_valid_gid(args.gid):
        raise UsageError("gid must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    store = await _with_store(settings)
    try:
        detail = await store.detail(args.gid)
    finally:
        await store.pool.close()
    if args.json:
        from coordinator.views import render_detail

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
                status=GlobalStatus(args.filter_status) if args.filter_status else None,
                service=args.filter_service,
                limit=args.limit,
            )
        )
    finally:
        await store.pool.close()
    table = [["GID", "STATUS", "SERVICE", "CREATED", "REASON"]]
    table += [
        [t.gid, t.status.value, t.service or "-", _time(t.created_at), t.cancel_reason or ""]
        for t in rows
    ]
    print(_columns(table))
    return 0


def _time(value: Any) -> str:
    return value.isoformat(timespec="milliseconds") if value is not None else "-"


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_detail(detail: TransactionDetail) -> str:
    t = detail.transaction
    lines = [
        f"transaction {t.gid}",
        f"  status         {t.status.value}" + (f" ({t.cancel_reason})" if t.cancel_reason else ""),
        f"  dialect        {t.dialect}",
        f"  service        {t.service or '-'}",
        f"  created        {_time(t.created_at)}",
        f"  deadline       {_time(t.deadline)}",
        f"  decided        {_time(t.decided_at)}",
        f"  finished       {_time(t.finished_at)}",
        f"  rounds         {t.phase_attempts}",
    ]
    if t.next_attempt_at and t.status.value in ("confirming", "cancelling"):
        lines.append(f"  next retry     {_time(t.next_attempt_at)}")
    if t.metadata:
        lines.append(f"  metadata       {json.dumps(t.metadata)}")
    lines.append("")
    table = [["BRANCH", "NAME", "STATUS", "CALLS", "LAST HTTP", "LAST ERROR"]]
    table += [
        [
            b.branch_id,
            b.name,
            b.status.value,
            str(b.attempts),
            str(b.last_http_status or "-"),
            (b.last_error or "")[:60],
        ]
        for b in detail.branches
    ]
    lines.append(_columns(table) if detail.branches else "no branches")
    lines.append("")
    lines.append("timeline")
    for e in detail.events:
        parts = [_time(e.at), e.kind]
        if e.branch_id:
            parts.append(f"branch={e.branch_id}")
        if e.http_status is not None:
            parts.append(f"http={e.http_status}")
        if e.latency_ms is not None:
            parts.append(f"{e.latency_ms:.1f}ms")
        if e.error:
            parts.append(f"error={e.error[:80]!r}")
        extra = {k: v for k, v in e.detail.items() if v not in (None, False, [], {})}
        if extra:
            parts.append(json.dumps(extra, sort_keys=True))
        lines.append("  " + "  ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
