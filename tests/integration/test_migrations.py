"""Migrations: names, order, idempotence, concurrency, and the schema they produce."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from coordinator.core.errors import MigrationError
from coordinator.txlog import migrator
from coordinator.txlog.memory import CHECKS

EXPECTED_SCHEMA = Path(__file__).with_name("expected_schema.txt")

DESCRIBE_SCHEMA = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
       || CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END
       || COALESCE(' default ' || column_default, '')
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1
"""


async def describe(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(DESCRIBE_SCHEMA)
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows) + "\n"


async def test_all_migrations_on_an_empty_database__give_the_expected_schema(
    empty_database_url: str,
) -> None:
    applied = await migrator.migrate(empty_database_url)
    assert [m.version for m in applied] == list(range(1, len(applied) + 1))
    actual = await describe(empty_database_url)
    if os.environ.get("TCC_UPDATE_SCHEMA_SNAPSHOT"):
        EXPECTED_SCHEMA.write_text(actual)
    assert actual == EXPECTED_SCHEMA.read_text(), (
        "schema changed: review it, then rerun with TCC_UPDATE_SCHEMA_SNAPSHOT=1"
    )


async def test_migrate__twice__applies_nothing_the_second_time(empty_database_url: str) -> None:
    assert await migrator.migrate(empty_database_url)
    assert await migrator.migrate(empty_database_url) == []


async def test_migrate__from_several_coordinators_at_once__applies_each_file_once(
    empty_database_url: str,
) -> None:
    results = await asyncio.gather(*(migrator.migrate(empty_database_url) for _ in range(4)))
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in migrator.load_migrations()]
    conn = await asyncpg.connect(empty_database_url)
    try:
        recorded = await conn.fetchval("SELECT count(*) FROM tcc_schema_migrations")
    finally:
        await conn.close()
    assert recorded == len(migrator.load_migrations())


def test_migration_files__are_numbered_from_one_without_gaps() -> None:
    migrations = migrator.load_migrations()
    assert migrations
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["0001_a.sql", "0003_c.sql"], "without gaps"),
        (["1_a.sql"], "NNNN_name.sql"),
        (["0001_Bad-Name.sql"], "NNNN_name.sql"),
    ],
)
def test_load_migrations__refuses_a_bad_folder(
    tmp_path: Path, names: list[str], message: str
) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message):
        migrator.load_migrations(tmp_path)


async def test_every_field_of_a_record__is_a_column_of_its_table(database_url: str) -> None:
    import dataclasses

    from coordinator.core.records import Branch, Event, Transaction

    conn = await asyncpg.connect(database_url)
    try:
        for record, table in (
            (Transaction, "tcc_transactions"),
            (Branch, "tcc_branches"),
            (Event, "tcc_events"),
        ):
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                table,
            )
            columns = {r["column_name"] for r in rows}
            fields = {f.name for f in dataclasses.fields(record)}
            assert fields <= columns, (table, fields - columns)
    finally:
        await conn.close()


async def test_the_in_memory_twin__mirrors_every_check_of_the_schema(
    empty_database_url: str,
) -> None:
    await migrator.migrate(empty_database_url)
    conn = await asyncpg.connect(empty_database_url)
    try:
        rows = await conn.fetch(
            "SELECT conrelid::regclass::text AS tab, conname FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace AND contype = 'c'"
        )
    finally:
        await conn.close()
    assert {(r["tab"], r["conname"]) for r in rows} == {(c.table, c.name) for c in CHECKS}
