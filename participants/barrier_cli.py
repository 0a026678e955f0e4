"""Purge a participant's barrier table by hand or from cron:

    python -m participants.barrier_cli purge --database-url URL --older-than 7d \\
        [--schema NAME] [--batch N] [--dry-run]

Deletes the rows older than --older-than (90m, 36h, 7d, 2w; at least an hour), a batch per
statement, and prints how many went; --dry-run prints how many would go and deletes nothing.
Exit status: 0 done, 1 the database failed (unreachable, no barrier table, ...), 2 bad usage.
Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

import asyncpg

from participants import barrier
from participants.barrier_purge import (
    DEFAULT_BATCH,
    BarrierPurger,
    Retention,
    check_keep_for,
    describe,
    parse_duration,
)

PROG = "python -m participants.barrier_cli"
CONNECT_TIMEOUT_S = 10.0
# The schema names participants.schema.migrate accepts.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class UsageError(Exception):
    pass


class Failure(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the usage as well: one line is what the caller gets.
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Maintain a TCC participant's barrier table.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    purge = commands.add_parser(
        "purge",
        help="delete old barrier rows",
        description="Delete barrier rows older than --older-than, a batch at a time.",
    )
    purge.add_argument("--database-url", required=True, help="Postgres URL of the participant")
    purge.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="delete rows older than this (90m, 36h, 7d, 2w); at least 1h, and longer than"
        " the coordinator's give-up time",
    )
    purge.add_argument(
        "--schema",
        help="the participant's schema (default: the connection's search_path)",
    )
    purge.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"rows per DELETE statement (default {DEFAULT_BATCH})",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="print how many rows would go; delete nothing"
    )
    return parser


def _retention(args: argparse.Namespace) -> Retention:
    try:
        older_than_s = parse_duration(args.older_than)
        check_keep_for(older_than_s)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    if args.schema is not None and not _SCHEMA_NAME.match(args.schema):
        raise UsageError(f"--schema: {args.schema!r} is not a lower-case identifier")
    if args.batch < 1:
        raise UsageError(f"--batch: must be at least 1, not {args.batch}")
    return Retention(keep_for_s=older_than_s, batch=args.batch)


async def _purge(args: argparse.Namespace, retention: Retention) -> str:
    server_settings = {"search_path": args.schema} if args.schema else None
    try:
        pool = await asyncpg.create_pool(
            args.database_url,
            min_size=1,
            max_size=1,
            timeout=CONNECT_TIMEOUT_S,
            server_settings=server_settings,
        )
    except Exception as exc:
        raise Failure(f"cannot connect to the database: {describe(exc)}") from None
    try:
        where = f"schema {args.schema!r}" if args.schema else "the search_path"
        try:
            found = await pool.fetchval("SELECT to_regclass('tcc_barrier')")
        except Exception as exc:
            raise Failure(f"cannot read the database: {describe(exc)}") from None
        if found is None:
            raise Failure(f"no tcc_barrier table in {where} (wrong --schema, or not migrated?)")
        if args.dry_run:
            try:
                async with pool.acquire() as conn:
                    count = await barrier.count_older(conn, retention.keep_for_s)
            except Exception as exc:
                raise Failure(f"cannot count barrier rows: {describe(exc)}") from None
            return f"would delete {count} barrier rows older than {args.older_than} (dry run)"
        purger = BarrierPurger(pool, retention)
        try:
            await purger.run_pass()
        except Exception as exc:
            raise Failure(
                f"deleted {purger.deleted} barrier rows, then failed: {describe(exc)}"
            ) from None
        return f"deleted {purger.deleted} barrier rows older than {args.older_than}"
    finally:
        try:
            await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT_S)
        except Exception:  # the database went away meanwhile: just drop the connection
            pool.terminate()


def main(argv: Sequence[str] | None = None) -> int:
    # asyncpg's own warnings (a pool reconnecting) would add lines to the one error line.
    logging.getLogger("asyncpg").setLevel(logging.CRITICAL)
    try:
        args = _parser().parse_args(argv)
        retention = _retention(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(_purge(args, retention)))
    except Failure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
