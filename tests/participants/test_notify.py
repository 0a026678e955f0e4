"""The notify sample and the SMTP sink, in process, over real SMTP and a real Postgres: one
mail per message step however often it is delivered, 2xx only once the mail server took it,
and a deterministic Message-ID the sink keeps one file for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aiosmtpd.smtp import SMTP

from coordinator.devtools.children import free_port
from participants import mailsink
from participants.notify.app import Smtp, create_app, message_id

MAIL = {"to": "alice@example.test", "subject": "Your order o-1 is confirmed", "body": "Hi!\n"}


class Sink:
    """The sink's SMTP server in this process, on a port that can be closed and reopened."""

    def __init__(self, store: Path, port: int) -> None:
        self.store = store
        self.port = port
        self.handler = mailsink.Sink(mailsink.Store(store))
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="test-sink"), "127.0.0.1", self.port
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def files(self) -> list[Path]:
        return mailsink.stored_mails(self.store)

    def deliveries(self) -> list[dict[str, Any]]:
        return mailsink.read_received(self.store)


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[Sink]:
    s = Sink(tmp_path / "mail", free_port())
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def notify(database_url: str, sink: Sink) -> AsyncIterator[str]:
    app = create_app(database_url, Smtp(port=sink.port, timeout_s=5))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/notify/action"))
    finally:
        await server.close()


async def deliver(
    url: str, gid: str = "o-1.mail", branch: str = "mail", payload: Any = None
) -> tuple[int, Any]:
    body = {"gid": gid, "branch_id": branch, "phase": "action", "payload": payload or MAIL}
    headers = {"X-TCC-Gid": gid, "X-TCC-Branch": branch, "X-TCC-Phase": "action"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.post(url, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_delivery__sends_one_mail_with_a_deterministic_message_id(
    notify: str, sink: Sink
) -> None:
    status, body = await deliver(notify)

    assert status == 200, body
    assert body["outcome"] == "run"
    (stored,) = sink.files()
    mail = message_from_bytes(stored.read_bytes(), policy=default_policy)
    assert mail["To"] == "alice@example.test"
    assert mail["Subject"] == MAIL["subject"]
    assert mail["Message-ID"] == message_id("o-1.mail", "mail")
    assert mail.get_content().replace("\r\n", "\n") == "Hi!\n"
    assert [d["to"] for d in sink.deliveries()] == [["alice@example.test"]]


async def test_delivery__repeated__answers_200_and_sends_no_second_mail(
    notify: str, sink: Sink
) -> None:
    assert (await deliver(notify))[0] == 200

    status, body = await deliver(notify)
    again, _ = await deliver(notify)

    assert (status, body["outcome"], again) == (200, "duplicate", 200)
    assert len(sink.files()) == 1
    assert len(sink.deliveries()) == 1  # the server saw one mail, not three


async def test_delivery__concurrent_repeats__send_one_mail(notify: str, sink: Sink) -> None:
    sink.handler.reply_delay_s = 0.3  # the first send is still waiting when the others come

    answers = await asyncio.gather(*(deliver(notify) for _ in range(5)))

    assert [status for status, _ in answers] == [200] * 5
    assert sorted(body["outcome"] for _, body in answers) == ["duplicate"] * 4 + ["run"]
    assert len(sink.deliveries()) == 1


async def test_delivery__mail_server_down__answers_503_then_sends_once_it_is_back(
    notify: str, sink: Sink
) -> None:
    await sink.stop()

    status, body = await deliver(notify)

    assert status == 503
    assert "mail server" in body["error"]
    assert sink.files() == []
    await sink.start()
    assert (await deliver(notify))[0] == 200  # the coordinator's next delivery
    assert len(sink.files()) == 1
    assert len(sink.deliveries()) == 1


async def test_delivery__different_steps__are_different_mails(notify: str, sink: Sink) -> None:
    assert (await deliver(notify, gid="o-1.mail"))[0] == 200
    assert (await deliver(notify, gid="o-2.mail"))[0] == 200
    assert (await deliver(notify, gid="o-2.mail", branch="copy"))[0] == 200

    assert len(sink.files()) == 3


@pytest.mark.parametrize(
    "payload",
    [
        {"to": "not an address", "subject": "s", "body": "b"},
        {"to": "a@example.test, b@example.test", "subject": "s", "body": "b"},
        {"to": "a@example.test", "subject": "two\nlines", "body": "b"},
        {"to": "a@example.test", "subject": "s"},
        ["not", "an", "object"],
    ],
)
async def test_delivery__payload_that_is_no_mail__is_refused_and_sends_nothing(
    notify: str, sink: Sink, payload: Any
) -> None:
    status, _ = await deliver(notify, payload=payload)

    assert status == 409  # not 2xx: the coordinator keeps it, and parks it for an operator
    assert sink.files() == []


async def test_list_mails__shows_what_was_sent(notify: str, sink: Sink) -> None:
    await deliver(notify)
    url = notify.replace("/notify/action", "/mails")
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        (mail,) = await resp.json()

    assert mail["recipient"] == "alice@example.test"
    assert mail["message_id"] == message_id("o-1.mail", "mail")
    assert mail["transaction"].endswith("/v1/transactions/o-1.mail")


def test_message_id__is_stable_valid_and_unique() -> None:
    one = message_id("order:o-1", "mail")
    assert one == message_id("order:o-1", "mail")
    assert one.startswith("<order-o-1.mail.")
    assert one.endswith("@tcc-notify.invalid>")
    assert " " not in one
    assert ":" not in one.split("@")[0]
    # Gids that read alike once made safe are still told apart.
    assert message_id("order:o-1", "mail") != message_id("order-o-1", "mail")
    assert len(message_id("x" * 128, "b" * 64)) < 200


# --- the sink ---------------------------------------------------------------------------


def test_store__one_file_per_message_id_and_duplicates_counted(tmp_path: Path) -> None:
    store = mailsink.Store(tmp_path)
    raw = b"Message-ID: <a.1@x>\r\nTo: a@example.test\r\nSubject: Hi\r\n\r\nbody\r\n"

    first = store.put(raw, ["a@example.test"])
    second = store.put(raw, ["a@example.test"])
    other = store.put(raw.replace(b"<a.1@x>", b"<a.2@x>"), ["a@example.test"])

    assert (first.deliveries, first.duplicate) == (1, False)
    assert (second.deliveries, second.duplicate, second.file) == (2, True, first.file)
    assert other.file != first.file
    assert len(mailsink.stored_mails(tmp_path)) == 2
    assert [r["duplicate"] for r in mailsink.read_received(tmp_path)] == [False, True, False]
    # A sink restarted on the same store keeps counting.
    assert mailsink.Store(tmp_path).put(raw, ["a@example.test"]).deliveries == 3


def test_file_name__is_safe_for_any_message_id() -> None:
    name = mailsink.file_name("<../../etc/passwd@x>")
    assert "/" not in name
    assert name.endswith(".eml")
    assert mailsink.file_name("<a@x>") != mailsink.file_name("<a_x>")
