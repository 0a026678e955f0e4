"""The transactional outbox and its relay against a real Postgres: a message is handed off if
and only if its transaction commits, exactly the body it was added with, oldest first, by one
relay at a time; the relay retries while the coordinator is away, wakes when a row is added,
leaves refused messages for an operator and prunes old handed-off rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from coordinator.devtools.children import free_port
from participants import outbox, schema
from participants.client import CoordinatorClient, MessageStep
from participants.outbox_relay import Relay, RelaySettings, running
from tests.conftest import CoordinatorClient as CoordinatorUnderTest
from tests.helpers import eventually
from tests.participant_server import FakeParticipant
from tests.participants.messages import FakeMessages, messages_api_or_xfail

SCHEMA = "shop"
FAST = RelaySettings(retry_initial_s=0.1, retry_max_s=0.4, scan_every_s=0.5, listen_check_s=0.5)


class BusinessError(Exception):
    pass


@pytest.fixture
async def pool(database_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_orders.sql").write_text("CREATE TABLE orders (id text PRIMARY KEY);\n")
    await schema.migrate(database_url, SCHEMA, migrations)
    pool = await schema.connect_pool(database_url, SCHEMA, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeMessages]:
    intake = FakeMessages()
    await intake.start()
    try:
        yield intake
    finally:
        await intake.stop()


@pytest.fixture
async def client(fake: FakeMessages) -> AsyncIterator[CoordinatorClient]:
    async with CoordinatorClient(fake.base, service="shop", timeout_s=5) as c:
        yield c


def step(n: int = 0) -> MessageStep:
    return MessageStep("mail", url="http://127.0.0.1:9/notify/action", payload={"n": n})


async def place(pool: asyncpg.Pool, order: str, *, fail: bool = False) -> None:
    """The service's own transaction: the order and its message, committed together."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders (id) VALUES ($1)", order)
        await outbox.add(conn, f"{order}.mail", [step()], service="shop")
        if fail:
            raise BusinessError("the order failed after its message was added")


async def rows(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    found = await pool.fetch(
        "SELECT gid, status, attempts, last_error, next_attempt_at > now() AS later"
        " FROM tcc_outbox ORDER BY id"
    )
    return [dict(r) for r in found]


async def settled(relay: Relay) -> int:
    """The relay's pass count once it has stayed the same for half a second."""
    for _ in range(40):
        passes = relay.passes
        await asyncio.sleep(0.5)
        if relay.passes == passes:
            return passes
    raise AssertionError(f"the relay never stopped passing: {relay.passes} passes")


# --- add --------------------------------------------------------------------------------


async def test_add__outside_a_transaction__is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the service's database transaction"):
            await outbox.add(conn, "g", [step()])

    assert await rows(pool) == []


async def test_add__committed_with_the_business_change__stores_the_request(
    pool: asyncpg.Pool,
) -> None:
    await place(pool, "o-1")

    stored = await pool.fetchval("SELECT request FROM tcc_outbox WHERE gid = 'o-1.mail'")
    assert json.loads(stored) == {
        "gid": "o-1.mail",
        "service": "shop",
        "steps": [
            {"branch_id": "mail", "url": "http://127.0.0.1:9/notify/action", "payload": {"n": 0}}
        ],
        "concurrent": False,
        "prepared": False,
    }
    assert [(r["gid"], r["status"], r["attempts"]) for r in await rows(pool)] == [
        ("o-1.mail", "pending", 0)
    ]


async def test_add__rolled_back__leaves_nothing_and_the_relay_sends_nothing(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    with pytest.raises(BusinessError):
        await place(pool, "o-1", fail=True)

    assert await rows(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    assert await Relay(pool, client, FAST).run_once() == 0
    assert fake.received == []


async def test_add__same_gid_and_message_twice__is_one_row(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        assert await outbox.add(conn, "g-1", [step(1)]) == "g-1"
        assert await outbox.add(conn, "g-1", [step(1)]) == "g-1"
    assert len(await rows(pool)) == 1


async def test_add__same_gid_with_another_message__raises_and_keeps_the_transaction_usable(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, "g-1", [step(1)])
        with pytest.raises(outbox.DuplicateMessage, match="g-1"):
            await outbox.add(conn, "g-1", [step(2)])
        await conn.execute("INSERT INTO orders (id) VALUES ('still-fine')")

    assert [r["gid"] for r in await rows(pool)] == ["g-1"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_add__without_a_gid__makes_one_up(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        first = await outbox.add(conn, None, [step()])
        second = await outbox.add(conn, None, [step()])

    assert first != second
    assert first.startswith("msg-")
    assert [r["gid"] for r in await rows(pool)] == [first, second]


async def test_add__no_steps__is_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ValueError, match="at least one step"):
            await outbox.add(conn, "g", [])


# --- the relay --------------------------------------------------------------------------


async def test_relay__hands_off_the_stored_body_and_marks_the_row(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    await place(pool, "o-1")
    stored = json.loads(await pool.fetchval("SELECT request FROM tcc_outbox"))

    assert await Relay(pool, client, FAST).run_once() == 1

    assert fake.received == [stored]
    (row,) = await rows(pool)
    assert (row["status"], row["attempts"], row["last_error"]) == ("handed_off", 1, None)
    assert await Relay(pool, client, FAST).run_once() == 0  # nothing left
    assert len(fake.received) == 1


async def test_relay__takes_a_small_batch_oldest_first(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    for n in range(25):
        await place(pool, f"o-{n:02d}")
    relay = Relay(pool, client, RelaySettings(batch=10))

    assert await relay.run_once() == 10
    assert sorted(fake.gids()) == [f"o-{n:02d}.mail" for n in range(10)]
    assert await relay.run_once() == 10
    assert await relay.run_once() == 5
    assert sorted(fake.gids()) == [f"o-{n:02d}.mail" for n in range(25)]


async def test_relay__coordinator_answering_503__keeps_the_row_and_backs_off(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    await place(pool, "o-1")
    fake.down = True
    relay = Relay(pool, client, RelaySettings(retry_initial_s=30, retry_max_s=60))

    assert await relay.run_once() == 1

    (row,) = await rows(pool)
    assert (row["status"], row["attempts"], row["later"]) == ("pending", 1, True)
    assert "503" in row["last_error"]
    # Not due again before its backoff (15 to 30 s here): the next pass takes nothing.
    assert await relay.run_once() == 0
    fake.down = False
    await pool.execute("UPDATE tcc_outbox SET next_attempt_at = now()")  # time passes
    assert await relay.run_once() == 1
    assert [r["status"] for r in await rows(pool)] == ["handed_off"]
    assert fake.gids() == ["o-1.mail"]


async def test_relay__coordinator_unreachable__retries_until_it_is_back(
    pool: asyncpg.Pool,
) -> None:
    port = free_port()  # nothing listens here yet
    await place(pool, "o-1")
    await place(pool, "o-2")
    async with CoordinatorClient(f"http://127.0.0.1:{port}", timeout_s=2) as unreachable:
        relay = Relay(pool, unreachable, FAST)
        async with running(relay):
            await eventually(lambda: rows(pool), lambda r: all(x["attempts"] >= 3 for x in r))
            assert all(r["status"] == "pending" for r in await rows(pool))
            assert "unreachable" in (await rows(pool))[0]["last_error"]
            back = FakeMessages()
            await back.start(port)
            try:
                # Backoff capped at 0.4 s: the coordinator's return is noticed within a second.
                await eventually(
                    lambda: rows(pool),
                    lambda r: all(x["status"] == "handed_off" for x in r),
                    timeout_s=10,
                )
                assert sorted(back.gids()) == ["o-1.mail", "o-2.mail"]
            finally:
                await back.stop()


def test_backoff__doubles_from_the_initial_wait_with_jitter_and_is_capped() -> None:
    s = RelaySettings(retry_initial_s=1, retry_max_s=8)
    for attempts, ceiling in ((1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (50, 8), (10_000, 8)):
        waits = [s.backoff_s(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempts, min(waits))
        assert len(set(waits)) > 100  # jittered, not in step


async def test_relay__gid_taken_by_another_message__is_refused_and_kept_for_an_operator(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    fake.messages["o-1.mail"] = {"gid": "o-1.mail", "steps": [{"branch_id": "other"}]}
    await place(pool, "o-1")
    relay = Relay(pool, client, FAST)

    assert await relay.run_once() == 1

    (row,) = await rows(pool)
    assert (row["status"], row["attempts"]) == ("refused", 1)
    assert "409" in row["last_error"]
    assert relay.refused == 1
    assert await relay.run_once() == 0  # never retried by itself
    # Once the clash is sorted out, an operator puts it back.
    del fake.messages["o-1.mail"]
    async with pool.acquire() as conn:
        assert await outbox.requeue(conn, "o-1.mail")
        assert not await outbox.requeue(conn, "o-1.mail")  # it is pending now
    assert await relay.run_once() == 1
    assert [r["status"] for r in await rows(pool)] == ["handed_off"]


async def test_relay__hand_off_repeated_after_a_lost_mark__sends_the_same_body_again(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    # As after a crash between the coordinator's answer and the mark's commit.
    await place(pool, "o-1")
    await Relay(pool, client, FAST).run_once()
    await pool.execute("UPDATE tcc_outbox SET status = 'pending', handed_off_at = NULL")

    await Relay(pool, client, FAST).run_once()

    assert fake.received[0] == fake.received[1]
    assert list(fake.messages) == ["o-1.mail"]
    assert [r["status"] for r in await rows(pool)] == ["handed_off"]


async def test_relay__wakes_when_a_row_is_committed_not_at_its_next_scan(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages, database_url: str
) -> None:
    settings = RelaySettings(scan_every_s=120, listen_check_s=0.5)
    relay = Relay(pool, client, settings, dsn=database_url, schema=SCHEMA)
    async with running(relay):
        await asyncio.wait_for(relay.listening.wait(), 10)
        before = await settled(relay)  # the passes at start (and after the LISTEN) are over
        with pytest.raises(BusinessError):
            await place(pool, "rolled-back", fail=True)
        await asyncio.sleep(0.5)
        assert relay.passes == before  # a rollback notifies nobody
        await place(pool, "o-1")
        await eventually(lambda: rows(pool), lambda r: r[0]["status"] == "handed_off", 5)

    assert fake.gids() == ["o-1.mail"]


async def test_relay__notification_for_another_schema__does_not_count_as_its_own(
    pool: asyncpg.Pool, client: CoordinatorClient, database_url: str
) -> None:
    relay = Relay(pool, client, RelaySettings(scan_every_s=120), dsn=database_url, schema=SCHEMA)
    async with running(relay):
        await asyncio.wait_for(relay.listening.wait(), 10)
        before = await settled(relay)  # the passes at start (and after the LISTEN) are over
        await pool.execute(f"SELECT pg_notify('{outbox.CHANNEL}', 'another_service')")
        await asyncio.sleep(0.5)
        assert relay.passes == before
        await pool.execute(f"SELECT pg_notify('{outbox.CHANNEL}', '{SCHEMA}')")
        await eventually(lambda: asyncio.sleep(0, relay.passes), lambda n: n > before, 5)


async def test_relay__two_relays_at_once__hand_off_each_message_once(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    for n in range(40):
        await place(pool, f"o-{n:02d}")
    fake.delay_s = 0.02  # hand-offs overlap
    one = Relay(pool, client, RelaySettings(batch=5))
    two = Relay(pool, client, RelaySettings(batch=5))

    async def drain(relay: Relay) -> None:
        for _ in range(100):
            if await relay.run_once() == 0 and not await pool.fetchval(
                "SELECT count(*) FROM tcc_outbox WHERE status = 'pending'"
            ):
                return

    await asyncio.gather(drain(one), drain(two))

    assert sorted(fake.gids()) == [f"o-{n:02d}.mail" for n in range(40)]  # none twice
    assert one.handed_off > 0
    assert two.handed_off > 0
    assert one.handed_off + two.handed_off == 40


async def test_relay__database_gone_for_a_while__carries_on(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    relay = Relay(pool, client, FAST)
    await pool.execute("ALTER TABLE tcc_outbox RENAME TO tcc_outbox_away")
    async with running(relay):
        await asyncio.sleep(0.6)  # passes fail meanwhile
        await pool.execute("ALTER TABLE tcc_outbox_away RENAME TO tcc_outbox")
        await place(pool, "o-1")
        await eventually(lambda: rows(pool), lambda r: r[0]["status"] == "handed_off", 10)
    assert fake.gids() == ["o-1.mail"]


# --- pruning ----------------------------------------------------------------------------


async def test_prune__deletes_only_old_handed_off_rows(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    for n in range(12):
        await place(pool, f"old-{n:02d}")
    await Relay(pool, client, RelaySettings(batch=20)).run_once()
    await pool.execute("UPDATE tcc_outbox SET handed_off_at = now() - interval '8 days'")
    await place(pool, "recent")
    await Relay(pool, client, FAST).run_once()
    await place(pool, "pending")
    await pool.execute("UPDATE tcc_outbox SET created_at = now() - interval '30 days'")

    async with pool.acquire() as conn:
        assert await outbox.prune(conn, older_than_s=7 * 86400, batch=5) == 12

    assert [(r["gid"], r["status"]) for r in await rows(pool)] == [
        ("recent.mail", "handed_off"),
        ("pending.mail", "pending"),
    ]


async def test_relay__prunes_on_its_own_after_the_retention(
    pool: asyncpg.Pool, client: CoordinatorClient, fake: FakeMessages
) -> None:
    await place(pool, "old")
    await Relay(pool, client, FAST).run_once()
    await pool.execute("UPDATE tcc_outbox SET handed_off_at = now() - interval '2 hours'")
    settings = RelaySettings(keep_for_s=3600, scan_every_s=0.2)
    async with running(Relay(pool, client, settings)):
        await eventually(lambda: rows(pool), lambda r: r == [], 5)


def test_settings__from_the_environment() -> None:
    assert RelaySettings.from_env({}).keep_for_s == 7 * 86400
    assert RelaySettings.from_env({"TCC_OUTBOX_KEEP_FOR": "36h"}).keep_for_s == 36 * 3600
    assert RelaySettings.from_env({"TCC_OUTBOX_KEEP_FOR": "off"}).keep_for_s is None
    with pytest.raises(ValueError, match="TCC_OUTBOX_KEEP_FOR"):
        RelaySettings.from_env({"TCC_OUTBOX_KEEP_FOR": "a while"})


# --- with the real coordinator ----------------------------------------------------------


async def test_relay__to_the_real_coordinator__one_message_delivered_once_even_if_repeated(
    pool: asyncpg.Pool, coordinator: CoordinatorUnderTest, participant: FakeParticipant
) -> None:
    await messages_api_or_xfail(coordinator.base)
    url = f"{participant.base_url()}/notify/action"
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, "o-1.mail", [MessageStep("mail", url=url, payload={"to": "a"})])
    async with CoordinatorClient(coordinator.base, service="shop") as real:
        await Relay(pool, real, FAST).run_once()
        # A hand-off repeated after a crash: the same body again.
        await pool.execute("UPDATE tcc_outbox SET status = 'pending', handed_off_at = NULL")
        await Relay(pool, real, FAST).run_once()
        assert [r["status"] for r in await rows(pool)] == ["handed_off"]
        state = await real.get("o-1.mail")
        assert state.kind == "msg"
        await eventually(
            lambda: asyncio.sleep(0, participant.calls_for("action", gid="o-1.mail")),
            lambda calls: len(calls) >= 1,
        )
        await asyncio.sleep(0.5)
    calls = participant.calls_for("action", gid="o-1.mail")
    assert len(calls) == 1, calls
    assert calls[0].body["payload"] == {"to": "a"}
    assert calls[0].headers["Idempotency-Key"] == "o-1.mail:mail:action"
