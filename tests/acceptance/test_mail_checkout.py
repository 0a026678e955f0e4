"""Where the e-mail goes, end to end through real processes (tcc up's stack: the coordinator,
the samples, notify and the SMTP sink): a confirmed checkout mails its customer exactly once,
a refused one mails nobody, and notify killed by SIGKILL while the mail server holds its mail
makes the mail late, never lost or doubled (the sink keeps one file for its Message-ID)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from coordinator.devtools.children import free_port
from coordinator.devtools.stack import Ports, Stack
from participants import mailsink
from participants.notify.app import message_id
from participants.order.app import mail_gid
from tests.helpers import eventually
from tests.participants.messages import messages_api_or_xfail

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    ports = Ports(
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        notify=free_port(),
        mailsink=free_port(),
    )
    running = Stack(tmp_path / "pgdata", ports, temporary=True)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


async def checkout(stack: Stack, customer: str, sku: str, qty: int) -> tuple[int, Any]:
    body = {"customer": customer, "sku": sku, "qty": qty}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.post(stack.url("order") + "/checkout", json=body) as resp,
    ):
        return resp.status, await resp.json()


async def get(url: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(url) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def deliveries_of(stack: Stack, mid: str) -> list[dict[str, Any]]:
    return [r for r in mailsink.read_received(stack.mail_dir) if r["message_id"] == mid]


async def received(stack: Stack, mid: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(deliveries_of, stack, mid)


async def test_checkout__confirmed_mails_the_customer_once__refused_mails_nobody(
    stack: Stack,
) -> None:
    await messages_api_or_xfail(stack.url("coordinator"))
    status, refused = await checkout(stack, "bob", "lamp", 1)  # bob has 20, a lamp costs 40
    assert status == 409, refused
    status, placed = await checkout(stack, "alice", "book", 2)
    assert status == 200, placed
    mid = message_id(mail_gid(placed["order_id"]), "mail")

    (delivery,) = await eventually(lambda: received(stack, mid), lambda d: len(d) >= 1, 60)
    await asyncio.sleep(2.0)  # a second delivery, were there one, would come within this

    assert await received(stack, mid) == [delivery]
    assert delivery["to"] == ["alice@example.test"]
    assert delivery["subject"] == f"Your order {placed['order_id']} is confirmed"
    (only,) = mailsink.stored_mails(stack.mail_dir)  # and nothing for bob's refused order
    mail = message_from_bytes(only.read_bytes(), policy=default_policy)
    assert mail["Message-ID"] == mid
    assert "2 x book, 24 paid" in mail.get_content()
    assert stack.database is not None
    conn = await asyncpg.connect(stack.database.url)
    try:
        outbox = await conn.fetch("SELECT gid, status FROM orders.tcc_outbox")
    finally:
        await conn.close()
    assert [(r["gid"], r["status"]) for r in outbox] == [
        (mail_gid(placed["order_id"]), "handed_off")
    ]
    status, message = await get(
        f"{stack.url('coordinator')}/v1/transactions/{mail_gid(placed['order_id'])}"
    )
    assert status == 200
    assert message["kind"] == "msg"
    status, _ = await get(
        f"{stack.url('coordinator')}/v1/transactions/{mail_gid(refused['order_id'])}"
    )
    assert status == 404


async def test_notify_killed_during_delivery__the_mail_is_late_never_lost_or_doubled(
    stack: Stack,
) -> None:
    await messages_api_or_xfail(stack.url("coordinator"))
    # The sink stores each mail, then holds its answer 3 s: notify is killed in between.
    sink = stack.services["mailsink"]
    sink.terminate()
    sink.command = [*sink.command, "--reply-delay-s", "3"]
    await stack.restart("mailsink")

    status, placed = await checkout(stack, "alice", "mug", 1)
    assert status == 200, placed
    gid = mail_gid(placed["order_id"])
    mid = message_id(gid, "mail")
    await eventually(lambda: received(stack, mid), lambda d: len(d) == 1, 60)
    stack.services["notify"].kill()  # the server has the mail; notify never heard it took it

    status, message = await get(f"{stack.url('coordinator')}/v1/transactions/{gid}")
    assert status == 200
    assert message["finished_at"] is None  # not delivered: the coordinator will call again
    await asyncio.sleep(1.0)  # a few failed deliveries while notify is down
    await stack.restart("notify")

    await eventually(
        lambda: get(f"{stack.url('notify')}/mails"),
        lambda answer: any(m["gid"] == gid for m in answer[1]),
        timeout_s=60,
    )
    deliveries = await received(stack, mid)
    # Sent again after the restart (the barrier row died with the killed notify), and kept
    # as the same one file: late, but one mail.
    assert [d["deliveries"] for d in deliveries] == [1, 2]
    assert len({d["file"] for d in deliveries}) == 1
    assert len(mailsink.stored_mails(stack.mail_dir)) == 1
    await asyncio.sleep(4.0)  # no third delivery once notify said it was sent
    assert len(await received(stack, mid)) == 2


async def test_notify_killed_while_sending__the_next_delivery_sends_the_same_message_id(
    stack: Stack,
) -> None:
    # The step delivered as the coordinator delivers it, without the coordinator: what notify
    # and the sink do with a SIGKILL between the server storing the mail and notify's commit.
    sink = stack.services["mailsink"]
    sink.terminate()
    sink.command = [*sink.command, "--reply-delay-s", "3"]
    await stack.restart("mailsink")
    step = {
        "gid": "order-9.mail",
        "branch_id": "mail",
        "phase": "action",
        "payload": {"to": "carol@example.test", "subject": "Your order 9", "body": "Hi\n"},
    }
    mid = message_id("order-9.mail", "mail")
    url = stack.url("notify") + "/notify/action"

    async def deliver() -> int:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(url, json=step) as resp,
        ):
            return resp.status

    cut_short = asyncio.create_task(deliver())
    await eventually(lambda: received(stack, mid), lambda d: len(d) == 1, 30)
    stack.services["notify"].kill()
    with pytest.raises(aiohttp.ClientError):
        await cut_short  # the caller (the coordinator) hears nothing: it will deliver again
    await stack.restart("notify")

    assert await deliver() == 200
    assert await deliver() == 200  # and a repeat after that is absorbed by the barrier

    deliveries = await received(stack, mid)
    assert [d["deliveries"] for d in deliveries] == [1, 2]
    assert len(mailsink.stored_mails(stack.mail_dir)) == 1
    status, mails = await get(stack.url("notify") + "/mails")
    assert status == 200
    assert [m["message_id"] for m in mails] == [mid]
