"""Purging the barrier table against a real Postgres: the scheduled purge running as a task
(through a dropped table and a database refusing connections), its cancellation, its wiring
into the sample services, and the command line as a real subprocess.

Rows are made old by moving their created_at back in SQL, never by sleeping."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from participants import barrier_purge, schema
from participants.barrier_purge import BarrierPurger, Retention, purge_forever, running
from participants.wallet.app import create_app as create_wallet

SCHEMA = "bp"
HOUR = 3600.0
DAY = 86400.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def pool(database_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    await schema.migrate(database_url, SCHEMA, migrations)
    pool = await schema.connect_pool(database_url, SCHEMA, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


async def sql(database_url: str, query: str, *args: object, schema_name: str = SCHEMA) -> object:
    """One statement on a connection of its own (not the purge's pool, which may be broken)."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema_name})
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def add_rows(
    database_url: str, prefix: str, count: int, age_s: float, schema_name: str = SCHEMA
) -> None:
    """``count`` barrier rows whose created_at lies ``age_s`` in the past."""
    await sql(
        database_url,
        "INSERT INTO tcc_barrier (gid, branch_id, phase, written_by, created_at)"
        " SELECT $1 || i, 'b', 'try', 'try', now() - make_interval(secs => $3)"
        " FROM generate_series(1, $2) AS i",
        prefix,
        count,
        age_s,
        schema_name=schema_name,
    )


async def count_rows(database_url: str, prefix: str = "", schema_name: str = SCHEMA) -> int:
    found = await sql(
        database_url,
        "SELECT count(*) FROM tcc_barrier WHERE gid LIKE $1 || '%'",
        prefix,
        schema_name=schema_name,
    )
    assert isinstance(found, int)
    return found


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = check()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


def fast(**overrides: float) -> Retention:
    """An hour's retention, a pass every 50 ms, small batches."""
    values: dict[str, float] = {"keep_for_s": HOUR, "every_s": 0.05, "batch": 7, "pause_s": 0.0}
    values.update(overrides)
    return Retention(**values)  # type: ignore[arg-type]


# --- the scheduled purge ----------------------------------------------------------------


async def test_running__as_a_task__deletes_old_rows_pass_after_pass_and_keeps_recent_ones(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(database_url, "old-", 30, age_s=2 * HOUR)
    await add_rows(database_url, "new-", 5, age_s=HOUR - 60)

    async with running(pool, fast()) as purger:
        await eventually(lambda: purger.deleted == 30)
        assert await count_rows(database_url, "old-") == 0

        # Rows that grow old later go at a later pass.
        await add_rows(database_url, "later-", 12, age_s=DAY)
        await eventually(lambda: purger.deleted == 42)
        await eventually(lambda: purger.passes >= 3)

    assert await count_rows(database_url, "later-") == 0
    assert await count_rows(database_url) == 5
    assert purger.failures == 0


async def test_purge_forever__table_dropped_and_recreated__fails_that_pass_then_carries_on(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with running(pool, fast()) as purger:
        await eventually(lambda: purger.passes >= 1)
        await sql(database_url, "DROP TABLE tcc_barrier")
        await eventually(lambda: purger.failures >= 2)
        assert purger.last_error is not None
        assert "UndefinedTableError" in purger.last_error

        # The table is back (as a migration would make it), with old rows in it.
        barrier_sql = (ROOT / "participants" / "sql" / "0001_barrier.sql").read_text()
        conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
        try:
            await conn.execute(barrier_sql)
        finally:
            await conn.close()
        await add_rows(database_url, "old-", 20, age_s=2 * DAY)
        await add_rows(database_url, "new-", 2, age_s=0)

        await eventually(lambda: purger.deleted == 20)
        await eventually(lambda: purger.last_error is None)

    assert await count_rows(database_url) == 2


async def test_purge_forever__database_refusing_connections__survives_and_resumes(
    pool: asyncpg.Pool, database_url: str, pg_admin_url: str
) -> None:
    name = URL(database_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_admin_url)
    try:
        async with running(pool, fast()) as purger:
            await eventually(lambda: purger.passes >= 1)

            # An outage: the database refuses new connections and loses its current ones.
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    name,
                )
                await eventually(lambda: purger.failures >= 3)
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

            await add_rows(database_url, "old-", 15, age_s=2 * HOUR)
            await add_rows(database_url, "new-", 3, age_s=0)
            await eventually(lambda: purger.deleted == 15)
    finally:
        await admin.close()

    assert await count_rows(database_url) == 3


async def test_running__left_mid_pass__stops_at_once_and_deletes_no_more(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(database_url, "old-", 200, age_s=DAY)

    # One row a batch, half a second between batches: the pass would take 100 seconds.
    async with running(pool, fast(batch=1, pause_s=0.5)) as purger:
        await eventually(lambda: purger.deleted >= 1)
        left = time.monotonic()
    assert time.monotonic() - left < 1.0

    remaining = await count_rows(database_url)
    assert 0 < remaining < 200
    await asyncio.sleep(0.6)  # longer than a pause: a purge still running would delete again
    assert await count_rows(database_url) == remaining


async def test_purge_forever__cancelled_between_passes__stops_promptly(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(database_url, "old-", 4, age_s=DAY)
    task = asyncio.create_task(purge_forever(pool, HOUR, every_s=3600, pause_s=0))
    await eventually(lambda: _count_is(database_url, 0, SCHEMA))

    task.cancel()
    await asyncio.wait_for(asyncio.wait([task]), 1.0)

    assert task.cancelled()


@pytest.mark.parametrize("keep_for_s", [0, 60, HOUR - 1, float("nan")])
async def test_purge_forever__kept_less_than_an_hour__refused_at_the_call_with_the_reason(
    pool: asyncpg.Pool, keep_for_s: float
) -> None:
    with pytest.raises(ValueError, match="at least one hour") as caught:
        # No task is made, nothing is awaited: the call itself refuses.
        purge_forever(pool, keep_for_s).close()

    assert "late retry" in str(caught.value)
    assert "TCC_GIVE_UP_AFTER_S" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"), [("every_s", 0), ("batch", 0), ("pause_s", -1), ("first_after_s", -1)]
)
def test_retention__nonsense_settings__are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Retention(**{field: value})  # type: ignore[arg-type]


async def test_run_pass__returns_what_it_deleted_across_batches(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(database_url, "old-", 21, age_s=HOUR + 60)
    await add_rows(database_url, "new-", 1, age_s=HOUR - 60)
    purger = BarrierPurger(pool, fast(batch=7))

    assert await purger.run_pass() == 21
    assert await purger.run_pass() == 0
    assert purger.deleted == 21
    assert await count_rows(database_url) == 1


# --- settings from the environment, and the samples ---------------------------------------


def test_retention_from_env__nothing_set__keeps_a_week_and_purges_hourly() -> None:
    assert Retention.from_env({}) == Retention(keep_for_s=7 * DAY, every_s=HOUR)


def test_retention_from_env__values__are_durations() -> None:
    env = {"TCC_BARRIER_KEEP_FOR": "36h", "TCC_BARRIER_PURGE_EVERY": "90m"}
    assert Retention.from_env(env) == Retention(keep_for_s=36 * HOUR, every_s=90 * 60)


@pytest.mark.parametrize("value", ["off", "never", "OFF"])
def test_retention_from_env__off__purges_nothing(value: str) -> None:
    assert Retention.from_env({"TCC_BARRIER_KEEP_FOR": value}) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TCC_BARRIER_KEEP_FOR": "30m"}, "TCC_BARRIER_KEEP_FOR: barrier rows must be kept"),
        ({"TCC_BARRIER_KEEP_FOR": "7"}, "TCC_BARRIER_KEEP_FOR: '7' is not a duration"),
        ({"TCC_BARRIER_PURGE_EVERY": "hourly"}, "TCC_BARRIER_PURGE_EVERY: 'hourly' is not"),
        ({"TCC_BARRIER_PURGE_EVERY": "0m"}, "TCC_BARRIER_PURGE_EVERY: the duration '0m'"),
    ],
)
def test_retention_from_env__bad_values__name_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Retention.from_env(env)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("36h", 129600), ("7d", 604800), ("2w", 1209600), ("30s", 30), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert barrier_purge.parse_duration(text) == seconds


async def test_sample_service__purges_its_barrier_table_in_the_background(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCC_BARRIER_KEEP_FOR", "2h")
    monkeypatch.setenv("TCC_BARRIER_PURGE_EVERY", "0.05s")
    runner = web.AppRunner(create_wallet(database_url, schema="wallet_p"))
    await runner.setup()  # migrates, opens the pool, starts the purge
    try:
        await add_rows(database_url, "old-", 9, age_s=3 * HOUR, schema_name="wallet_p")
        await add_rows(database_url, "new-", 2, age_s=HOUR, schema_name="wallet_p")
        await eventually(lambda: _count_is(database_url, 2, "wallet_p"))
    finally:
        await runner.cleanup()  # stops the purge before closing the pool


async def _count_is(database_url: str, expected: int, schema_name: str) -> bool:
    return await count_rows(database_url, schema_name=schema_name) == expected


def test_sample_service__keep_for_under_an_hour__fails_when_the_app_is_built(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCC_BARRIER_KEEP_FOR", "10m")
    with pytest.raises(ValueError, match="TCC_BARRIER_KEEP_FOR"):
        create_wallet(database_url)


# --- the command line ----------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "participants.barrier_cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert err.startswith("python -m participants.barrier_cli: ")
    for fragment in fragments:
        assert fragment in err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_cli_purge__deletes_the_old_rows_and_prints_the_count(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(database_url, "old-", 25, age_s=8 * DAY)
    await add_rows(database_url, "new-", 3, age_s=6 * DAY)

    code, out, err = await run_cli(
        "purge", "--database-url", database_url, "--older-than", "7d", "--schema", SCHEMA,
        "--batch", "10",
    )  # fmt: skip

    assert (code, err) == (0, "")
    assert out == "deleted 25 barrier rows older than 7d\n"
    assert await count_rows(database_url, "old-") == 0
    assert await count_rows(database_url, "new-") == 3


async def test_cli_purge__dry_run__reports_the_count_and_deletes_nothing(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await add_rows(database_url, "old-", 25, age_s=37 * HOUR)
    await add_rows(database_url, "new-", 3, age_s=35 * HOUR)

    code, out, err = await run_cli(
        "purge", "--database-url", database_url, "--older-than", "36h", "--schema", SCHEMA,
        "--dry-run",
    )  # fmt: skip

    assert (code, err) == (0, "")
    assert out == "would delete 25 barrier rows older than 36h (dry run)\n"
    assert await count_rows(database_url) == 28


@pytest.mark.parametrize(
    ("older_than", "fragment"),
    [
        ("7x", "--older-than: '7x' is not a duration"),
        ("soon", "--older-than: 'soon' is not a duration"),
        ("0d", "must be longer than zero"),
        ("30m", "at least one hour"),
    ],
)
async def test_cli_purge__bad_duration__one_line_and_exit_2(
    database_url: str, older_than: str, fragment: str
) -> None:
    code, out, err = await run_cli(
        "purge", "--database-url", database_url, "--older-than", older_than
    )

    assert (code, out) == (2, "")
    assert_one_line_error(err, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "required"),
        (("purge", "--older-than", "7d"), "--database-url"),
        (("purge", "--database-url", "x", "--older-than", "7d", "--batch", "0"), "batch"),
        (("purge", "--database-url", "x", "--older-than", "7d", "--batch", "many"), "--batch"),
        (("purge", "--database-url", "x", "--older-than", "7d", "--schema", "A;B"), "--schema"),
        (("vacuum",), "invalid choice"),
    ],
)
async def test_cli__usage_errors__one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    code, out, err = await run_cli(*args)

    assert (code, out) == (2, "")
    assert_one_line_error(err, fragment)


async def test_cli_purge__unreachable_database__one_line_and_exit_1() -> None:
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/nothing"

    code, out, err = await run_cli("purge", "--database-url", url, "--older-than", "7d")

    assert (code, out) == (1, "")
    assert_one_line_error(err, "cannot connect to the database")


async def test_cli_purge__no_barrier_table__one_line_and_exit_1(
    pool: asyncpg.Pool, database_url: str
) -> None:
    code, out, err = await run_cli(
        "purge", "--database-url", database_url, "--older-than", "7d", "--schema", "elsewhere"
    )

    assert (code, out) == (1, "")
    assert_one_line_error(err, "no tcc_barrier table in schema 'elsewhere'")
