"""The TCC barrier against a real Postgres: repeats, empty compensation, suspension,
atomicity with the business change, concurrent duplicates and purging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from participants import barrier, schema
from participants.barrier import Outcome

SCHEMA = "bt"
GID = "g-1"
BRANCH = "b-1"


class BusinessError(Exception):
    """Raised by a handler after its business change, to force a rollback."""


@pytest.fixture
async def pool(database_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_things.sql").write_text("CREATE TABLE things (n int);\n")
    await schema.migrate(database_url, SCHEMA, migrations)
    pool = await schema.connect_pool(database_url, SCHEMA, max_size=25)
    try:
        yield pool
    finally:
        await pool.close()


async def enter(pool: asyncpg.Pool, phase: str, gid: str = GID, branch: str = BRANCH) -> Outcome:
    """One handler call: the barrier in a transaction of its own, with no business change."""
    async with pool.acquire() as conn, conn.transaction():
        return await barrier.enter(conn, gid, branch, phase)


async def barrier_rows(pool: asyncpg.Pool) -> list[tuple[str, str, str, str]]:
    rows = await pool.fetch(
        "SELECT gid, branch_id, phase, written_by FROM tcc_barrier ORDER BY gid, branch_id, phase"
    )
    return [(r["gid"], r["branch_id"], r["phase"], r["written_by"]) for r in rows]


async def things(pool: asyncpg.Pool) -> list[int]:
    return [r["n"] for r in await pool.fetch("SELECT n FROM things ORDER BY n")]


# --- the normal path and repeats ----------------------------------------------------


async def test_enter__first_try__runs(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "try") is Outcome.RUN
    assert await barrier_rows(pool) == [(GID, BRANCH, "try", "try")]


async def test_enter__repeated_try__is_a_duplicate(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "try") is Outcome.RUN

    assert await enter(pool, "try") is Outcome.DUPLICATE
    assert await enter(pool, "try") is Outcome.DUPLICATE


async def test_enter__first_confirm_after_try__runs(pool: asyncpg.Pool) -> None:
    await enter(pool, "try")

    assert await enter(pool, "confirm") is Outcome.RUN
    assert await barrier_rows(pool) == [
        (GID, BRANCH, "confirm", "confirm"),
        (GID, BRANCH, "try", "try"),
    ]


async def test_enter__repeated_confirm__is_a_duplicate(pool: asyncpg.Pool) -> None:
    await enter(pool, "try")
    assert await enter(pool, "confirm") is Outcome.RUN

    assert await enter(pool, "confirm") is Outcome.DUPLICATE
    assert await enter(pool, "confirm") is Outcome.DUPLICATE


async def test_enter__cancel_after_try__runs(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "try") is Outcome.RUN

    assert await enter(pool, "cancel") is Outcome.RUN
    assert await barrier_rows(pool) == [
        (GID, BRANCH, "cancel", "cancel"),
        (GID, BRANCH, "try", "try"),
    ]


async def test_enter__repeated_cancel__is_a_duplicate(pool: asyncpg.Pool) -> None:
    await enter(pool, "try")
    assert await enter(pool, "cancel") is Outcome.RUN

    assert await enter(pool, "cancel") is Outcome.DUPLICATE
    assert await enter(pool, "cancel") is Outcome.DUPLICATE


async def test_enter__try_repeated_after_its_cancel__is_a_duplicate_not_a_suspension(
    pool: asyncpg.Pool,
) -> None:
    await enter(pool, "try")
    await enter(pool, "cancel")

    assert await enter(pool, "try") is Outcome.DUPLICATE


async def test_enter__branches_and_transactions__are_kept_apart(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "try", gid="g-1", branch="b-1") is Outcome.RUN
    assert await enter(pool, "try", gid="g-1", branch="b-2") is Outcome.RUN
    assert await enter(pool, "try", gid="g-2", branch="b-1") is Outcome.RUN
    assert await enter(pool, "cancel", gid="g-2", branch="b-2") is Outcome.EMPTY_COMPENSATION


# --- empty compensation and suspension -----------------------------------------------


async def test_enter__cancel_without_try__is_an_empty_compensation(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "cancel") is Outcome.EMPTY_COMPENSATION
    # The cancel holds the try slot itself, marked as written by the cancel.
    assert await barrier_rows(pool) == [
        (GID, BRANCH, "cancel", "cancel"),
        (GID, BRANCH, "try", "cancel"),
    ]


async def test_enter__try_after_an_empty_compensation__is_suspended(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "cancel") is Outcome.EMPTY_COMPENSATION

    assert await enter(pool, "try") is Outcome.SUSPENDED
    assert await enter(pool, "try") is Outcome.SUSPENDED


async def test_enter__cancel_repeated_after_an_empty_compensation__is_a_duplicate(
    pool: asyncpg.Pool,
) -> None:
    assert await enter(pool, "cancel") is Outcome.EMPTY_COMPENSATION

    assert await enter(pool, "cancel") is Outcome.DUPLICATE


# --- saga and message phases: action behaves as try, compensate as cancel ----------------


async def test_enter__first_action__runs(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "action") is Outcome.RUN
    assert await barrier_rows(pool) == [(GID, BRANCH, "action", "action")]


async def test_enter__repeated_action__is_a_duplicate(pool: asyncpg.Pool) -> None:
    # A message step delivered at least once: every repeat finds the first one's row.
    assert await enter(pool, "action") is Outcome.RUN

    assert await enter(pool, "action") is Outcome.DUPLICATE
    assert await enter(pool, "action") is Outcome.DUPLICATE
    assert await barrier_rows(pool) == [(GID, BRANCH, "action", "action")]


async def test_enter__compensate_after_action__runs(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "action") is Outcome.RUN

    assert await enter(pool, "compensate") is Outcome.RUN
    assert await barrier_rows(pool) == [
        (GID, BRANCH, "action", "action"),
        (GID, BRANCH, "compensate", "compensate"),
    ]


async def test_enter__repeated_compensate__is_a_duplicate(pool: asyncpg.Pool) -> None:
    await enter(pool, "action")
    assert await enter(pool, "compensate") is Outcome.RUN

    assert await enter(pool, "compensate") is Outcome.DUPLICATE
    assert await enter(pool, "compensate") is Outcome.DUPLICATE


async def test_enter__compensate_without_action__is_an_empty_compensation(
    pool: asyncpg.Pool,
) -> None:
    # A saga compensates every step whose action was started, the failing one included:
    # an action lost on the way is compensated all the same.
    assert await enter(pool, "compensate") is Outcome.EMPTY_COMPENSATION
    assert await barrier_rows(pool) == [
        (GID, BRANCH, "action", "compensate"),
        (GID, BRANCH, "compensate", "compensate"),
    ]
    assert await enter(pool, "compensate") is Outcome.DUPLICATE


async def test_enter__action_after_its_compensation__is_suspended(pool: asyncpg.Pool) -> None:
    assert await enter(pool, "compensate") is Outcome.EMPTY_COMPENSATION

    assert await enter(pool, "action") is Outcome.SUSPENDED
    assert await enter(pool, "action") is Outcome.SUSPENDED


async def test_enter__action_repeated_after_its_compensation__is_a_duplicate(
    pool: asyncpg.Pool,
) -> None:
    await enter(pool, "action")
    await enter(pool, "compensate")

    assert await enter(pool, "action") is Outcome.DUPLICATE


async def test_enter__saga_and_tcc_phases_of_one_branch__do_not_mix(pool: asyncpg.Pool) -> None:
    # A cancel claims the try slot, not the action slot, and a compensate the reverse.
    assert await enter(pool, "cancel") is Outcome.EMPTY_COMPENSATION
    assert await enter(pool, "action") is Outcome.RUN
    assert await enter(pool, "compensate", branch="b-2") is Outcome.EMPTY_COMPENSATION
    assert await enter(pool, "try", branch="b-2") is Outcome.RUN


async def test_enter__rolled_back_action__runs_again_on_the_retry(pool: asyncpg.Pool) -> None:
    async def failing_delivery() -> None:
        async with pool.acquire() as conn, conn.transaction():
            assert await barrier.enter(conn, GID, BRANCH, "action") is Outcome.RUN
            await conn.execute("INSERT INTO things (n) VALUES (7)")
            raise BusinessError("the mail server said no")

    with pytest.raises(BusinessError):
        await failing_delivery()

    assert await barrier_rows(pool) == []
    assert await things(pool) == []
    assert await enter(pool, "action") is Outcome.RUN


async def test_enter__twenty_concurrent_actions__run_exactly_once(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO things (n) VALUES (0)")
    start = asyncio.Barrier(20)

    outcomes = await asyncio.gather(*(_counted_call(pool, "action", start) for _ in range(20)))

    assert outcomes.count(Outcome.RUN) == 1
    assert outcomes.count(Outcome.DUPLICATE) == 19
    assert await things(pool) == [1]


@pytest.mark.parametrize("round_", range(10))
async def test_enter__concurrent_action_and_compensate__never_both_run_and_empty(
    pool: asyncpg.Pool, round_: int
) -> None:
    gid = f"saga-race-{round_}"

    async def call(phase: str) -> Outcome:
        async with pool.acquire() as conn:
            await start.wait()
            async with conn.transaction():
                outcome = await barrier.enter(conn, gid, BRANCH, phase)
                await asyncio.sleep(0.01)
                return outcome

    start = asyncio.Barrier(2)
    action, compensate = await asyncio.gather(call("action"), call("compensate"))

    assert (action, compensate) in {
        (Outcome.RUN, Outcome.RUN),  # action first: the compensation undoes it
        (Outcome.SUSPENDED, Outcome.EMPTY_COMPENSATION),  # compensation first: a no-op action
    }


async def test_migration__a_barrier_made_before_sagas__takes_the_new_phases(
    database_url: str, tmp_path: Path
) -> None:
    # A service migrated by the first barrier migration alone gets the second on its next
    # start, and its old rows stay.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute('CREATE SCHEMA "old_svc"; SET search_path TO "old_svc"')
        (first,) = [m for m in schema.load_migrations(schema.BARRIER_MIGRATIONS) if m.version == 1]
        await conn.execute(first.sql)
        await conn.execute(
            "CREATE TABLE schema_migrations (source text, version integer, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, version));"
            " INSERT INTO schema_migrations (source, version, name)"
            " VALUES ('barrier', 1, 'barrier');"
            " INSERT INTO tcc_barrier (gid, branch_id, phase, written_by)"
            " VALUES ('old', 'b-1', 'try', 'try')"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO tcc_barrier (gid, branch_id, phase, written_by)"
                " VALUES ('x', 'b', 'action', 'action')"
            )
    finally:
        await conn.close()
    applied = await schema.migrate(database_url, "old_svc", tmp_path)  # no service migrations

    assert "old_svc:barrier:0002_barrier_saga" in applied
    pool = await schema.connect_pool(database_url, "old_svc")
    try:
        assert await enter(pool, "action", gid="x") is Outcome.RUN
        assert await enter(pool, "try", gid="old") is Outcome.DUPLICATE
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "INSERT INTO tcc_barrier (gid, branch_id, phase, written_by)"
                " VALUES ('y', 'b', 'prepare', 'prepare')"
            )
    finally:
        await pool.close()


# --- atomicity with the business change ----------------------------------------------


async def test_enter__business_change_that_raises__rolls_back_with_the_barrier_row(
    pool: asyncpg.Pool,
) -> None:
    seen: list[Outcome] = []

    async def failing_handler() -> None:
        async with pool.acquire() as conn, conn.transaction():
            seen.append(await barrier.enter(conn, GID, BRANCH, "try"))
            await conn.execute("INSERT INTO things (n) VALUES (1)")
            raise BusinessError("the handler failed after its change")

    with pytest.raises(BusinessError):
        await failing_handler()

    assert seen == [Outcome.RUN]

    assert await things(pool) == []
    assert await barrier_rows(pool) == []

    # The coordinator's retry is taken for a first call again, and this time commits.
    async with pool.acquire() as conn, conn.transaction():
        outcome = await barrier.enter(conn, GID, BRANCH, "try")
        if outcome is Outcome.RUN:
            await conn.execute("INSERT INTO things (n) VALUES (1)")
    assert outcome is Outcome.RUN
    assert await things(pool) == [1]
    assert await barrier_rows(pool) == [(GID, BRANCH, "try", "try")]


async def test_enter__rolled_back_empty_compensation__does_not_suspend_a_later_try(
    pool: asyncpg.Pool,
) -> None:
    seen: list[Outcome] = []

    async def failing_handler() -> None:
        async with pool.acquire() as conn, conn.transaction():
            seen.append(await barrier.enter(conn, GID, BRANCH, "cancel"))
            raise BusinessError("cancel handler crashed")

    with pytest.raises(BusinessError):
        await failing_handler()

    assert seen == [Outcome.EMPTY_COMPENSATION]

    assert await enter(pool, "try") is Outcome.RUN


# --- concurrent duplicates -------------------------------------------------------------


async def _counted_call(pool: asyncpg.Pool, phase: str, start: asyncio.Barrier) -> Outcome:
    """A handler: the barrier, then the business change (one counter bump) only on RUN."""
    async with pool.acquire() as conn:
        await start.wait()  # every call holds its own connection before any goes on
        async with conn.transaction():
            outcome = await barrier.enter(conn, GID, BRANCH, phase)
            if outcome is Outcome.RUN:
                await conn.execute("UPDATE things SET n = n + 1")
            # Hold the transaction open a little, so the others pile up on the key.
            await asyncio.sleep(0.01)
            return outcome


async def test_enter__twenty_concurrent_confirms__run_exactly_once(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO things (n) VALUES (0)")
    await enter(pool, "try")
    start = asyncio.Barrier(20)

    outcomes = await asyncio.gather(*(_counted_call(pool, "confirm", start) for _ in range(20)))

    assert outcomes.count(Outcome.RUN) == 1
    assert outcomes.count(Outcome.DUPLICATE) == 19
    assert await things(pool) == [1]


async def test_enter__twenty_concurrent_tries__run_exactly_once(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO things (n) VALUES (0)")
    start = asyncio.Barrier(20)

    outcomes = await asyncio.gather(*(_counted_call(pool, "try", start) for _ in range(20)))

    assert outcomes.count(Outcome.RUN) == 1
    assert outcomes.count(Outcome.DUPLICATE) == 19
    assert await things(pool) == [1]


@pytest.mark.parametrize("round_", range(10))
async def test_enter__concurrent_try_and_cancel__never_both_run_and_empty_compensation(
    pool: asyncpg.Pool, round_: int
) -> None:
    gid = f"race-{round_}"

    async def call(phase: str) -> Outcome:
        async with pool.acquire() as conn:
            await start.wait()
            async with conn.transaction():
                outcome = await barrier.enter(conn, gid, BRANCH, phase)
                await asyncio.sleep(0.01)
                return outcome

    start = asyncio.Barrier(2)
    try_outcome, cancel_outcome = await asyncio.gather(call("try"), call("cancel"))

    assert (try_outcome, cancel_outcome) in {
        (Outcome.RUN, Outcome.RUN),  # try first: the cancel undoes it
        (Outcome.SUSPENDED, Outcome.EMPTY_COMPENSATION),  # cancel first: the try is a no-op
    }
    written_by = await pool.fetchval(
        "SELECT written_by FROM tcc_barrier WHERE gid = $1 AND phase = 'try'", gid
    )
    assert written_by == ("try" if try_outcome is Outcome.RUN else "cancel")


# --- misuse ----------------------------------------------------------------------------


async def test_enter__outside_a_transaction__raises_runtime_error(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the business transaction"):
            await barrier.enter(conn, GID, BRANCH, "try")

    assert await barrier_rows(pool) == []


async def test_enter__unknown_phase__raises_value_error(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match="unknown phase 'prepare'"):
            await barrier.enter(conn, GID, BRANCH, "prepare")

    assert await barrier_rows(pool) == []


# --- purge -------------------------------------------------------------------------------


async def _fill(pool: asyncpg.Pool, old: int, recent: int) -> None:
    for i in range(old):
        await enter(pool, "try", gid=f"old-{i:03d}")
    await pool.execute("UPDATE tcc_barrier SET created_at = now() - interval '2 days'")
    for i in range(recent):
        await enter(pool, "try", gid=f"new-{i:03d}")


async def test_purge__deletes_old_rows_in_batches_and_keeps_recent_ones(
    pool: asyncpg.Pool,
) -> None:
    await _fill(pool, old=25, recent=4)

    async with pool.acquire() as conn:
        deleted = await barrier.purge(conn, older_than_s=86400, batch=10)

    assert deleted == 25
    left = await pool.fetch("SELECT gid FROM tcc_barrier ORDER BY gid")
    assert [r["gid"] for r in left] == [f"new-{i:03d}" for i in range(4)]


async def test_purge__batch_that_divides_the_old_rows_exactly__deletes_them_all(
    pool: asyncpg.Pool,
) -> None:
    await _fill(pool, old=20, recent=1)

    async with pool.acquire() as conn:
        deleted = await barrier.purge(conn, older_than_s=86400, batch=5)

    assert deleted == 20
    assert await pool.fetchval("SELECT count(*) FROM tcc_barrier") == 1


async def test_purge__nothing_old_enough__deletes_nothing(pool: asyncpg.Pool) -> None:
    await _fill(pool, old=3, recent=2)

    async with pool.acquire() as conn:
        # Two-day-old rows are younger than the three-day threshold.
        deleted = await barrier.purge(conn, older_than_s=3 * 86400)

    assert deleted == 0
    assert await pool.fetchval("SELECT count(*) FROM tcc_barrier") == 5


async def test_purge__zero_batch__is_refused_instead_of_looping_forever(
    pool: asyncpg.Pool,
) -> None:
    await _fill(pool, old=3, recent=1)

    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="batch"):
            await asyncio.wait_for(barrier.purge(conn, older_than_s=86400, batch=0), 2)
