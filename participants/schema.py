"""Migrations of a participant service: its own numbered SQL files plus the barrier
table, applied into the service's own Postgres schema and recorded there."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

BARRIER_MIGRATIONS = Path(__file__).with_name("sql")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(folder: Traversable) -> list[Migration]:
    """The NNNN_name.sql files of a folder, in order; versions must run 1, 2, 3, ..."""
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise ValueError(f"migration file name {entry.name!r} is not NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migration versions must run 1, 2, 3, ... without gaps: {versions}")
    return found


def _lock_key(schema: str) -> int:
    return zlib.crc32(f"tcc-participant:{schema}".encode())


async def migrate(dsn: str, schema: str, folder: Traversable) -> list[str]:
    """Apply the barrier and the service's migrations into ``schema``; returns what was applied.

    Serialised per schema with an advisory lock, so replicas may start together.
    """
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must be a lower-case identifier")
    steps: list[tuple[str, Migration]] = [
        *(("barrier", m) for m in load_migrations(BARRIER_MIGRATIONS)),
        *(("service", m) for m in load_migrations(folder)),
    ]
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (source text, version integer,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (source, version))"
            )
            done = {
                (r["source"], r["version"])
                for r in await conn.fetch("SELECT source, version FROM schema_migrations")
            }
            for source, migration in steps:
                if (source, migration.version) in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (source, version, name) VALUES ($1, $2, $3)",
                        source,
                        migration.version,
                        migration.name,
                    )
                applied.append(f"{schema}:{source}:{migration.version:04d}_{migration.name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    finally:
        await conn.close()
    return applied


async def connect_pool(dsn: str, schema: str, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections work inside the service's schema."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, server_settings={"search_path": schema}
    )
    return pool
