"""Applies the numbered SQL files in migrations/ in order, once each, under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg
import structlog

from coordinator.core.errors import MigrationError
from coordinator.txlog.connecting import connect_at_start
from coordinator.txlog.queries import DbConnection, statement

log = structlog.get_logger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_dir() -> Traversable:
    """An installed wheel has them in coordinator/migrations; a checkout at its top level."""
    packaged = resources.files("coordinator").joinpath("migrations")
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if checkout.is_dir():
        return checkout
    raise MigrationError("cannot find the migrations folder")


def load_migrations(folder: Traversable | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = MIGRATION_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file name {entry.name!r} is not NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must run 1, 2, 3, ... without gaps: {versions}")
    return found


async def applied_versions(conn: DbConnection) -> list[int]:
    if not await conn.fetchval(*statement("migrations_table_exists")):
        return []
    return [r["version"] for r in await conn.fetch(*statement("migrations_applied"))]


async def pending_migrations(conn: DbConnection) -> list[Migration]:
    done = set(await applied_versions(conn))
    return [m for m in load_migrations() if m.version not in done]


async def migrate(dsn_or_conn: str | asyncpg.Connection) -> list[Migration]:
    """Apply what is missing; returns the migrations applied by this call. A database that
    cannot be reached is DatabaseUnavailable, in one line that says why."""
    conn = await connect_at_start(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    try:
        # Two coordinators starting together: the second waits here, then finds nothing to do.
        await conn.execute(*statement("migrations_lock"))
        try:
            await conn.execute(*statement("migrations_create_table"))
            applied: list[Migration] = []
            for migration in await pending_migrations(conn):
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        *statement(
                            "migrations_record", version=migration.version, name=migration.name
                        )
                    )
                log.info("migration_applied", version=migration.version, name=migration.name)
                applied.append(migration)
            return applied
        finally:
            await conn.execute(*statement("migrations_unlock"))
    finally:
        if isinstance(dsn_or_conn, str):
            await conn.close()
