"""`tcc up` and `tcc demo` as a newcomer runs them: real processes, real ports on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from coordinator.devtools.children import clean_env, free_port
from participants import mailsink
from tests.helpers import eventually
from tests.participant_server import FakeParticipant, Reply
from tests.participants.messages import messages_api_or_xfail
from tests.processes import TCC, run_tcc_async

pytestmark = pytest.mark.slow


async def test_demo__plays_every_scenario_and_the_books_balance() -> None:
    code, out, err = await run_tcc_async("demo", env=clean_env(), timeout_s=240)
    assert code == 0, out + err
    for scenario in (
        "1. A successful order",
        "2. Refused for insufficient funds",
        "3. The wallet crashes during confirm",
        "4. The inventory hangs in try",
    ):
        assert scenario in out
    assert "cancelled (try_failed: payment)" in out
    assert "cancelled (timeout)" in out
    assert "wallet: killed (SIGKILL)" in out
    assert "Nothing lost or double-spent" in out
    # It cleans up after itself: the private stack's folder is gone.
    match = re.search(r"Starting a private stack .* in (\S+)", out)
    assert match is not None, out
    assert not await asyncio.to_thread(Path(match[1]).exists)


async def test_up__starts_everything_takes_an_order_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    coordinator_port, samples = free_port(), _sample_ports()
    proc = _start_up(tmp_path, coordinator_port, samples)
    try:
        order = f"http://127.0.0.1:{samples + 2}"
        notify = f"http://127.0.0.1:{samples + 3}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            deadline = time.monotonic() + 90
            coordinator = f"http://127.0.0.1:{coordinator_port}/readyz"
            while time.monotonic() < deadline:
                if await _answers(http, order + "/orders") and await _answers(http, coordinator):
                    break
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                await asyncio.sleep(0.3)
            body = {"customer": "alice", "sku": "book", "qty": 2}
            async with http.post(order + "/checkout", json=body) as resp:
                assert resp.status == 200
                placed = await resp.json()
            assert placed["transaction"] == "confirmed"
            async with http.get(f"http://127.0.0.1:{samples}/accounts/alice") as resp:
                assert (await resp.json())["balance"] == 1000 - 24
            url = f"http://127.0.0.1:{coordinator_port}/v1/transactions/{placed['order_id']}"
            async with http.get(url) as resp:
                assert (await resp.json())["status"] == "confirmed"
            async with http.get(f"http://127.0.0.1:{coordinator_port}/ui/") as resp:
                assert resp.status == 200
                assert "Authentication is off" in await resp.text()
            # The mail path: a message step delivered to notify (twice, as a coordinator may)
            # goes out over SMTP to the sink once, and tcc up says so.
            step = {
                "gid": "hello.mail",
                "branch_id": "mail",
                "phase": "action",
                "payload": {"to": "carol@example.test", "subject": "Hello", "body": "Hi\n"},
            }
            for _ in range(2):
                async with http.post(f"{notify}/notify/action", json=step) as resp:
                    assert resp.status == 200
            await asyncio.sleep(1.5)  # tcc up reads the sink's log every second
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    mail_dir = tmp_path / "mail"
    assert f"notify       {notify}" in out
    assert f"stored in {mail_dir}" in out
    # (The order's own confirmation to alice may be announced too, once messages flow.)
    line = _the_one_line(out, "tcc up: MAIL to carol")
    assert line.startswith("tcc up: MAIL to carol@example.test: Hello (")
    carol = [r for r in mailsink.read_received(mail_dir) if r["to"] == ["carol@example.test"]]
    assert [r["deliveries"] for r in carol] == [1]  # the repeat never reached the server
    assert (mail_dir / carol[0]["file"]).exists()
    assert "curl -s -X POST" in out  # the banner's order line
    # Read from the samples, not assumed: 1000 before the order above, 976 after it (the
    # banner and the order race).
    assert re.search(r"\(alice has (1000|976), a book costs 12\)", out), out
    assert re.search(r"\S*tcc status ORDER_ID", out)
    assert f"console      http://127.0.0.1:{coordinator_port}/ui/" in out
    assert "tcc up: stopped" in out


async def test_up__takes_coordinator_settings__and_says_when_a_transaction_parks(
    tmp_path: Path,
) -> None:
    coordinator_port, samples = free_port(), _sample_ports()
    failing = FakeParticipant()
    failing.default("confirm", Reply(status=500, body={"error": "ledger closed"}))
    await failing.start()
    env = {**clean_env(), "TCC_API_KEYS": "x:admin:" + "0" * 64, "TCC_RETRY_MAX_S": "0.3"}
    proc = _start_up(tmp_path, coordinator_port, samples, "--give-up-after-s", "2", env=env)
    base = f"http://127.0.0.1:{coordinator_port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            deadline = time.monotonic() + 90
            while not (
                await _answers(http, f"http://127.0.0.1:{samples + 2}/orders")
                and await _answers(http, f"{base}/readyz")
            ):
                assert proc.poll() is None
                assert time.monotonic() < deadline
                await asyncio.sleep(0.3)
            body = {"gid": "stuck-order", "auto": True, "branches": [failing.branch("b")]}
            async with http.post(f"{base}/v1/transactions", json=body) as resp:
                assert resp.status == 202  # decided; confirm keeps failing
            parked = await eventually(
                lambda: _status(http, f"{base}/v1/transactions/stuck-order"),
                lambda status: status == "failed_to_confirm",
                timeout_s=30,
            )
            assert parked == "failed_to_confirm"
            await asyncio.sleep(1.5)  # tcc up reads the coordinator's log every second
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        await failing.stop()
    assert proc.returncode == 0, out
    assert "tcc up: the coordinator gets TCC_GIVE_UP_AFTER_S=2.0" in out
    assert "tcc up: the coordinator gets TCC_RETRY_MAX_S=0.3" in out
    assert "tcc up: ignoring TCC_API_KEYS: tcc up runs without authentication" in out
    line = _the_one_line(out, "tcc up: PARKED")
    assert "stuck-order: failed_to_confirm" in line
    assert "waiting on b" in line
    assert f"{base}/ui/transactions/stuck-order" in line


async def test_up__a_confirmed_checkout__is_announced_as_one_mail_to_its_customer(
    tmp_path: Path,
) -> None:
    coordinator_port, samples = free_port(), _sample_ports()
    proc = _start_up(tmp_path, coordinator_port, samples)
    base = f"http://127.0.0.1:{coordinator_port}"
    order = f"http://127.0.0.1:{samples + 2}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            deadline = time.monotonic() + 90
            while not (
                await _answers(http, f"{order}/orders") and await _answers(http, f"{base}/readyz")
            ):
                assert proc.poll() is None
                assert time.monotonic() < deadline
                await asyncio.sleep(0.3)
            await messages_api_or_xfail(base)
            body = {"customer": "alice", "sku": "book", "qty": 1}
            async with http.post(f"{order}/checkout", json=body) as resp:
                assert resp.status == 200
                placed = await resp.json()
            await _mail_logged(tmp_path / "mail")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    line = _the_one_line(out, "tcc up: MAIL")
    assert f"tcc up: MAIL to alice@example.test: Your order {placed['order_id']}" in line


async def test_up__stopped_while_still_starting__announces_the_mail_it_already_received(
    tmp_path: Path,
) -> None:
    # A mail straight to the SMTP sink as soon as it listens, and Ctrl-C the moment it is
    # logged: tcc up is then still starting (waiting for the others, or making its banner),
    # and its last look must still find the mail.
    coordinator_port, samples = free_port(), _sample_ports()
    proc = _start_up(tmp_path, coordinator_port, samples)
    mails = tmp_path / "mail"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None
            assert time.monotonic() < deadline
            try:
                await asyncio.to_thread(_send_mail, samples + 4, "dave@example.test", "Early")
                break
            except OSError:  # the sink is not listening yet
                await asyncio.sleep(0.05)
        await _mail_logged(mails)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    line = _the_one_line(out, "tcc up: MAIL")
    assert line.startswith("tcc up: MAIL to dave@example.test: Early ("), out


async def test_up__ctrl_c_in_its_terminal_while_starting__stops_cleanly(tmp_path: Path) -> None:
    # Ctrl-C in a terminal goes to the whole process group: the children exit while tcc up
    # still waits for them to be ready, which is a stop, not a failed start.
    coordinator_port, samples = free_port(), _sample_ports()
    proc = _start_up(tmp_path, coordinator_port, samples, new_session=True)
    try:
        await eventually(
            lambda: asyncio.to_thread((tmp_path / "logs" / "order.log").exists),
            lambda started: started or proc.poll() is not None,
            timeout_s=90,
            interval_s=0.01,
        )
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "exited at start-up" not in out
    assert out.rstrip().endswith("tcc up: stopped"), out


async def _mail_logged(mails: Path) -> None:
    """Until the sink has logged one mail. tcc up reads that log every second and once more
    when it is stopped, so a mail logged by then must be announced."""
    await eventually(
        lambda: asyncio.to_thread(mailsink.read_received, mails),
        lambda received: len(received) == 1,
        timeout_s=60,
        interval_s=0.01,
    )


def _the_one_line(out: str, prefix: str) -> str:
    """The line of tcc up's output that starts with ``prefix``; all of it shown if not one."""
    said = [x for x in out.splitlines() if x.startswith(prefix)]
    assert len(said) == 1, out
    return said[0]


def _send_mail(port: int, to: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "test@example.test"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.lower()}@example.test>"
    message.set_content("Hi\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.send_message(message)


async def _status(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        return str((await resp.json())["status"])


def _sample_ports() -> int:
    """The first of five consecutive free ports: wallet, inventory, order, notify, SMTP sink."""
    samples = free_port()
    for _ in range(20):
        if samples + 4 <= 65535 and all(_port_free(samples + i) for i in range(5)):
            break
        samples = free_port()
    return samples


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_up(
    tmp_path: Path,
    coordinator_port: int,
    samples: int,
    *more: str,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> subprocess.Popen[str]:
    command = [
        *TCC,
        "up",
        "--data-dir",
        str(tmp_path / "pgdata"),
        "--port",
        str(coordinator_port),
        "--samples-port",
        str(samples),
        *more,
    ]
    return subprocess.Popen(
        command,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,  # a group of its own, as a terminal's job is
    )


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
